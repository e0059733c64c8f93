"""The lmms-eval bridge (issue 13 item 4): the command runs lmms-eval with this interpreter, on a device that
exists (CPU here), with model arguments and task folders; a run that writes no results file fails with exit 2;
imported scores are scaled per metric (never guessed from the value); means never mix MME's points with
percentages. The end-to-end test runs real lmms-eval on the tiny LLaVA with an offline task over local files and
checks its score against vlselect's own generation (skipped where lmms-eval is not installed)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from fixtures_models import tiny_llava, tiny_qwen2vl  # noqa: F401
from vlselect.cli import main
from vlselect.errors import ConfigError
from vlselect.evaluate.lmms import (LmmsEvalError, import_lmms_results, lmms_eval_command, parse_model_args,
                                    run_lmms_eval)

TASK_DIR = Path(__file__).parent / "data" / "lmms_task"


def _margs(cmd):
    return dict(kv.split("=", 1) for kv in cmd[cmd.index("--model_args") + 1].split(","))


def test_command_uses_this_python_an_existing_device_and_user_arguments(tiny_llava, tiny_qwen2vl, tmp_path,
                                                                          monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cmd = lmms_eval_command(tiny_llava, "mme,pope", tmp_path / "o")
    assert cmd[:3] == [sys.executable, "-m", "lmms_eval"]
    assert cmd[cmd.index("--model") + 1] == "llava_hf"
    assert _margs(cmd) == {"pretrained": str(tiny_llava), "device": "cpu", "device_map": "cpu"}
    assert "auto" not in " ".join(cmd)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cmd = lmms_eval_command(tiny_qwen2vl, ["gqa"], tmp_path / "o", include_path=TASK_DIR,
                            extra_model_args=parse_model_args("device_map=auto, max_pixels=12544"))
    assert cmd[cmd.index("--model") + 1] == "qwen2_vl"
    assert _margs(cmd) == {"pretrained": str(tiny_qwen2vl), "device": "cuda", "device_map": "auto",
                           "max_pixels": "12544"}
    assert cmd[cmd.index("--include_path") + 1] == str(TASK_DIR.resolve())
    multi = lmms_eval_command(tiny_llava, "mme", tmp_path / "o", num_processes=2)
    assert multi[:6] == [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "-m"]
    assert _margs(multi) == {"pretrained": str(tiny_llava)}  # one GPU per process: lmms-eval places them
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_model_args("dtype")
    with pytest.raises(ConfigError, match="no such folder"):
        lmms_eval_command(tiny_llava, "mme", tmp_path / "o", include_path=tmp_path / "nope")


def _fake_lmms_eval(root: Path, write_results: bool) -> Path:
    """A stand-in ``lmms_eval`` package: records its argv; prints a traceback and exits 0 (as lmms-eval does when
    a model cannot load) or writes a results file like lmms-eval's."""
    pkg = root / "lmms_eval"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    body = ["import json, sys, pathlib",
            "out = pathlib.Path(sys.argv[sys.argv.index('--output_path') + 1])",
            "(pathlib.Path(__file__).parent / 'argv.json').write_text(json.dumps(sys.argv[1:]))"]
    if write_results:
        body += ["d = out / 'model__x'", "d.mkdir(parents=True, exist_ok=True)",
                 "(d / '20261203_000000_results.json').write_text(json.dumps({'results': {'gqa': "
                 "{'alias': 'gqa', 'exact_match,none': 0.625, 'exact_match_stderr,none': 0.01}}}))",
                 "print('|gqa|exact_match|0.625|')"]
    else:
        body += ["print('Traceback (most recent call last):')",
                 "print(\"RuntimeError: Torch not compiled with CUDA enabled\")", "sys.exit(0)"]
    (pkg / "__main__.py").write_text("\n".join(body) + "\n")
    return pkg


