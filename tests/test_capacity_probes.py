"""The issue-12 capacity probes: benchmarks/vision_probe.py and benchmarks/scores_by_kind.py, on hand-made cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bench_scripts import load_script


def test_cells_of_maps_the_grid_onto_patches_by_hand():
    vp = load_script("vision_probe")
    # 24 px: 3 x 3 patches, one per cell
    assert vp.cells_of(24) == [[i] for i in range(9)]
    # 48 px: 6 x 6 patches (row-major), each cell 2 x 2 of them
    cells = vp.cells_of(48)
    assert cells[0] == [0, 1, 6, 7]
    assert cells[4] == [14, 15, 20, 21]  # the centre: rows 2-3, columns 2-3
    assert cells[8] == [28, 29, 34, 35]
    assert sorted(i for c in cells for i in c) == list(range(36))
    with pytest.raises(SystemExit, match="whole 8 px patches"):
        vp.cells_of(32)


def test_probe_separates_what_is_separable_and_not_noise():
    vp = load_script("vision_probe")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600).astype(str)
    x = rng.normal(size=(600, 5)).astype(np.float32)
    train = rng.random(600) < 0.7
    assert vp.probe(x, y, train) < 50  # three balanced classes of noise: about a third
    x[:, 0] += 10 * (y == "1")
    x[:, 1] += 10 * (y == "2")
    assert vp.probe(x, y, train) == 100.0


def test_pixels_tell_colour_and_size_of_every_cell():
    # the world draws colours and sizes apart at 24 px (every object's colour and size, and the empty cells, are
    # read off the cell's pixels); shape only in part: what the vision tower can be asked for
    vp = load_script("vision_probe")
    scs = vp.scenes(400, 1)
    lab = vp.labels(scs)
    assert len(lab["shape"]) == 9 * 400
    assert all(sum(1 for s in lab["shape"][9 * i:9 * i + 9] if s != "none") == len(sc.objects)
               for i, (sc, _) in enumerate(scs))
    px = vp.pixel_features(vp.pictures(scs, 24))
    assert px.shape == (3600, 8 * 8 * 3)
    train = np.repeat(np.random.default_rng(2).random(400) < 0.7, 9)
    assert vp.probe(px, lab["colour"], train) > 99
    assert vp.probe(px, lab["size"], train) > 99


def _run(cache, name, method, budget, preds):
    d = cache / name
    (d / "eval" / "predictions").mkdir(parents=True)
    (d / "recipe.json").write_text(json.dumps({"method": method, "budget": budget}))
    for set_name, rows in preds.items():
        (d / "eval" / "predictions" / f"{set_name}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))


def test_scores_by_kind_splits_a_set_by_its_alternating_kinds(tmp_path, capsys):
    sk = load_script("scores_by_kind")
    assert sk.kind_of("count", "count_0000") == "count_all" and sk.kind_of("count", "count_0013") == "count_shape"
    assert sk.kind_of("mc", "mc_0002") == "mc_color" and sk.kind_of("color", "color_0007") == "color_of_shape"
    cache = tmp_path / "world-0" / "cache"

    def count(scores, answers):
        return [{"id": f"count_{i:04d}", "score": s, "answers": [a]} for i, (s, a) in enumerate(zip(scores, answers))]

    # count_all = ids 0, 2, 4; count_shape = ids 1, 3, 5
    _run(cache, "run-a", "full pool", 1.0, {"count": count([1, 0, 1, 0, 1, 1], ["2", "0", "2", "1", "3", "0"])})
    _run(cache, "run-b", "full pool", 1.0, {"count": count([0, 0, 1, 1, 1, 0], ["2", "0", "2", "1", "3", "0"])})
    _run(cache, "run-c", "random", 0.2, {"count": count([0] * 6, ["1"] * 6)})
    out = tmp_path / "k.json"
    import sys

    argv = sys.argv
    sys.argv = ["scores_by_kind", str(tmp_path), "--json", str(out)]
    try:
        sk.main()
    finally:
        sys.argv = argv
    got = json.loads(out.read_text())
    assert got["runs"] == ["world-0/run-a", "world-0/run-b"]  # the random run is not the full pool
    assert got["kinds"]["count_all"]["runs"] == [100.0, pytest.approx(200 / 3)]
    assert got["kinds"]["count_shape"]["runs"] == [pytest.approx(100 / 3), pytest.approx(100 / 3)]
    assert got["kinds"]["count_all"]["majority"] == pytest.approx(200 / 3)  # "2" twice of "2", "2", "3"
    assert got["kinds"]["count_shape"]["majority"] == pytest.approx(200 / 3)  # "0" twice of "0", "1", "0"
    assert "count_shape" in capsys.readouterr().out
    sys.argv = ["scores_by_kind", str(tmp_path), "--method", "less"]
    try:
        with pytest.raises(SystemExit, match="no run of 'less'"):
            sk.main()
    finally:
        sys.argv = argv


def test_scores_by_kind_keeps_the_runs_of_the_benchs_own_recipe(tmp_path):
    """A cache holding full-pool runs of two learning rates (a bench re-run with --lr, or a copied cache): without a
    results.json the runs are refused, not averaged; with one, only its recipe's runs are read."""
    sk = load_script("scores_by_kind")
    cache = tmp_path / "b" / "cache"
    for name, lr in (("run-a", 1e-3), ("run-b", 3e-4)):
        _run(cache, name, "full pool", 1.0, {})
        rec = json.loads((cache / name / "recipe.json").read_text())
        (cache / name / "recipe.json").write_text(json.dumps({**rec, "lr": lr, "seed": 0, "lora_r": 16}))
    with pytest.raises(SystemExit, match="2 fine-tuning recipes .*differ in lr"):
        sk.runs(cache, "full pool", 1.0)
    (tmp_path / "b" / "results.json").write_text(json.dumps({"config": {"lr": 3e-4, "lora_r": 16,
                                                                        "projector_lr": None}}))
    assert [r.name for r in sk.runs(cache, "full pool", 1.0)] == ["run-b"]
    (tmp_path / "b" / "results.json").write_text(json.dumps({"config": {"lr": 1e-3, "lora_r": 16,
                                                                        "projector_lr": 2e-5}}))
    assert sk.runs(cache, "full pool", 1.0) == []  # neither trained the projector at 2e-5
    # a third run of LoRA on the MLP only (--lora-targets): its key is in its recipe, absent from the others'
    _run(cache, "run-c", "full pool", 1.0, {})
    rec = json.loads((cache / "run-c" / "recipe.json").read_text())
    (cache / "run-c" / "recipe.json").write_text(json.dumps({**rec, "lr": 3e-4, "seed": 0, "lora_r": 16,
                                                            "lora_targets": ["gate_proj", "up_proj", "down_proj"]}))
    for targets, want in ((None, ["run-b"]), (["gate_proj", "up_proj", "down_proj"], ["run-c"]), (["up_proj"], [])):
        (tmp_path / "b" / "results.json").write_text(json.dumps({"config": {
            "lr": 3e-4, "lora_r": 16, "projector_lr": None, "lora_targets": targets}}))
        assert [r.name for r in sk.runs(cache, "full pool", 1.0)] == want
    (tmp_path / "b" / "results.json").write_text(json.dumps({"config": {"lr": 3e-4, "lora_r": 16}}))  # older bench
    assert [r.name for r in sk.runs(cache, "full pool", 1.0)] == ["run-b"]


