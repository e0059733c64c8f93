"""benchmarks/count_prior.py and across_worlds.per_set: the tables of where a method's points are lost, checked on
hand-made predictions and results."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench_scripts import load_script as _script


def _p(question: str, answer: str, prediction: str) -> dict:
    return {"question": f"{question}\nAnswer the question using a single word or phrase.", "answers": [answer],
            "prediction": prediction}


def test_answer_shift_by_hand():
    cp = _script("count_prior")
    preds = [_p("How many objects are there?", "1", "1"),
             _p("How many objects are there?", "2", "1"), _p("How many objects are there?", "2", "2"),
             _p("How many objects are there?", "3", "2"), _p("How many objects are there?", "3", "2"),
             _p("How many objects are there?", "3", " 3"), _p("How many objects are there?", "4", "three"),
             _p("How many circles are there?", "2", "1")]  # another question of the count set: not counted
    got = cp.answer_shift(preds)
    assert got["questions"] == {1: 1, 2: 2, 3: 3, 4: 1}
    assert got["right"] == {1: 1.0, 2: 0.5, 3: pytest.approx(1 / 3), 4: 0.0}
    assert got["one_fewer"] == {1: 0.0, 2: 0.5, 3: pytest.approx(2 / 3), 4: 0.0}  # "three" is not the digit 3
    with pytest.raises(SystemExit, match="How many objects"):
        cp.answer_shift([_p("How many circles are there?", "2", "1")])


def test_per_set_shares_by_hand():
    aw = _script("across_worlds")
    def world(ref, scores):
        return {"relative_sets": ["color", "count"], "reference": {"scores": ref},
                "rows": [{"method": "random", "budget": 0.2, "scores": scores},
                         {"method": "only_here", "budget": 0.2, "scores": scores}]}
    res = [world({"color": 50.0, "count": 40.0}, {"color": 45.0, "count": 20.0}),
           world({"color": 60.0, "count": 80.0}, {"color": 60.0, "count": 60.0})]
    res[1]["rows"] = res[1]["rows"][:1]
    got = aw.per_set(res)
    # colour: 90% and 100% -> 95; count: 50% and 75% -> 62.5; a row missing from one world is left out
    assert got == {"random": {"0.2": {"color": pytest.approx(95.0), "count": pytest.approx(62.5)}}}
    res[1]["relative_sets"] = ["color"]
    with pytest.raises(SystemExit, match="different sets"):
        aw.per_set(res)


def test_seed_spread_by_hand():
    """Two seeds of one method: shares colour 100 / 80, count 50 / 100 (references 50 and 50); relative 75 / 90."""
    cp = _script("count_prior")
    runs = [{"method": "random", "budget": 0.2, "scores": {"color": 50.0, "count": 25.0}},
            {"method": "random", "budget": 0.2, "scores": {"color": 40.0, "count": 50.0}},
            {"method": "full pool", "budget": 1.0, "scores": {"color": 1.0, "count": 1.0}},  # not a subset: left out
            {"method": "tive", "budget": 0.2, "scores": {"color": 10.0, "count": 10.0}}]  # one seed: no spread
    w = {"runs": runs, "reference": {"color": 50.0, "count": 50.0}, "relative_sets": ["color", "count"]}
    got = cp.seed_spread([w])[0.2]
    assert got["set"] == pytest.approx(1250 ** 0.5)  # 50 and 100
    assert got["all"] == pytest.approx(112.5 ** 0.5)  # 75 and 90
    assert got["without"] == pytest.approx(200 ** 0.5)  # 100 and 80


def test_question_part_by_hand():
    """Seeds right on questions [1, 1, 0, 0] and [1, 0, 1, 1] of one set, reference 50: shares 100 and 150
    (variance 1250); per-question differences x 200 = [0, 200, -200, -200], variance 110000 / 3, over n = 4 and
    two runs: 4583.3."""
    qn = _script("question_noise")
    obs, part = qn.question_part({0: {"a": np.array([1.0, 1, 0, 0])}, 1: {"a": np.array([1.0, 0, 1, 1])}},
                                 {"a": 50.0})
    assert obs == pytest.approx(1250.0)
    assert part == pytest.approx(110000 / 3 / 4 / 2)
    # two sets weigh a quarter each: the same set twice gives the same relative performance and variance
    obs2, part2 = qn.question_part({s: {"a": v, "b": v} for s, v in ((0, np.array([1.0, 1, 0, 0])),
                                                                    (1, np.array([1.0, 0, 1, 1])))},
                                   {"a": 50.0, "b": 50.0})
    assert obs2 == pytest.approx(1250.0) and part2 == pytest.approx(part / 2)


def test_swap_rows_by_hand():
    sw = _script("swap_rows")
    tasks = np.array(["color", "color", "caption", "count", "caption", "color", "caption", "count"])
    idx = np.array([0, 1, 3, 5])  # three colour rows and a count row
    new = sw.swap(idx, tasks, "color", "caption", 2, seed=0)
    assert new.size == 4 and len(set(new.tolist())) == 4
    assert (tasks[new] == "color").sum() == 1 and (tasks[new] == "caption").sum() == 2 and 3 in new
    assert set(new.tolist()) - set(idx.tolist()) <= {2, 4, 6}  # only captions come in
    assert np.array_equal(new, sw.swap(idx, tasks, "color", "caption", 2, seed=0))  # seeded
    with pytest.raises(SystemExit, match="holds 1 rows of 'count'"):
        sw.swap(idx, tasks, "count", "caption", 2, seed=0)
    with pytest.raises(SystemExit, match="1 rows of 'count' outside"):
        sw.swap(idx, tasks, "color", "count", 3, seed=0)


def test_skill_rows_reads_a_world_by_hand(tmp_path):
    """A five-record pool, one selection at 40%: the position set asks pos_of and shape_at_pos."""
    sr = _script("skill_rows")
    cache = tmp_path / "w0" / "cache"
    (cache / "world-a" / "w").mkdir(parents=True)
    (cache / "world-a" / "done.json").write_text("{}")
    pool = [{"task": "vqa_position", "meta": {"kind": "pos_of"}}, {"task": "caption", "meta": {"kind": "caption"}},
            {"task": "vqa_position", "meta": {"kind": "shape_at_pos"}}, {"task": "caption", "meta": {"kind": "caption"}},
            {"task": "vqa_color", "meta": {"kind": "color_of_shape"}}]
    (cache / "world-a" / "w" / "pool.json").write_text(json.dumps(pool))
    (cache / "select-b").mkdir()
    (cache / "select-b" / "done.json").write_text("{}")
    (cache / "select-b" / "recipe.json").write_text(json.dumps({"method": "less", "budgets": [0.4]}))
    np.save(cache / "select-b" / "indices_0.4.npy", np.array([0, 3]))
    (tmp_path / "w0" / "results.json").write_text(json.dumps({
        "config": {"seed": 0}, "relative_sets": ["position", "color"],
        "reference": {"scores": {"position": 40.0, "color": 50.0}},
        "rows": [{"method": "less", "budget": 0.4, "scores": {"position": 30.0, "color": 10.0}}]}))
    got = {c["set"]: c for c in sr.read_world(tmp_path / "w0")}
    assert got["position"]["rows"] == {"pos_of": 1, "shape_at_pos": 0} and got["position"]["captions"] == 1
    assert got["position"]["share"] == pytest.approx(75.0) and got["color"]["share"] == pytest.approx(20.0)
    assert got["color"]["rows"] == {"color_of_shape": 0}


def test_claim_folder_keeps_one_probe_per_folder(tmp_path):
    bc = _script("_bench_cache")
    out = tmp_path / "p"
    assert bc.claim_folder(out, {"a": 1}) is None and json.loads((out / "probe.json").read_text()) == {"a": 1}
    (out / "run_0").mkdir()  # unfinished: starts over
    assert bc.claim_folder(out, {"a": 1}) is None and not (out / "run_0").exists()
    (out / "summary.json").write_text('{"done": true}')
    assert bc.claim_folder(out, {"a": 1}) == '{"done": true}'  # finished: shown, not rerun
    with pytest.raises(SystemExit, match="holds the probe"):
        bc.claim_folder(out, {"a": 2})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    with pytest.raises(SystemExit, match="holds no probe"):
        bc.claim_folder(tmp_path / "other", {"a": 1})
    assert (tmp_path / "other" / "x.txt").read_text() == "mine"


def test_a_cache_of_two_benches_is_refused_not_mixed(tmp_path):
    """Two finished runs of one (method, budget, seed), e.g. a rerun with another lr into the same --out: the
    scripts refuse instead of keeping one of them; unfinished stages are not counted."""
    bc = _script("_bench_cache")
    cache = tmp_path / "cache"

    def stage(name, recipe, done=True):
        (cache / name).mkdir(parents=True)
        (cache / name / "recipe.json").write_text(json.dumps(recipe))
        if done:
            (cache / name / "done.json").write_text("{}")

    stage("run-a", {"method": "random", "budget": 0.2, "seed": 0, "lr": 1e-3})
    stage("run-b", {"method": "random", "budget": 0.2, "seed": 1, "lr": 1e-3})
    stage("run-c", {"method": "random", "budget": 0.2, "seed": 0, "lr": 5e-4}, done=False)
    stage("select-a", {"method": "less", "budgets": [0.1, 0.2]})
    assert set(bc.bench_runs(cache)) == {("random", 0.2, 0), ("random", 0.2, 1)}
    assert bc.bench_selections(cache)[("less", 0.1)] == cache / "select-a" / "indices_0.1.npy"
    (cache / "run-c" / "done.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"more than one finished training run for \[\('random', 0.2, 0\)\]"):
        bc.bench_runs(cache)
    stage("select-b", {"method": "less", "budgets": [0.2], "n_clusters": 150})
    with pytest.raises(SystemExit, match=r"more than one finished selection for \[\('less', 0.2\)\]"):
        bc.bench_selections(cache)


def test_answer_skew_tells_the_kinds_apart_and_counts_by_hand():
    sk = _script("answer_skew")
    pos = sk.template_pattern("pos_of")
    assert pos.match("Where is the purple circle?") and pos.match("In which part of the image is the red cross?")
    assert not pos.match("What shape is at the top left?") and not pos.match("Where is the purple circle")
    assert sk.template_pattern("shape_at_pos").match("What is the shape of the object at the bottom right?")
    with pytest.raises(SystemExit, match="unknown question kind"):
        sk.template_pattern("nope")
    assert sk.top_share(["a", "b", "b", "c"]) == ("b", 0.5)
    assert sk.top_share(["b", "a"]) == ("a", 0.5)  # a tie: the alphabetically first
    assert sk.top_share([]) == (None, 0.0)
    preds = [{**_p("Where is the red cross?", "top", "bottom right"), "score": 0.0},
             {**_p("Where is the blue circle?", "bottom right", "bottom right"), "score": 1.0},
             {**_p("Where is the green square located?", "left", "left"), "score": 1.0},
             {**_p("What shape is at the top?", "cross", "cross"), "score": 1.0}]  # another kind: left out
    acc, top, share, n = sk.runs_on_kind(preds, pos)
    assert (acc, top, n) == (pytest.approx(200 / 3), "bottom right", 3) and share == pytest.approx(2 / 3)


def test_ocr_answers_tells_format_from_reading_by_hand(tmp_path):
    oa = _script("ocr_answers")
    pred = tmp_path / "eval" / "predictions"
    pred.mkdir(parents=True)
    rows = [{"prediction": "hat", "answers": ["hat"], "score": 1.0},   # the word
            {"prediction": "hat", "answers": ["dog"], "score": 0.0},   # a world word, the wrong one
            {"prediction": "box", "answers": ["box"], "score": 1.0},
            {"prediction": "no", "answers": ["sky"], "score": 0.0},    # not the format
            {"prediction": "box", "answers": ["cat"], "score": 0.0}]
    (pred / "ocr.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = oa.ocr_answers(tmp_path)
    assert got == {"n": 5, "exact": 40.0, "world_word": 80.0, "top": "box", "top_share": 40.0}  # tie hat/box: box
    (pred / "ocr.jsonl").write_text("")
    with pytest.raises(SystemExit, match="empty"):
        oa.ocr_answers(tmp_path)
    with pytest.raises(SystemExit, match="no OCR predictions"):
        oa.ocr_answers(tmp_path / "elsewhere")