@pytest.mark.parametrize("write_results", [False, True])
def test_cli_run_checks_for_a_results_file(tiny_llava, tmp_path, monkeypatch, capsys, write_results):
    pkg = _fake_lmms_eval(tmp_path / "site", write_results)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "lmms-out"
    with pytest.raises(SystemExit) as exc:
        main(["eval", "lmms", "--model", str(tiny_llava), "--tasks", "gqa", "--out", str(out), "--run",
              "--device", "cpu", "--model-args", "attn_implementation=eager", "--include-path", str(TASK_DIR),
              "--limit", "3"])
    cap = capsys.readouterr()
    argv = json.loads((pkg / "argv.json").read_text())  # it ran with this interpreter (it found the fake package)
    assert argv[argv.index("--model_args") + 1] == \
        f"pretrained={tiny_llava},device=cpu,device_map=cpu,attn_implementation=eager"
    assert argv[argv.index("--include_path") + 1] == str(TASK_DIR.resolve())
    assert argv[argv.index("--limit") + 1] == "3" and argv[argv.index("--tasks") + 1] == "gqa"
    if not write_results:
        assert exc.value.code == 2
        assert "exited 0 but wrote no results file" in cap.err and "Torch not compiled with CUDA" in cap.err
        assert "lmms_eval.log" in cap.err and (out / "lmms_eval.log").is_file()
        assert "Traceback" not in cap.err.split("last lines")[0]  # our message, then lmms-eval's quoted lines
    else:
        assert exc.value.code in (0, None)
        found = out / "model__x" / "20261203_000000_results.json"
        assert f"lmms-eval results: {found}" in cap.out and "|gqa|exact_match|0.625|" in cap.out
        assert import_lmms_results(found)["sets"]["gqa"]["score"] == pytest.approx(62.5)


@pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is not None, reason="lmms-eval is installed here")
def test_cli_run_without_lmms_eval_says_how_to_install_it_keeping_torch(tiny_llava, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "lmms", "--model", str(tiny_llava), "--tasks", "gqa", "--out", str(tmp_path / "o"), "--run"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and sys.executable in err and "-c keep-torch.txt" in err and "Traceback" not in err


def test_run_reports_a_nonzero_exit(tmp_path):
    cmd = [sys.executable, "-c", "import sys; print('boom: no such task'); sys.exit(3)"]
    with pytest.raises(LmmsEvalError, match=r"exited with code 3.*\n.*boom: no such task"):
        run_lmms_eval(cmd, tmp_path / "o", echo=lambda s: None)


def _results(tmp_path, name, results):
    p = tmp_path / name
    p.write_text(json.dumps({"results": results, "model_name": "m"}))
    return p


def test_import_scales_each_metric_by_its_declared_scale(tmp_path):
    p = _results(tmp_path, "r.json", {
        "mmbench_en_dev": {"gpt_eval_score,none": 0.85, "submission,none": []},  # a (bad) 0.85 %: stays 0.85
        "mmvet": {"gpt_eval_score,none": 31.2},
        "gqa": {"exact_match,none": 0.62, "exact_match_stderr,none": 0.004},
        "pope": {"pope_accuracy,none": 0.87, "pope_f1_score,none": 0.86, "pope_yes_ratio,none": 0.5},
        "mme": {"mme_perception_score,none": 1476.9, "mme_cognition_score,none": 300.0},
    })
    res = import_lmms_results(p, tmp_path / "out.json")
    got = {k: (v["metric"], round(v["score"], 6), v["scale"]) for k, v in res["sets"].items()}
    assert got == {"mmbench_en_dev": ("lmms:gpt_eval_score", 0.85, "percent"),
                   "mmvet": ("lmms:gpt_eval_score", 31.2, "percent"),
                   "gqa": ("lmms:exact_match", 62.0, "percent"),
                   "pope": ("lmms:pope_f1_score", 86.0, "percent"),
                   "mme": ("lmms:mme_perception_score", 1476.9, "points")}
    assert res["mean_excludes"] == ["mme"]
    assert res["mean_score"] == pytest.approx((0.85 + 31.2 + 62.0 + 86.0) / 4)
    assert json.loads((tmp_path / "out.json").read_text())["sets"] == res["sets"]


def test_import_refuses_to_guess_an_unknown_scale(tmp_path, capsys):
    p = _results(tmp_path, "r.json", {"my_task": {"my_score,none": 0.4}})
    with pytest.raises(ConfigError, match=r"my_score.*not known.*--scale my_task=fraction"):
        import_lmms_results(p)
    assert import_lmms_results(p, scales={"my_task": "fraction"})["sets"]["my_task"]["score"] == pytest.approx(40.0)
    assert import_lmms_results(p, scales={"my_score": "percent"})["sets"]["my_task"]["score"] == pytest.approx(0.4)
    bad = _results(tmp_path, "bad.json", {"gqa": {"exact_match,none": 62.0}})
    with pytest.raises(ConfigError, match="declared a 0-1 fraction but is not"):
        import_lmms_results(bad)
    with pytest.raises(SystemExit) as exc:
        main(["eval", "lmms-import", str(p), "--out", str(tmp_path / "x.json"), "--scale", "my_task=percentage"])
    assert exc.value.code == 2 and "choose one of fraction, percent, points" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["eval", "lmms-import", str(p), "--out", str(tmp_path / "x.json"), "--scale", "my_task=fraction"])
    assert exc.value.code in (0, None)
    assert "my_task: 40.00 (lmms:my_score, percent)" in capsys.readouterr().out