def test_object_stats_against_the_random_object_answer(tmp_path):
    from vlselect.world.build import WorldConfig, plan_eval

    sk = load_script("scores_by_kind")
    sets, pics = plan_eval(WorldConfig(seed=0, eval_size=6, image_size=24))
    colour = sets["color"]  # the colour of the one object of a named shape
    run = tmp_path / "run-x"
    right = [{"id": f"color_{i:04d}", "prediction": s["qa"].answer, "score": 1.0} for i, s in enumerate(colour)]
    _run(tmp_path, "run-x", "full pool", 1.0, {"color": right})
    got = sk.object_stats(run, sets, pics)["color_of_shape"]
    by_hand = [len(pics[s["picture"]].scene.with_color(s["qa"].answer)) / len(pics[s["picture"]].scene.objects)
               for s in colour]
    assert got["random_object"] == pytest.approx(100 * sum(by_hand) / len(by_hand))
    assert got["model"] == 100.0 and got["names_an_object"] == 100.0
    # answers that name no colour of the picture
    wrong = [{"id": f"color_{i:04d}", "prediction": "plaid", "score": 0.0} for i in range(len(colour))]
    _run(tmp_path, "run-y", "full pool", 1.0, {"color": wrong})
    got = sk.object_stats(tmp_path / "run-y", sets, pics)["color_of_shape"]
    assert got["model"] == 0.0 and got["names_an_object"] == 0.0
    n_one = sum(len(pics[s["picture"]].scene.objects) == 1 for s in colour)
    assert (got["one"] == 0.0) if n_one else np.isnan(got["one"])


