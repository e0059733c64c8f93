"""benchmarks/count_prior.py and across_worlds.per_set: the tables of where a method's points are lost, checked on
hand-made predictions and results."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


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
