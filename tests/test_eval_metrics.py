"""Hand-checked metric cases: VQA normalisation, option letters, POPE yes/no F1, box parsing and IoU, relative
performance and t-intervals; eval-set validation and the lmms-eval command line."""

from __future__ import annotations

import json
import math
import sys

import pytest

from vlselect.evaluate import metrics as M
from vlselect.evaluate.lmms import lmms_eval_command
from vlselect.evaluate.sets import EvalSetError, read_eval_set


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("Two dogs.", "2 dogs"),
        ("The Red one!", "red 1"),
        ("a  cat", "cat"),
        ("dont", "don't"),
        ("1,000", "1000"),
        ("yes\n", "yes"),
        ("3.5", "3.5"),
        ("left-hand", "left hand"),
    ],
)
def test_vqa_normalisation(raw, norm):
    assert M.normalize_vqa_answer(raw) == norm


def test_vqa_accuracy_official_and_short():
    # 10 humans: 2 said "2" -> each leave-one-out subset has 1 or 2 matches
    gts = ["2"] * 2 + ["3"] * 8
    # subsets leaving out a "2": 1 match -> 1/3 (2 of them); leaving out a "3": 2 matches -> 2/3 (8 of them)
    assert M.vqa_accuracy("two", gts) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert M.vqa_accuracy("3", gts) == 1.0
    assert M.vqa_accuracy("The cat.", ["cat"]) == 1.0
    assert M.vqa_accuracy("dog", ["cat", "kitten"]) == 0.0


@pytest.mark.parametrize(
    "pred, letter",
    [("B", "B"), ("(C) a dog", "C"), ("The answer is D.", "D"), ("red", "A"), ("I think B is right", "B"), ("??", None)],
)
def test_option_letter(pred, letter):
    assert M.parse_option_letter(pred, ["red", "green", "blue", "cyan"]) == letter


def test_option_letter_ignores_invalid_letters():
    assert M.parse_option_letter("E", ["x", "y"]) is None
    assert M.option_letter_accuracy("b.", ["B"], ["x", "y"]) == 0.0  # lower-case is not a letter answer
    assert M.option_letter_accuracy("B.", ["B"], ["x", "y"]) == 1.0


def test_yes_no_pope():
    assert M.parse_yes_no("No, there is not.") == "no"
    assert M.parse_yes_no("Yes. No doubt.") == "yes"
    assert M.parse_yes_no("There is not a dog") == "no"
    preds = ["yes", "Yes, there is.", "no", "No.", "yes"]
    gold = ["yes", "no", "no", "yes", "yes"]
    s = M.yes_no_scores(preds, gold)
    # tp=2 (0,4) fp=1 (1) tn=1 (2) fn=1 (3)
    assert s["accuracy"] == pytest.approx(60.0)
    assert s["precision"] == pytest.approx(200 / 3)
    assert s["recall"] == pytest.approx(200 / 3)
    assert s["f1"] == pytest.approx(200 / 3)
    assert s["yes_ratio"] == pytest.approx(60.0)
    out = M.score_set("yes_no", preds, [{"answers": [g]} for g in gold])
    assert out["score"] == pytest.approx(200 / 3)


def test_box_parse_and_iou():
    assert M.parse_box("[0.1, 0.2, 0.5, 0.6]") == [0.1, 0.2, 0.5, 0.6]
    assert M.parse_box("box: 0.5 0.6 0.1 0.2 extra 9") == [0.1, 0.2, 0.5, 0.6]
    assert M.parse_box("[0.1, 0.2]") is None
    assert M.box_iou([0, 0, 1, 1], [0, 0, 1, 1]) == 1.0
    assert M.box_iou([0, 0, 0.5, 1], [0.25, 0, 0.75, 1]) == pytest.approx(1 / 3)
    assert M.iou_hit("[0.0, 0.0, 0.5, 1.0]", [0.1, 0.0, 0.6, 1.0]) == 1.0  # IoU 0.4/0.6 = 0.667
    assert M.iou_hit("[0.0, 0.0, 0.5, 1.0]", [0.25, 0.0, 0.75, 1.0]) == 0.0  # 1/3
    assert M.iou_hit("nothing", [0, 0, 1, 1]) == 0.0


def test_exact_match_and_set_score():
    assert M.exact_match(" Hello World. ", ["hello world"]) == 1.0
    assert M.exact_match("hello", ["hello world"]) == 0.0
    s = M.score_set("exact_match", ["a", "b", "c", "d"], [{"answers": ["a"]}, {"answers": ["x"]}] * 2)
    assert s["score"] == pytest.approx(25.0)


def test_relative_performance():
    r = M.relative_performance({"a": 50.0, "b": 90.0}, {"a": 100.0, "b": 90.0})
    assert r["relative"] == pytest.approx(75.0)
    assert r["per_set"] == {"a": pytest.approx(50.0), "b": pytest.approx(100.0)}
    with pytest.raises(Exception, match="no reference score for the evaluation set 'c'"):
        M.relative_performance({"c": 1.0}, {"a": 1.0}, source="ref.json")
    with pytest.raises(Exception, match="no evaluation set with a non-zero reference score"):
        M.relative_performance({"a": 1.0}, {"a": 0.0})
    r = M.relative_performance({"a": 30.0, "b": 5.0}, {"a": 60.0, "b": 0.0})
    assert r["relative"] == pytest.approx(50.0) and r["skipped"] == ["b"] and list(r["per_set"]) == ["a"]