def test_reading_probe_against_the_random_object_answer_by_hand(tmp_path):
    lb = load_script("learnability")
    rows = [
        {"question": "A small red cross at the top and a large blue circle at the center.\nWhat color is the cross?\n"
                     "Answer the question using a single word or phrase.",
         "prediction": "blue", "answers": ["red"], "score": 0.0},
        {"question": "A large green square at the top.\nWhat color is the square?\n"
                     "Answer the question using a single word or phrase.",
         "prediction": "green", "answers": ["green"], "score": 1.0},
        {"question": "A small red cross at the top, a small red circle at the left and a large blue square at the "
                     "bottom.\nWhat color is the square?\nAnswer the question using a single word or phrase.",
         "prediction": "purple", "answers": ["blue"], "score": 0.0},
    ]
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = lb.colour_against_random_object(f)
    assert got["random_object"] == pytest.approx(100 * (1 / 2 + 1 + 1 / 3) / 3)
    assert got["names_one_there"] == pytest.approx(200 / 3)  # blue and green are named there, purple is not
    assert (got["one_object"], got["several"]) == (100.0, 0.0)


def test_object_stats_refuses_predictions_of_another_world(tmp_path):
    from vlselect.world.build import WorldConfig, plan_eval

    sk = load_script("scores_by_kind")
    sets, pics = plan_eval(WorldConfig(seed=0, eval_size=6, image_size=24))
    other, _ = plan_eval(WorldConfig(seed=1, eval_size=6, image_size=24))
    rows = [{"id": f"color_{i:04d}", "question": s["qa"].prompt, "prediction": "red", "score": 0.0}
            for i, s in enumerate(other["color"])]
    assert any(r["question"] != s["qa"].prompt for r, s in zip(rows, sets["color"]))
    _run(tmp_path, "run-z", "full pool", 1.0, {"color": rows})
    with pytest.raises(SystemExit, match="re-planned world"):
        sk.object_stats(tmp_path / "run-z", sets, pics)


