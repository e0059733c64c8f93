"""The synthetic world: determinism, composition against the card, answer correctness re-derived from the scene
metadata (and from the pixels for boxes), the noisy share, held-out evaluation, boxes, the LLaVA format, the
corpus and the CLI."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlselect.world import EVAL_SETS, TASKS, WorldConfig, corpus, make_world
from vlselect.world.build import plan_eval
from vlselect.world.vocab import COLORS, NUMBER_WORDS, POSITIONS

SIZE = 1000
EVAL = 24
POS_RE = "top left|top right|bottom left|bottom right|top|bottom|left|right|center"
SHAPE_RE = "circle|square|triangle|cross"
COLOR_RE = "red|green|blue|yellow|purple"
BOX_RE = r"\[(\d\.\d\d), (\d\.\d\d), (\d\.\d\d), (\d\.\d\d)\]"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("w") / "world"
    make_world(out, size=SIZE, seed=0, eval_size=EVAL)
    return out


@pytest.fixture(scope="module")
def pool(world) -> list[dict]:
    with open(world / "pool.json") as f:
        return json.load(f)


def _files(d: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file() and (p.suffix != ".png" or p.name.endswith("0.png")):  # every tenth picture
            out[str(p.relative_to(d))] = p.read_bytes()
    return out


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    again = tmp_path / "again"
    make_world(again, size=SIZE, seed=0, eval_size=EVAL)
    a, b = _files(world), _files(again)
    assert sorted(a) == sorted(b)
    assert sum(k.endswith(".png") for k in a) >= 50
    assert [k for k in a if a[k] != b[k]] == []
    other = tmp_path / "other"
    make_world(other, size=SIZE, seed=1, eval_size=EVAL)
    c = _files(other)
    assert c["pool.json"] != a["pool.json"]
    assert c["eval/color.json"] != a["eval/color.json"]
    assert c["images/000000.png"] != a["images/000000.png"]


def _first_human(rec: dict) -> str:
    return rec["conversations"][0]["value"]


def test_pool_is_llava_json(world, pool):
    assert len(pool) == SIZE
    assert len({r["id"] for r in pool}) == SIZE
    for r in pool:
        assert set(r) <= {"id", "image", "conversations", "task", "meta"}
        assert r["task"] in TASKS
        conv = r["conversations"]
        assert len(conv) % 2 == 0 and conv
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        text = "".join(t["value"] for t in conv)
        if r["task"] == "text":
            assert "image" not in r and "<image>" not in text
        else:
            assert (world / "images" / r["image"]).is_file()
            assert _first_human(r).startswith("<image>\n") and text.count("<image>") == 1
    # the project's own reader agrees (task labels from the task field, images present and decodable)
    from vlselect.pool import check_images, open_pool

    p = open_pool(world / "pool.json", image_root=world / "images")
    assert len(p) == SIZE
    assert [p.task(i) for i in range(len(p))] == [r["task"] for r in pool]
    report = check_images(p, world / "images")
    flat = json.dumps(report)
    assert '"missing": 0' in flat or report.get("missing", 0) == 0


def _card_table(world: Path) -> dict[str, list[str]]:
    rows = {}
    card = (world / "README.md").read_text()
    section = card.split("## Pool composition")[1].split("\n## ")[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in TASKS:
            rows[cells[0]] = cells[1:]
    return rows


def test_composition_matches_card(world, pool):
    table = _card_table(world)
    cfg = WorldConfig(size=SIZE, seed=0)
    assert set(table) == set(TASKS)
    groups: dict[str, set] = {}
    for t in TASKS:
        recs = [r for r in pool if r["task"] == t]
        groups[t] = {r["meta"]["group"] for r in recs}
        records, share, scenes, redundant, noisy, wrong, easy, text_only = (table[t][i] for i in range(8))
        assert int(records) == len(recs) == cfg.task_counts()[t]
        assert share == f"{len(recs) / SIZE:.1%}"
        assert int(scenes) == len(groups[t])
        assert int(redundant) == len(recs) - len(groups[t])
        assert int(noisy) == sum(r["meta"]["source"] == "noisy" for r in recs)
        assert int(wrong) == sum(not r["meta"]["correct"] for r in recs)
        assert int(easy) == sum(r["meta"]["easy"] for r in recs)
        assert int(text_only) == sum("image" not in r for r in recs)
    # the structure is there: unequal sizes, heavy caption redundancy, an easy share, off-target text
    counts = [int(table[t][0]) for t in TASKS]
    assert max(counts) >= 4 * min(counts)
    assert len(groups["caption"]) * 3 < int(table["caption"][0])
    assert sum(int(table[t][6]) for t in TASKS) > 0.05 * SIZE
    world_json = json.loads((world / "world.json").read_text())
    assert world_json["task_counts"] == cfg.task_counts()


def _obj(scene: dict, **kv) -> list[dict]:
    return [o for o in scene["objects"] if all(o[k] == v for k, v in kv.items())]


def derive(rec: dict) -> str | None:
    """Re-derive the correct answer of a pool record from its scene metadata and question text alone."""
    m, q = rec["meta"], _first_human(rec).removeprefix("<image>\n")
    kind = m["kind"]
    sc = m.get("scene")
    if rec["task"] == "text" or kind == "caption":
        return None
    if kind in ("mc_color", "mc_shape"):
        options = dict(re.findall(r"^([ABCD])\. (\w+)$", q, flags=re.M))
        if kind == "mc_color":
            shape = re.search(rf"color is the ({SHAPE_RE})\?", q).group(1)
            truth = _obj(sc, shape=shape)[0]["color"]
        else:
            pos = re.search(rf"at the ({POS_RE})\?", q).group(1)
            truth = _obj(sc, pos=pos)[0]["shape"]
        return next(letter for letter, v in options.items() if v == truth)
    if kind == "reg":
        box = [float(v) for v in re.search(BOX_RE, q).groups()]
        (o,) = [o for o in sc["objects"] if o["box"] == box]
        return f"a {o['size']} {o['color']} {o['shape']}"
    if kind == "rec":
        color, shape = re.search(rf"the ({COLOR_RE}) ({SHAPE_RE})\.$", q).groups()
        b = _obj(sc, color=color, shape=shape)[0]["box"]
        return "[" + ", ".join(f"{v:.2f}" for v in b) + "]"
    q1 = q.split("\n")[0]
    pos = re.search(rf"at the ({POS_RE})\?", q1)
    color = re.search(rf"\b({COLOR_RE})\b", q1)
    shape = re.search(rf"\b({SHAPE_RE})\b", q1)
    plural = re.search(r"\b(circles|squares|triangles|crosses)\b", q1)
    if kind == "color_of_shape":
        (o,) = _obj(sc, shape=shape.group(1))
        return o["color"]
    if kind == "color_at_pos":
        return _obj(sc, pos=pos.group(1))[0]["color"]
    if kind == "shape_at_pos":
        return _obj(sc, pos=pos.group(1))[0]["shape"]
    if kind == "pos_of":
        return _obj(sc, color=color.group(1), shape=shape.group(1))[0]["pos"]
    if kind == "count_all":
        return str(len(sc["objects"]))
    if kind == "count_shape":
        return str(len(_obj(sc, shape={"crosses": "cross"}.get(plural.group(1), plural.group(1)[:-1]))))
    if kind == "count_color":
        return str(len(_obj(sc, color=color.group(1))))
    if kind == "exist":
        return "yes" if _obj(sc, color=color.group(1), shape=shape.group(1)) else "no"
    if kind == "ocr":
        return sc["word"]
    raise AssertionError(kind)


def test_answers_rederived_from_scene_and_noise_share(pool):
    by_task: dict[str, list[int]] = {}
    for r in pool:
        answer = r["conversations"][1]["value"]
        if r["meta"]["kind"] == "caption":
            sc = r["meta"]["scene"]
            phrases = [f"{o['size']} {o['color']} {o['shape']} at the {o['pos']}" for o in sc["objects"]]
            ok = all(p in answer for p in phrases) and (sc["word"] is None or f"says {sc['word']}." in answer)
        elif r["task"] == "text":
            q = r["conversations"][0]["value"]
            add = re.match(r"What is (\d) plus (\d)\?", q)
            ok = not add or answer.endswith(f" is {int(add.group(1)) + int(add.group(2))}.")
        else:
            ok = derive(r) == answer
        assert ok == r["meta"]["correct"], r  # clean answers right, and every wrong one flagged
        if r["meta"]["source"] == "clean":
            assert r["meta"]["correct"]
        else:
            by_task.setdefault(r["task"], []).append(int(not r["meta"]["correct"]))
    assert set(by_task) == set(TASKS) - {"text"}
    for task, wrong in by_task.items():
        assert sum(wrong) == round(0.25 * len(wrong)), task  # exact per task
    all_noisy = [w for ws in by_task.values() for w in ws]
    assert 0.2 <= np.mean(all_noisy) <= 0.3
    assert 0.15 <= len(all_noisy) / sum(r["task"] != "text" for r in pool) <= 0.35


def test_easy_and_near_duplicates(pool):
    easy = [r for r in pool if r["meta"]["easy"]]
    assert easy and all(r["meta"]["source"] == "clean" for r in easy)
    for r in easy:
        (o,) = r["meta"]["scene"]["objects"]
        assert (o["pos"], o["size"]) == ("center", "large")
    groups: dict[str, list[dict]] = {}
    for r in pool:
        groups.setdefault(r["meta"]["group"], []).append(r)
    multi = [g for g in groups.values() if len(g) > 1]
    assert sum(len(g) for g in multi) > 0.2 * SIZE
    for g in multi:  # a group shares its scene (up to pixel jitter) and its task
        sig = {json.dumps([[o[k] for k in ("shape", "color", "size", "pos")] for o in r["meta"]["scene"]["objects"]])
               for r in g}
        assert len(sig) == 1 and len({r["task"] for r in g}) == 1
    caption_groups = [g for g in multi if g[0]["task"] == "caption"]
    assert any(len({r["image"] for r in g}) == len(g) for g in caption_groups)  # distinct near-dup pictures
    assert any(len({_first_human(r) for r in g}) > 1 for g in caption_groups)  # rephrased prompts
    mc_groups = [g for g in multi if g[0]["task"] == "mc"]
    assert mc_groups and all(len({r["image"] for r in g}) == 1 for g in mc_groups)  # options shuffled, one picture


def _pixel_box(arr: np.ndarray, color: str) -> list[float] | None:
    ref = np.array(COLORS[color])
    mask = (np.abs(arr.astype(int) - ref) <= 12).all(axis=2)
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    S = arr.shape[0]
    return [round(xs.min() / S, 2), round(ys.min() / S, 2), round((xs.max() + 1) / S, 2), round((ys.max() + 1) / S, 2)]


def test_boxes_valid_and_match_pixels(world, pool):
    checked = 0
    for r in pool:
        sc = r["meta"].get("scene")
        if not sc:
            continue
        for o in sc["objects"]:
            x1, y1, x2, y2 = o["box"]
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
            assert all(round(v, 2) == v for v in o["box"])
            row, col = divmod(POSITIONS.index(o["pos"]), 3)
            assert col / 3 - 0.01 <= x1 and x2 <= (col + 1) / 3 + 0.01  # inside its grid cell
            assert row / 3 - 0.01 <= y1 and y2 <= (row + 1) / 3 + 0.01
        if r["task"] == "grounding" and checked < 40:
            arr = np.asarray(Image.open(world / "images" / r["image"]).convert("RGB"))
            assert arr.shape == (64, 64, 3)
            for o in sc["objects"]:
                if len(_obj(sc, color=o["color"])) == 1:  # the colour picks out the object's pixels
                    assert _pixel_box(arr, o["color"]) == o["box"], (r["id"], o)
            checked += 1
        if r["meta"]["kind"] == "rec" and r["meta"]["correct"]:
            ans = [float(v) for v in re.fullmatch(BOX_RE, r["conversations"][1]["value"]).groups()]
            assert ans == r["meta"]["box"]
    assert checked == 40


def test_eval_sets_contract_disjoint_and_correct(world, pool):
    cfg = WorldConfig(size=SIZE, seed=0, eval_size=EVAL)
    planned, pictures = plan_eval(cfg)
    pool_images = {r["image"] for r in pool if "image" in r}
    pool_hashes = {hashlib.sha256((world / "images" / n).read_bytes()).hexdigest() for n in pool_images}
    pool_scenes = {json.dumps(sorted([o[k] for k in ("shape", "color", "size", "pos")]
                                     for o in r["meta"]["scene"]["objects"])) + str(r["meta"]["scene"]["word"])
                   for r in pool if "image" in r}
    assert sorted(p.name for p in (world / "eval").iterdir()) == sorted(f"{n}.json" for n in EVAL_SETS)
    for name, (metric, _kinds, _desc) in EVAL_SETS.items():
        data = json.loads((world / "eval" / f"{name}.json").read_text())
        assert set(data) == {"name", "metric", "description", "samples"}
        assert data["name"] == name and data["metric"] == metric and len(data["samples"]) == EVAL
        for s, plan in zip(data["samples"], planned[name]):
            keys = {"id", "image", "question", "answers"} | ({"options"} if metric == "option_letter" else set()) \
                | ({"box"} if metric == "iou" else set())
            assert set(s) == keys
            assert s["image"] not in pool_images
            assert hashlib.sha256((world / "images" / s["image"]).read_bytes()).hexdigest() not in pool_hashes
            pic = pictures[plan["picture"]]
            sc = pic.scene.to_meta(pic.boxes(64))
            assert json.dumps(sorted([o[k] for k in ("shape", "color", "size", "pos")] for o in sc["objects"])) \
                + str(sc["word"]) not in pool_scenes
            fake = {"task": "eval", "meta": {"kind": plan["kind"], "scene": sc},
                    "conversations": [{"from": "human", "value": s["question"]}]}
            assert s["answers"][0] == derive(fake), (name, s)
            assert "<image>" not in s["question"]
            if metric == "yes_no":
                assert s["answers"] in (["yes"], ["no"])
            if metric == "option_letter":
                assert s["answers"][0] in "ABCD" and len(s["options"]) == 4
                assert all(f"{'ABCD'[i]}. {o}" in s["question"] for i, o in enumerate(s["options"]))
            if metric == "iou":
                x1, y1, x2, y2 = s["box"]
                assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
            if plan["kind"].startswith("count"):
                assert s["answers"] == [s["answers"][0], NUMBER_WORDS[int(s["answers"][0])]]
    # the evaluation engineer's reader accepts every set, and the canonical answer scores full marks
    from vlselect.evaluate.metrics import score_sample
    from vlselect.evaluate.sets import read_eval_set

    for name, (metric, _kinds, _desc) in EVAL_SETS.items():
        es = read_eval_set(world / "eval" / f"{name}.json")
        assert es.name == name and es.metric == metric and len(es.samples) == EVAL
        for s in es.samples:
            assert score_sample(metric, s["answers"][0], s) == 1.0, (name, s)
        if metric != "iou":
            wrong = next(t["answers"][0] for t in es.samples if t["answers"][0] != es.samples[0]["answers"][0])
            assert score_sample(metric, wrong, es.samples[0]) == 0.0
    ex = [s["answers"][0] for s in json.loads((world / "eval" / "exist.json").read_text())["samples"]]
    assert ex.count("yes") == ex.count("no")
    card = (world / "README.md").read_text().split("## Evaluation sets")[1]
    for name in EVAL_SETS:  # balanced answers: the card's majority share is right and low
        answers = [s["answers"][0] for s in json.loads((world / "eval" / f"{name}.json").read_text())["samples"]]
        share = max(answers.count(a) for a in answers) / len(answers)
        assert f"| {name} | {EVAL_SETS[name][0]} | {EVAL} | {share:.0%} |" in card
        assert share <= (0.5 if name == "exist" else 0.34), name


def test_corpus_covers_vocabulary(pool, world):
    texts = corpus(seed=0, n=20)  # small n: the vocabulary lines alone must cover every word
    assert texts == corpus(seed=0, n=20) and texts != corpus(seed=1, n=20)
    vocab = {w for t in texts for w in re.findall(r"[A-Za-z]+|\d\.\d\d|\d", t)}
    used = set()
    for r in pool:
        for t in r["conversations"]:
            used |= set(re.findall(r"[A-Za-z]+|\d\.\d\d|\d", t["value"].replace("<image>", "")))
    for name in EVAL_SETS:
        for s in json.loads((world / "eval" / f"{name}.json").read_text())["samples"]:
            for t in [s["question"], *s["answers"]]:
                used |= set(re.findall(r"[A-Za-z]+|\d\.\d\d|\d", t))
    assert sorted(used - vocab) == []
    assert not any("<image>" in t or "{" in t for t in texts)


def test_cli_make_and_errors(tmp_path, capsys):
    from vlselect.cli import main

    out = tmp_path / "cli_world"
    with pytest.raises(SystemExit) as ok:
        main(["world", "make", str(out), "--size", "120", "--seed", "3", "--eval-size", "5"])
    assert ok.value.code in (0, None)
    recs = json.loads((out / "pool.json").read_text())
    assert len(recs) == 120 and (out / "README.md").read_text().count("| caption |") == 1
    with pytest.raises(SystemExit) as bad:
        main(["world", "make", str(tmp_path / "w2"), "--size", "0"])
    assert bad.value.code == 2
    assert "size=0" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as clash:
        main(["world", "make", str(busy), "--size", "50"])
    assert clash.value.code == 2
    err = capsys.readouterr().err
    assert "busy" in err and "empty" in err
    assert (busy / "notes.txt").read_text() == "mine"
    with pytest.raises(SystemExit) as rate:
        main(["world", "make", str(tmp_path / "w3"), "--noise-rate", "1.5"])
    assert rate.value.code == 2 and "noise_rate" in capsys.readouterr().err


def test_pretrain_pool_clean_captions_avoiding_eval_scenes(tmp_path):
    from vlselect.cli import main
    from vlselect.world import make_pretrain_pool

    info = make_pretrain_pool(tmp_path / "pre", size=150, seed=0, eval_size=EVAL)
    assert info.task_counts == {"caption": 150} and info.n_images == 150
    with pytest.raises(SystemExit) as ok:
        main(["world", "pretrain", str(tmp_path / "pre2"), "--size", "150", "--eval-size", str(EVAL)])
    assert ok.value.code in (0, None)
    assert _files(tmp_path / "pre") == _files(tmp_path / "pre2")
    recs = json.loads((tmp_path / "pre" / "pool.json").read_text())
    assert len({r["id"] for r in recs}) == 150 and len({r["image"] for r in recs}) == 150
    _planned, pictures = plan_eval(WorldConfig(seed=0, eval_size=EVAL))
    eval_sigs = {p.scene.signature() for p in pictures}
    for r in recs:
        sc, answer = r["meta"]["scene"], r["conversations"][1]["value"]
        assert r["task"] == "caption" and r["meta"]["correct"] and _first_human(r).startswith("<image>\n")
        assert all(f"a {o['size']} {o['color']} {o['shape']} at the {o['pos']}" in answer.lower()
                   for o in sc["objects"])
        sig = (tuple(sorted((o["shape"], o["color"], o["size"], POSITIONS.index(o["pos"])) for o in sc["objects"])),
               sc["word"])
        assert sig not in {(tuple((o.shape, o.color, o.size, o.cell) for o in s[0]), s[1]) for s in eval_sigs}


def test_counted_captions_state_the_number_of_objects(tmp_path):
    """``counted`` (the foundation's captions, issue 12): the number of objects first, hand-worked cases; the same
    scenes, pictures and prompts as the plain pool, whose captions stay as they were."""
    from vlselect.world import make_pretrain_pool
    from vlselect.world.scene import Obj, Scene
    from vlselect.world.tasks import caption_text

    one = Scene((Obj("cross", "red", "small", 5),), None)
    three = Scene((Obj("circle", "blue", "large", 0), Obj("square", "green", "small", 4),
                   Obj("cross", "red", "small", 8)), "gym")
    assert caption_text(one) == "A small red cross at the right."
    assert caption_text(one, counted=True) == "1 object: a small red cross at the right."
    assert caption_text(three, counted=True) == ("3 objects: a large blue circle at the top left, a small green square "
                                                 "at the center and a small red cross at the bottom right. "
                                                 "A sign at the bottom says gym.")
    make_pretrain_pool(tmp_path / "plain", size=60, seed=3, eval_size=EVAL, image_size=24)
    make_pretrain_pool(tmp_path / "counted", size=60, seed=3, eval_size=EVAL, image_size=24, counted=True)
    plain = json.loads((tmp_path / "plain" / "pool.json").read_text())
    counted = json.loads((tmp_path / "counted" / "pool.json").read_text())
    assert [r["id"] for r in plain] == [r["id"] for r in counted]
    assert {k: v for k, v in _files(tmp_path / "plain").items() if k.startswith("images")} == \
        {k: v for k, v in _files(tmp_path / "counted").items() if k.startswith("images")}
    sizes = set()
    for p, c in zip(plain, counted):
        assert p["conversations"][0] == c["conversations"][0] and p["meta"]["scene"] == c["meta"]["scene"]
        n = len(c["meta"]["scene"]["objects"])
        sizes.add(n)
        head, rest = c["conversations"][1]["value"].split(": ", 1)
        assert head == (f"{n} objects" if n > 1 else "1 object")
        assert rest[0].upper() + rest[1:] == p["conversations"][1]["value"] and p["conversations"][1]["value"][0] == "A"
    assert len(sizes) >= 3
    assert json.loads((tmp_path / "counted" / "world.json").read_text())["counted_captions"] is True
    assert "counted_captions" not in json.loads((tmp_path / "plain" / "world.json").read_text())


def test_pretrain_pool_lookup_share_asks_the_colour_of_a_shape_on_the_same_pictures(tmp_path):
    """``lookup_share`` (the foundation's stage 3 with lookup questions, issue 12): the same scenes and pictures as
    the caption pool; a share of them asked the colour of the one object of a shape, whose answer is read here off
    the scene metadata; a scene with no such shape keeps its caption; the caption pool is unchanged."""
    import re

    from vlselect.errors import ConfigError
    from vlselect.world import make_pretrain_pool
    from vlselect.world.vocab import SHORT_SUFFIX

    make_pretrain_pool(tmp_path / "caps", size=120, seed=3, eval_size=EVAL, image_size=24, counted=True)
    info = make_pretrain_pool(tmp_path / "mix", size=120, seed=3, eval_size=EVAL, image_size=24, counted=True,
                              lookup_share=0.5)
    caps = json.loads((tmp_path / "caps" / "pool.json").read_text())
    mix = json.loads((tmp_path / "mix" / "pool.json").read_text())
    assert {k: v for k, v in _files(tmp_path / "caps").items() if k.startswith("images")} == \
        {k: v for k, v in _files(tmp_path / "mix").items() if k.startswith("images")}
    asked = 0
    for c, m in zip(caps, mix):
        assert c["image"] == m["image"] and c["meta"]["scene"] == m["meta"]["scene"]
        if m["task"] == "caption":
            assert m["conversations"] == c["conversations"]
            continue
        asked += 1
        q, answer = m["conversations"][0]["value"], m["conversations"][1]["value"]
        assert m["task"] == "vqa_color" and m["meta"]["kind"] == "color_of_shape" and q.endswith("\n" + SHORT_SUFFIX)
        shape = re.search(r"(circle|square|triangle|cross|star|heart)", q).group(1)
        objs = m["meta"]["scene"]["objects"]
        assert [o["shape"] for o in objs].count(shape) == 1
        assert answer == next(o["color"] for o in objs if o["shape"] == shape)
    assert 35 <= asked <= 70 and info.task_counts == {"caption": 120 - asked, "vqa_color": asked}
    assert len({r["id"] for r in mix}) == 120
    assert json.loads((tmp_path / "mix" / "world.json").read_text())["lookup_share"] == 0.5
    assert "lookup_share" not in json.loads((tmp_path / "caps" / "world.json").read_text())
    with pytest.raises(ConfigError, match="lookup_share"):
        make_pretrain_pool(tmp_path / "bad", size=4, seed=3, eval_size=EVAL, lookup_share=1.5)


def test_pretrain_pool_lookup_kinds_ask_each_kind_answered_from_the_scene(tmp_path):
    """``lookup_kinds``: the asked pictures get one of the kinds each, with the world's own question; every answer is
    worked out here from the scene metadata (existence: the pair named is an object; count: objects of the colour;
    option letter: the option that is the colour of the one object of the shape; the word: the sign's). A picture
    with no sign drawn the word keeps its caption."""
    import re

    from vlselect.errors import ConfigError
    from vlselect.world import make_pretrain_pool
    from vlselect.world.vocab import COLOR_NAMES

    kinds = ("color_of_shape", "exist", "count_color", "mc_color", "pos_of", "ocr")
    info = make_pretrain_pool(tmp_path / "mix", size=250, seed=4, eval_size=EVAL, image_size=24, lookup_share=0.8,
                              lookup_kinds=kinds, word_share=0.5)
    mix = json.loads((tmp_path / "mix" / "pool.json").read_text())
    caps = make_pretrain_pool(tmp_path / "caps", size=250, seed=4, eval_size=EVAL, image_size=24, word_share=0.5)
    capr = json.loads((tmp_path / "caps" / "pool.json").read_text())
    assert [m["meta"]["scene"] for m in mix] == [c["meta"]["scene"] for c in capr] and caps.task_counts == {"caption": 250}
    colours, shapes = "|".join(COLOR_NAMES), "circle|square|triangle|cross|star|heart"
    seen = Counter()
    for m in mix:
        if m["task"] == "caption":
            continue
        kind, objs = m["meta"]["kind"], m["meta"]["scene"]["objects"]
        seen[kind] += 1
        q, answer = m["conversations"][0]["value"], m["conversations"][1]["value"]
        if kind == "exist":
            c, s = re.search(rf"({colours}) ({shapes})", q).groups()
            assert m["task"] == "exist" and answer == ("yes" if any(o["color"] == c and o["shape"] == s for o in objs)
                                                       else "no")
        elif kind == "count_color":
            c = re.search(rf"\b({colours})\b", q).group(1)
            assert m["task"] == "vqa_count" and answer == str(sum(o["color"] == c for o in objs))
        elif kind == "pos_of":
            c, s = re.search(rf"({colours}) ({shapes})", q).groups()
            assert m["task"] == "vqa_position" and answer in [o["pos"] for o in objs if (o["color"], o["shape"]) == (c, s)]
        elif kind == "ocr":
            assert m["task"] == "ocr" and answer == m["meta"]["scene"]["word"] and len(answer) == 3
        elif kind == "mc_color":
            s = re.search(rf"({shapes})", q.split("\n")[1]).group(1)
            colour = next(o["color"] for o in objs if o["shape"] == s)
            assert m["task"] == "mc" and [o["shape"] for o in objs].count(s) == 1
            assert m["meta"]["options"]["ABCD".index(answer)] == colour
        else:
            assert m["task"] == "vqa_color" and kind == "color_of_shape"
    assert set(seen) == set(kinds) and min(seen.values()) >= 10 and sum(seen.values()) == 250 - info.task_counts["caption"]
    assert json.loads((tmp_path / "mix" / "world.json").read_text())["lookup_kinds"] == list(kinds)
    with pytest.raises(ConfigError, match="lookup_kinds.*color_of_shape, exist"):
        make_pretrain_pool(tmp_path / "bad", size=4, seed=3, eval_size=EVAL, lookup_share=0.5, lookup_kinds=("grounding",))


def test_pretrain_pool_sentence_answers_keep_the_records_and_wrap_all_but_the_short_kinds(tmp_path):
    """``answer_style="sentence"``: the same pictures, kinds and answers as the short pool of the same seed, but every
    asked record of a kind not in ``short_kinds`` loses its format line and answers "The answer is X."; the short
    kinds' records are those of the short pool, byte for byte."""
    from vlselect.errors import ConfigError
    from vlselect.world import make_pretrain_pool
    from vlselect.world.make import ALIGN_KINDS
    from vlselect.world.vocab import SHORT_SUFFIX

    kw = dict(size=120, seed=5, eval_size=EVAL, image_size=24, lookup_share=0.9, lookup_kinds=ALIGN_KINDS,
              word_share=0.5)
    make_pretrain_pool(tmp_path / "s", **kw)
    short = json.loads((tmp_path / "s" / "pool.json").read_text())
    keep = ("color_of_shape", "count_all")
    make_pretrain_pool(tmp_path / "t", answer_style="sentence", short_kinds=keep, **kw)
    sent = json.loads((tmp_path / "t" / "pool.json").read_text())
    assert len(short) == len(sent) == 120
    wrapped = kept = 0
    for a, b in zip(short, sent):
        assert a["meta"] == b["meta"] and a["task"] == b["task"] and a.get("image") == b.get("image")
        qa, qb = a["conversations"][0]["value"], b["conversations"][0]["value"]
        aa, ab = a["conversations"][1]["value"], b["conversations"][1]["value"]
        if a["task"] == "caption" or a["meta"]["kind"] in keep:
            assert (qa, aa) == (qb, ab)
            kept += a["task"] != "caption"
        else:
            # the question is the short one less its last line (the format line: the short-answer one, or
            # multiple choice's "Answer with the option's letter ...")
            assert qb == qa.rsplit("\n", 1)[0] and (SHORT_SUFFIX in qa or "letter" in qa.rsplit("\n", 1)[1])
            assert ab == f"The answer is {aa}."
            wrapped += 1
    assert wrapped >= 60 and kept >= 8
    assert json.loads((tmp_path / "t" / "world.json").read_text())["short_kinds"] == list(keep)
    assert "answer_style" not in json.loads((tmp_path / "s" / "world.json").read_text())
    with pytest.raises(ConfigError, match="needs answer_style='sentence'"):
        make_pretrain_pool(tmp_path / "bad", short_kinds=keep, **kw)
    with pytest.raises(ConfigError, match="answer_style='long'"):
        make_pretrain_pool(tmp_path / "bad", answer_style="long", **kw)


def test_world_help_has_examples():
    from typer.testing import CliRunner

    from vlselect.cli import app

    runner = CliRunner()
    for args in (["world", "--help"], ["world", "make", "--help"], ["world", "pretrain", "--help"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0 and "Example: vlselect world" in res.output, args