def test_summarize_reports_mme_apart_from_the_percent_mean(tmp_path, capsys):
    files = []
    for i, (gqa, pope, mme) in enumerate([(0.60, 0.80, 1400.0), (0.64, 0.84, 1500.0)]):
        p = _results(tmp_path, f"l{i}.json", {"gqa": {"exact_match,none": gqa}, "pope": {"pope_f1_score,none": pope},
                                              "mme": {"mme_perception_score,none": mme}})
        import_lmms_results(p, tmp_path / f"r{i}.json")
        files.append(str(tmp_path / f"r{i}.json"))
    with pytest.raises(SystemExit) as exc:
        main(["eval", "summarize", *files, "--out", str(tmp_path / "s.json")])
    assert exc.value.code in (0, None)
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["mean_score"]["mean"] == pytest.approx((60 + 80 + 64 + 84) / 4)  # not (60+80+1400)/3 ...
    assert s["mean_excludes"] == ["mme"] and s["sets"]["mme"]["mean"] == pytest.approx(1450.0)
    assert "without mme" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is None,
                    reason="lmms-eval is not installed in this interpreter (pip install 'vlselect[lmms]' -c keep-torch.txt)")
def test_real_lmms_eval_on_the_tiny_llava_with_an_offline_task(tiny_llava, tmp_path, monkeypatch, capsys):
    """Real lmms-eval, CPU, offline: its generations equal vlselect's own on the same model and questions, and the
    imported exact-match score is what those generations earn against answers made so that 3 of 6 match."""
    from PIL import Image

    from vlselect.evaluate.run import generate_answers
    from vlselect.train.load import load_trained

    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(k, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    colours = [(230, 20, 20), (20, 200, 20), (20, 20, 230)] * 2
    docs = []
    for i, rgb in enumerate(colours):
        img = tmp_path / "images" / f"{i}.png"
        img.parent.mkdir(exist_ok=True)
        Image.new("RGB", (32, 32), rgb).save(img)
        docs.append({"id": f"e{i}", "image": str(img), "question": "What color is the image?"})
    ours = generate_answers(load_trained(tiny_llava), [d["question"] for d in docs], [d["image"] for d in docs],
                            "/", batch_size=1, max_new_tokens=4)
    for i, d in enumerate(docs):  # the first three answers are what vlselect generated, the last three never are
        d["answer"] = ours[i] if i < 3 else "zzz never said"
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text((TASK_DIR / "utils.py").read_text())
    (tasks / "colours.yaml").write_text((TASK_DIR / "task.yaml.in").read_text().replace("@TASK@", "vlselect_colours")
                                        .replace("@DOCS@", str(tmp_path / "docs.jsonl")))
    out = tmp_path / "lmms-out"
    with pytest.raises(SystemExit) as exc:
        main(["eval", "lmms", "--model", str(tiny_llava), "--tasks", "vlselect_colours", "--out", str(out), "--run",
              "--include-path", str(tasks), "--device", "cpu"])
    assert exc.value.code in (0, None), capsys.readouterr().err[-3000:]
    samples = next(out.rglob("*_samples_vlselect_colours.jsonl"))
    theirs = {r["doc_id"]: r["filtered_resps"] for r in map(json.loads, samples.read_text().splitlines())}
    assert [theirs[i] for i in range(6)] == [o.strip() for o in ours]
    res = import_lmms_results(next(out.rglob("*_results.json")))
    assert res["sets"]["vlselect_colours"] == {"metric": "lmms:exact_match", "score": pytest.approx(50.0),
                                               "scale": "percent"}
