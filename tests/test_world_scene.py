"""Scene-level pieces of the world: shapes, layout on the grid, rendering, the legibility of the sign at the
resolution a tiny model sees, planning invariants and config validation. No files are written."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vlselect.errors import ConfigError
from vlselect.world import WorldConfig
from vlselect.world.build import plan_eval, plan_pool
from vlselect.world.scene import Obj, Scene, format_box, layout, normalise_box, render, sample_scene, shape_mask
from vlselect.world.tasks import caption_text
from vlselect.world.vocab import COLORS, SHAPES, WORDS


@pytest.mark.parametrize("shape", SHAPES)
def test_masks_fill_their_box(shape):
    for e in range(3, 30):
        m = shape_mask(shape, e)
        assert m.shape == (e, e)
        assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()  # the box is tight
    areas = {s: shape_mask(s, 18).mean() for s in SHAPES}
    assert len({round(a, 2) for a in areas.values()}) == 4  # four shapes, four footprints


def test_layout_stays_in_cells_and_jitters_by_variant():
    scene = Scene(tuple(Obj("square", c, "small" if i % 2 else "large", cell)
                        for i, (c, cell) in enumerate(zip(COLORS, (0, 2, 4, 6)))))
    boxes = {v: layout(scene, v, 64) for v in range(20)}
    for bs in boxes.values():
        for o, (x0, y0, x1, y1) in zip(scene.objects, bs):
            r, c = divmod(o.cell, 3)
            assert round(c * 64 / 3) <= x0 < x1 <= round((c + 1) * 64 / 3)
            assert round(r * 64 / 3) <= y0 < y1 <= round((r + 1) * 64 / 3)
            assert x1 - x0 == y1 - y0 and x1 - x0 in ((18, 19) if o.size == "large" else (12,))
    assert len({tuple(b) for b in boxes.values()}) > 5  # near-duplicates differ in pixels
    assert normalise_box((0, 21, 18, 39), 64) == [0.0, 0.33, 0.28, 0.61]
    assert format_box([0.0, 0.33, 0.28, 0.6]) == "[0.00, 0.33, 0.28, 0.60]"


def test_render_deterministic_and_colours_where_the_boxes_are():
    scene = Scene((Obj("circle", "red", "large", 0), Obj("cross", "blue", "small", 4)), "cat")
    a, b = render(scene, 7, 64), render(scene, 7, 64)
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, render(scene, 8, 64))
    for o, (x0, y0, x1, y1) in zip(scene.objects, layout(scene, 7, 64)):
        centre = a[(y0 + y1) // 2, (x0 + x1) // 2].astype(int)
        assert np.abs(centre - np.array(COLORS[o.color])).max() <= 12
    band = a[44:63, 2:62].astype(int).mean(axis=2)
    assert (band > 200).mean() > 0.5 and (band < 40).mean() > 0.1  # a white sign with dark letters
    noisy = render(scene, 7, 64, style="noisy")
    assert noisy[20:40, 50:60].std() > a[20:40, 50:60].std()


@pytest.mark.parametrize("size", [24, 32])
def test_sign_letters_are_distinct_at_model_resolution(size):
    """Every letter the words use is told apart from every other at ``size`` px, one column (patch) each."""
    letters = sorted({c for w in WORDS for c in w})
    for col in range(3):
        patches = {}
        for letter in letters:
            arr = render(Scene((), letter * 3), 0, 64)
            small = np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR)).astype(float).mean(2)
            patches[letter] = small[round(2 * size / 3):, round(col * size / 3):round((col + 1) * size / 3)]
        worst = min(np.abs(patches[a] - patches[b]).mean() for a in letters for b in letters if a < b)
        assert worst > 3.0


def test_sample_scene_invariants_and_caption():
    rng = np.random.default_rng(0)
    for _ in range(300):
        s = sample_scene(rng, word=bool(rng.integers(0, 2)))
        cells = [o.cell for o in s.objects]
        assert 1 <= len(s.objects) <= 4 and len(set(cells)) == len(cells)
        assert len({(o.color, o.shape) for o in s.objects}) == len(s.objects)
        if s.word:
            assert max(cells) < 6 and s.word in WORDS
    s = Scene((Obj("circle", "red", "large", 0), Obj("cross", "blue", "small", 4)), "cat")
    assert caption_text(s) == ("A large red circle at the top left and a small blue cross at the center. "
                               "A sign at the bottom says cat.")


def test_plans_are_pure_functions_of_the_seed():
    cfg = WorldConfig(size=300, seed=5, eval_size=10)
    r1, p1 = plan_pool(cfg)
    r2, p2 = plan_pool(cfg)
    assert [(r.task, r.turns, r.group) for r in r1] == [(r.task, r.turns, r.group) for r in r2]
    assert [(p.scene, p.variant) for p in p1] == [(p.scene, p.variant) for p in p2]
    e1, _ = plan_eval(cfg)
    e2, _ = plan_eval(WorldConfig(size=5000, seed=5, eval_size=10))
    assert [s["qa"].prompt for s in e1["color"]] == [s["qa"].prompt for s in e2["color"]]  # pool size is irrelevant
    assert sum(cfg.task_counts().values()) == 300


@pytest.mark.parametrize("kw, name", [
    ({"size": -1}, "size"), ({"image_size": 8}, "image_size"), ({"noise_rate": 2.0}, "noise_rate"),
    ({"composition": {"cartoons": 1.0}}, "composition"), ({"redundancy": {"caption": 0.5}}, "redundancy"),
    ({"eval_size": 0}, "eval_size"),
])
def test_bad_config_names_the_option(kw, name):
    with pytest.raises(ConfigError, match=name):
        WorldConfig(**kw).validate()


def test_make_world_rejects_unknown_option(tmp_path):
    from vlselect.world import make_world

    with pytest.raises(ConfigError, match="nosiy_share"):
        make_world(tmp_path / "w", size=10, nosiy_share=0.2)
    assert not (tmp_path / "w").exists()


def test_exist_hard_negative_when_every_shape_is_taken_in_one_colour():
    """Four red objects of the four shapes: a hard 'no' cannot vary the shape, so it varies the colour (this scene
    once crashed the evaluation planner at eval_size 200)."""
    from vlselect.world.tasks import ask_exist

    scene = Scene(tuple(Obj(s, "red", "small", c) for c, s in enumerate(SHAPES)))
    answers = set()
    for seed in range(40):
        qa = ask_exist(scene, np.random.default_rng(seed), canonical=True)
        color, shape = qa.extra["query"]
        present = any(o.color == color and o.shape == shape for o in scene.objects)
        assert (qa.answer == "yes") == present
        if qa.answer == "no":
            assert color != "red" and shape in SHAPES  # the shape is in the picture, the colour is not
        answers.add(qa.answer)
    assert answers == {"yes", "no"}