def test_mean_interval():
    r = M.mean_interval([1.0, 2.0, 3.0])
    # t_{0.975, 2} = 4.302653, s = 1, n = 3
    assert r["mean"] == 2.0
    assert r["half_width"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert r["low"] == pytest.approx(2.0 - r["half_width"])
    one = M.mean_interval([5.0])
    assert one["mean"] == 5.0 and one["half_width"] is None


def test_eval_set_validation(tmp_path):
    good = {"name": "colors", "metric": "vqa_accuracy", "description": "", "samples": [
        {"id": "0", "image": "a.png", "question": "Colour?", "answers": ["red"]}]}
    p = tmp_path / "colors.json"
    p.write_text(json.dumps(good))
    es = read_eval_set(p)
    assert es.name == "colors" and es.metric == "vqa_accuracy" and len(es.samples) == 1
    bad = dict(good, metric="bleu")
    p.write_text(json.dumps(bad))
    with pytest.raises(EvalSetError, match="unknown metric 'bleu'"):
        read_eval_set(p)
    bad = dict(good, metric="iou")
    p.write_text(json.dumps(bad))
    with pytest.raises(EvalSetError, match=r"sample 0 \(id '0'\) has no 4-number 'box'"):
        read_eval_set(p)


def test_lmms_command(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    cmd = lmms_eval_command(tmp_path, "mme,pope", tmp_path / "out", batch_size=2, limit=10, device="cpu")
    assert cmd[:3] == [sys.executable, "-m", "lmms_eval"]  # the interpreter vlselect runs in, not a bare python
    assert cmd[cmd.index("--model") + 1] == "llava_hf"
    assert cmd[cmd.index("--model_args") + 1] == f"pretrained={tmp_path},device=cpu,device_map=cpu"
    assert cmd[cmd.index("--tasks") + 1] == "mme,pope"
    assert cmd[cmd.index("--batch_size") + 1] == "2"
    assert cmd[cmd.index("--limit") + 1] == "10"
    multi = lmms_eval_command(tmp_path, ["gqa"], "o", num_processes=4, lmms_model="qwen2_vl")
    assert multi[:6] == [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "4", "-m"]
    assert multi[multi.index("--model") + 1] == "qwen2_vl"


def test_relative_performance_reproduces_published_rel(tmp_path):
    """Survey §1.1: the Rel. column of the 20% table is mean(score / Full) x 100 over the 10 benchmarks."""
    from vlselect.evaluate.references import BENCHMARKS, reference_scores
    from vlselect.evaluate.run import summarize

    ref, label = reference_scores("llava-1.5-7b-lora")
    rows = {
        "random": ((75.7, 58.9, 44.3, 68.5, 55.3, 84.7, 1483.0, 62.2, 54.8, 65.0), 95.8),
        "coincide": ((76.5, 59.8, 46.8, 69.2, 55.6, 86.1, 1495.6, 63.1, 54.5, 67.3), 97.4),
        "icons": ((76.3, 60.7, 50.1, 70.8, 55.6, 87.5, 1485.7, 63.1, 55.8, 66.1), 98.6),
        "el2n": ((76.2, 58.7, 43.7, 65.5, 53.0, 84.3, 1439.5, 53.2, 47.4, 64.9), 92.0),
    }
    files = []
    for name, (scores, published) in rows.items():
        rel = M.relative_performance(dict(zip(BENCHMARKS, scores)), ref, source=label)
        assert rel["relative"] == pytest.approx(published, abs=0.07), name  # EL2N: 91.93 printed as 92.0
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps({"sets": {b: {"score": s} for b, s in zip(BENCHMARKS, scores)}}))
        files.append(f)
    s = summarize(files, reference="llava-1.5-7b-lora")
    assert s["n"] == 4 and s["relative"]["mean"] == pytest.approx((95.835 + 97.427 + 98.608 + 91.933) / 4, abs=1e-2)
    with pytest.raises(Exception, match="neither a results.json file nor a pinned reference"):
        reference_scores("llava-9b")


def test_lmms_import_and_relative(tmp_path):
    from vlselect.cli import main

    lm = {"results": {
        "mme": {"alias": "mme", "mme_cognition_score,none": 300.0, "mme_percetion_score,none": 1476.9},
        "pope": {"pope_accuracy,none": 0.87, "pope_f1_score,none": 0.864, "pope_f1_score_stderr,none": 0.01},
        "gqa": {"exact_match,none": 0.63, "exact_match_stderr,none": 0.004},
        "textvqa_val": {"exact_match,none": 0.582},
    }}
    f = tmp_path / "results_lmms.json"
    f.write_text(json.dumps(lm))
    with pytest.raises(SystemExit) as exc:
        main(["eval", "lmms-import", str(f), "--out", str(tmp_path / "r.json"), "--reference", "llava-1.5-7b-lora"])
    assert exc.value.code in (0, None)
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["sets"]["mme"]["score"] == 1476.9 and r["sets"]["pope"]["score"] == pytest.approx(86.4)
    assert r["sets"]["gqa"]["score"] == pytest.approx(63.0)
    assert r["sets"]["textvqa"]["task"] == "textvqa_val" and r["sets"]["textvqa"]["score"] == pytest.approx(58.2)
    assert r["relative"] == pytest.approx(100.0)  # these are the pinned reference's own numbers
    with pytest.raises(SystemExit) as exc:
        main(["eval", "lmms-import", str(f), "--out", str(tmp_path / "r2.json"), "--metric", "gqa=bleu"])
    assert exc.value.code == 2