def test_recall_rows_answer_the_colour_before_the_queried_shape():
    rl = load_script("recall_lr")
    c0, c1, c2 = rl.COLOURS[:3]
    s0, s1, s2 = rl.SHAPES[:3]
    # by hand: red-ish c0 square-ish s0, c1 s1, c0 s2; asked for s2 -> c0; the random-object answer names c0 two
    # times in three
    seq = [c0, s0, c1, s1, c0, s2, rl.QUERY, s2]
    assert rl.recall_answer(seq) == c0
    assert rl.random_object_tokens(seq, c0) == pytest.approx(2 / 3)
    assert rl.recall_answer([c2, s1, c1, s0, rl.QUERY, s0]) == c1
    rng = np.random.default_rng(0)
    sizes = set()
    for _ in range(300):
        seq, ans = rl.recall_row(rng)
        pairs = seq[:-2]
        sizes.add(len(pairs) // 2)
        assert seq[-2] == rl.QUERY and rl.recall_answer(seq) == ans
        assert len(set(pairs[1::2])) == len(pairs) // 2  # distinct shapes: one right answer
        assert set(pairs[0::2]) <= set(rl.COLOURS) and set(pairs[1::2]) <= set(rl.SHAPES)
    assert sizes == {2, 3, 4}


def test_recall_text_rows_and_their_random_object_answer():
    rl = load_script("recall_lr")
    assert rl.random_object_text("A large red square at the left and a small blue circle at the top.", "blue") == 0.5
    assert rl.random_object_text("A small red cross at the top, a large red circle and a blue square.", "red") == \
        pytest.approx(2 / 3)
    for d, q, a in rl.text_rows(np.random.default_rng(3), 50, canonical=True):
        assert q.endswith("? Answer:")
        shape = q.removesuffix("? Answer:").split()[-1]
        words = d.lower().replace(",", "").replace(".", "").split()
        # the shape asked for occurs once in the description, right after its colour
        assert words.count(shape) == 1 and words[words.index(shape) - 1] == a


def test_recall_compact_description_and_token_variants_by_hand():
    rl = load_script("recall_lr")

    # the lookup rows: the compact description, the shape alone as the prompt, its colour as the answer
    for d, q, a in rl.text_rows(np.random.default_rng(4), 30, canonical=False, compact="lookup"):
        words = d.lower().rstrip(".").replace(",", "").split()
        assert words.count(q) == 1 and words[words.index(q) - 1] == a
    # other tokens after each pair and filler after the query leave the answer the colour before the shape
    c0, c1 = rl.COLOURS[:2]
    s0, s1 = rl.SHAPES[:2]
    o = rl.OTHER[0]
    seq = [c0, s0, o, o, c1, s1, o, o, rl.QUERY, s1, rl.FILL, rl.FILL]
    assert rl.recall_answer(seq) == c1 and rl.random_object_tokens(seq, c1) == 0.5
    seq, ans = rl.recall_row(np.random.default_rng(5), between=2, filler=3)
    q = seq.index(rl.QUERY)
    assert seq[q + 2:] == [rl.FILL] * 3 and len(seq[:q]) % 4 == 0 and rl.recall_answer(seq) == ans


def test_scores_by_kind_answers_set_the_runs_answers_beside_the_pools(tmp_path, capsys, monkeypatch):
    """--answers on a hand-made cache: a run answering "1" to three of four counting-by-colour questions, an
    evaluation set of 0-3, a pool whose counting-by-colour answers are two "1" and one "0"."""
    import sys

    sk = load_script("scores_by_kind")
    cache = tmp_path / "b" / "cache"
    _run(cache, "run-a", "full pool", 1.0, {"count_color": [
        {"id": f"count_color_{i:04d}", "prediction": p, "answers": [g], "score": float(p == g)}
        for i, (p, g) in enumerate([("1", "0"), ("1", "1"), ("1 ", "2"), ("3", "3")])]})
    (cache / "world-x" / "w").mkdir(parents=True)
    pool = [{"id": f"r{i}", "task": "vqa_count", "meta": {"kind": k},
             "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": a}]}
            for i, (k, a) in enumerate([("count_color", "1"), ("count_color", "1"), ("count_color", "0"),
                                        ("count_all", "4")])]
    (cache / "world-x" / "w" / "pool.json").write_text(json.dumps(pool))
    assert sk.predicted_answers(cache / "run-a")["count_color"] == {"1": 3, "3": 1}
    assert sk.gold_answers(cache / "run-a")["count_color"] == {"0": 1, "1": 1, "2": 1, "3": 1}
    assert sk.pool_answers(cache) == {"count_color": {"1": 2, "0": 1}, "count_all": {"4": 1}}
    monkeypatch.setattr(sys, "argv", ["scores_by_kind", str(tmp_path / "b"), "--answers"])
    sk.main()
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("count_color ") and "runs:" in x)
    assert "runs: 1 75%, 3 25%" in line and "pool: 1 67%, 0 33%" in line and "evaluation: 0 25%" in line
    (cache / "world-y" / "w").mkdir(parents=True)
    (cache / "world-y" / "w" / "pool.json").write_text(json.dumps(pool))  # the same world made by other code
    assert sk.pool_answers(cache) == {"count_color": {"1": 2, "0": 1}, "count_all": {"4": 1}}
    (cache / "world-y" / "w" / "pool.json").write_text("[]")
    with pytest.raises(SystemExit, match="2 different bench pools"):
        sk.pool_answers(cache)


def test_realign_refuses_a_work_folder_of_another_recipe(tmp_path, monkeypatch):
    """benchmarks/realign.py trains stage 3 from --work's vision stage under the recipe of --foundation: a work
    folder not named by that recipe's digest (another foundation's) is refused before any pool or training."""
    import sys

    from vlselect.artifact import digest
    from vlselect.models.foundation import MARKER, FoundationRecipe

    ra = load_script("realign")
    rc = FoundationRecipe(align_lookup_share=0.5)
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / MARKER).write_text(json.dumps({"recipe": rc.to_json()}))
    other = tmp_path / digest(FoundationRecipe().to_json()).split(":", 1)[1][:16]
    (other / "vision" / "final").mkdir(parents=True)
    monkeypatch.setattr(sys, "argv", ["realign", "--foundation", str(tmp_path / "f"), "--work", str(other),
                                      "--share", "0.5", "--out", str(tmp_path / "out")])
    want = digest(rc.to_json()).split(":", 1)[1][:16]
    with pytest.raises(SystemExit, match=f"not the work folder .*named {want}"):
        ra.main()
    assert not (tmp_path / "out").exists()
