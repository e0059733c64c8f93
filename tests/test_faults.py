"""Fault injection and wrong reuse (issue 11): every stage, killed with SIGKILL part-way in a real subprocess, is
finished by running the same command again, and its outputs are byte-identical to an uninterrupted run; a folder
holding a result of other inputs is refused with exit 2 (and recomputed under --overwrite); a second process on a
held --out is refused; a failed training leaves no --out behind.

Tiny models, pools of 6 rows; each killed run is one subprocess, the reruns and references run in-process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures_models import tiny_llava, write_pool  # noqa: F401

from vlselect.cli import main

VENV_BIN = Path(sys.executable).parent
TRAIN = ["--r", "4", "--lora-alpha", "8", "--batch-size", "2", "--max-steps", "3", "--lr", "1e-3",
         "--no-gradient-checkpointing", "--no-progress", "--bf16", "no"]


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.update(extra)
    return env


def _cli(args, **env):
    """The CLI in a subprocess (so that it can be SIGKILLed); returns the completed process."""
    return subprocess.run([str(VENV_BIN / "vlselect"), *map(str, args)], env=_env(**env), capture_output=True,
                          text=True)


def _main(args, capsys=None):
    """The CLI in-process: its exit code (0 success, 2 a user error) and stderr."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    err = capsys.readouterr().err if capsys is not None else ""
    return exc.value.code, " ".join(err.split())


def _files(d: Path) -> dict[str, bytes]:
    """Every output file under ``d`` (locks and the run's own key record aside), by relative path."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and not p.name.startswith(".vlselect")}


def _eval_set(path: Path, name: str, images: list[str], questions: list[str]) -> Path:
    samples = [{"id": f"{name}-{i}", "image": im, "question": q, "answers": [a]}
               for i, (im, q, a) in enumerate(zip(images, questions, ["red", "two", "blue", "one"]))]
    path.write_text(json.dumps({"name": name, "metric": "exact_match", "samples": samples}))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_llava):  # noqa: F811
    root = tmp_path_factory.mktemp("faults")
    pool, images = write_pool(root / "a", n=6)
    records = json.loads(pool.read_text())
    b = root / "b.json"  # another subset of the same size (rows reversed, other ids)
    b.write_text(json.dumps([{**r, "id": f"b-{r['id']}"} for r in reversed(records)]))
    imgs = ["img0.png", "img1.png", "img3.png", "img4.png"]
    color = _eval_set(root / "color.json", "color", imgs, [f"What colour is picture {i}?" for i in range(4)])
    count = _eval_set(root / "count.json", "count", imgs, [f"How many shapes in picture {i}?" for i in range(4)])
    from vlselect.train.warmup import train_warmup

    warm = train_warmup(tiny_llava, pool, images, root / "warm", rule="icons", r=4, batch_size=2, step=2,
                        progress=False, device="cpu")
    return {"root": root, "model": tiny_llava, "pool": pool, "b": b, "images": images, "color": color,
            "count": count, "lora": warm.lora_dir, "warm": root / "warm"}


def _grad_args(w, pool, out, *extra):
    return ["features", "gradients", "--model", w["model"], "--lora", w["lora"], "--pool", pool, "--images",
            w["images"], "--out", out, "--dim", "16", "--shard-size", "2", "--batch-size", "2", "--device", "cpu",
            "--quiet", *extra]


# ------------------------------------------------------------------------------------------------ wrong reuse
def test_a_gradient_store_of_another_validation_set_is_refused(world, tmp_path, capsys):
    from vlselect.features import FeatureStore

    g = tmp_path / "g"
    assert _main(_grad_args(world, world["color"], g), capsys)[0] == 0
    code, err = _main(_grad_args(world, world["count"], g), capsys)
    assert code == 2, "the colour store was handed back as the counting store"
    assert f"{g} holds a result of other inputs:" in err and "sample_ids" in err
    assert "pass --overwrite or another --out" in err and "Traceback" not in err
    assert FeatureStore.open(g).sample_ids() == [f"color-{i}" for i in range(4)]  # untouched
    assert _main(_grad_args(world, world["count"], g, "--overwrite"), capsys)[0] == 0
    assert FeatureStore.open(g).sample_ids() == [f"count-{i}" for i in range(4)]
    assert _main(_grad_args(world, world["count"], g), capsys)[0] == 0  # same inputs: reused


def test_also_writes_the_self_attention_store_from_the_same_pass(world, tmp_path, capsys):
    """--params lora --also self_attn=DIR: TIVE's store equals the one of its own command (rows to rounding)."""
    import numpy as np

    from vlselect.features import FeatureStore

    code, _ = _main(_grad_args(world, world["pool"], tmp_path / "g", "--norms", "--also", f"self_attn={tmp_path / 't'}"),
                    capsys)
    assert code == 0
    assert _main(_grad_args(world, world["pool"], tmp_path / "t_alone", "--norms", "--params", "self_attn"),
                 capsys)[0] == 0
    shared, alone = FeatureStore.open(tmp_path / "t"), FeatureStore.open(tmp_path / "t_alone")
    assert shared.manifest["params"] == "self_attn" and FeatureStore.open(tmp_path / "g").manifest["params"] == "lora"
    for name in ("gradients", "grad_norms"):
        np.testing.assert_allclose(shared.array(name), alone.array(name), rtol=1e-5, atol=1e-7)
    assert float(np.abs(alone.array("gradients")).max()) > 0
    # another pool with the TIVE store already holding this one's: refused before the new --out is made
    code, err = _main(_grad_args(world, world["b"], tmp_path / "g_new", "--also", f"self_attn={tmp_path / 't'}"),
                      capsys)
    assert code == 2 and f"{tmp_path / 't'} holds a result of other inputs" in err
    assert not (tmp_path / "g_new").exists()
    assert FeatureStore.open(tmp_path / "t").sample_ids() == alone.sample_ids()  # untouched


def test_training_on_another_pool_is_refused_and_overwrite_retrains(world, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--model", world["model"], "--images", world["images"], "--out", run, *TRAIN]
    assert _main([*base, "--pool", world["pool"]], capsys)[0] == 0
    first = (run / "final" / "model.safetensors").read_bytes()
    code, err = _main([*base, "--pool", world["b"]], capsys)
    assert code == 2, "training on another pool handed back the first model"
    assert f"{run} holds a result of other inputs: inputs.pool" in err and "--overwrite" in err
    code, err = _main([*base, "--pool", world["pool"], "--lr", "2e-3"], capsys)
    assert code == 2 and "config.lr (0.001 there, 0.002 now)" in err
    assert (run / "final" / "model.safetensors").read_bytes() == first
    assert _main([*base, "--pool", world["b"], "--overwrite"], capsys)[0] == 0
    assert (run / "final" / "model.safetensors").read_bytes() != first


def test_a_failed_training_leaves_no_out_folder(world, tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([{"id": f"x{i}", "image": "no-such.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A."}]} for i in range(4)]))
    out = tmp_path / "run"
    code, err = _main(["train", "--model", world["model"], "--pool", broken, "--images", world["images"], "--out",
                       out, *TRAIN], capsys)
    assert code == 2 and "no-such.png" in err
    assert not out.exists()


def test_evaluation_of_another_model_in_the_same_out_is_refused(world, tmp_path):
    from vlselect.artifact import ArtifactMismatchError
    from vlselect.evaluate import evaluate

    ev = tmp_path / "ev"
    kw = dict(max_new_tokens=2, progress=False, device="cpu")
    first = evaluate(world["model"], [world["color"]], world["images"], ev, **kw)
    pf = ev / "predictions" / "color.jsonl"
    before = pf.read_bytes()
    with pytest.raises(ArtifactMismatchError, match=r"ev holds a result of other inputs: adapter.*--overwrite"):
        evaluate(world["model"], [world["color"]], world["images"], ev, adapter=world["lora"], **kw)
    assert pf.read_bytes() == before  # the first model's predictions are kept
    again = evaluate(world["model"], [world["color"]], world["images"], ev, adapter=world["lora"], overwrite=True,
                     **kw)
    assert set(again["sets"]) == set(first["sets"]) == {"color"}
    assert json.loads((ev / "eval_state.json").read_text())["adapter_hash"].startswith("sha256:")


# ------------------------------------------------------------------------------------------------ SIGKILL
def test_gradients_killed_after_a_shard_resume_byte_identical(world, tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert _main(_grad_args(world, world["pool"], ref, "--norms"))[0] == 0
    r = _cli(_grad_args(world, world["pool"], killed, "--norms"), VLSELECT_TEST_KILL_AFTER_SHARDS="1")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not (killed / "manifest.json").exists() and len(list((killed / "shards").glob("*.done.json"))) == 1
    assert _main(_grad_args(world, world["pool"], killed, "--norms"))[0] == 0
    for f in ("gradients.npy", "grad_norms.npy", "missing.npy", "sample_ids.json", "plan.json"):
        assert (killed / f).read_bytes() == (ref / f).read_bytes(), f


def test_activations_killed_after_two_shards_resume_byte_identical(world, tmp_path):
    args = ["features", "activations", "--model", world["model"], "--pool", world["pool"], "--images",
            world["images"], "--losses", "--shard-size", "2", "--batch-size", "2", "--quiet"]
    assert _main([*args, "--out", tmp_path / "ref"])[0] == 0
    out = tmp_path / "killed"
    r = _cli([*args, "--out", out], VLSELECT_TEST_KILL_AFTER_SHARDS="2")  # (test_features_cli kills after 1)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert len(list((out / "shards").glob("*.done.json"))) == 2 and not (out / "manifest.json").exists()
    assert _main([*args, "--out", out])[0] == 0
    ref = _files(tmp_path / "ref")
    assert _files(out) == ref and "activations.npy" in ref and "manifest.json" in ref


def test_training_killed_mid_run_resumes_to_identical_weights(world, tmp_path):
    args = ["train", "--model", world["model"], "--pool", world["pool"], "--images", world["images"], *TRAIN,
            "--save-steps", "1"]
    assert _main([*args, "--out", tmp_path / "ref"])[0] == 0
    out = tmp_path / "killed"
    r = _cli([*args, "--out", out], VLSELECT_TEST_KILL_AFTER_STEPS="2")  # checkpoint-1 kept, step 2 lost
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert (out / "checkpoint-1" / "state.json").exists() and not (out / "train_result.json").exists()
    assert _main([*args, "--out", out])[0] == 0
    for f in ("final/model.safetensors", "adapter/adapter_model.safetensors"):
        assert (out / f).read_bytes() == (tmp_path / "ref" / f).read_bytes(), f
    assert json.loads((out / "train_result.json").read_text())["losses"] == \
        json.loads((tmp_path / "ref" / "train_result.json").read_text())["losses"]


def test_warmup_killed_mid_training_resumes_to_identical_adapter(world, tmp_path):
    import torch

    out = tmp_path / "warm"

    def warmup(step):
        return ["train", "warmup", "--model", world["model"], "--pool", world["pool"], "--images", world["images"],
                "--rule", "icons", "--r", "4", "--batch-size", "2", "--step", step, "--device", "cpu", "--quiet",
                "--out", out]

    args = warmup(2)
    r = _cli(args, VLSELECT_TEST_KILL_AFTER_STEPS="1")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not (out / "warmup.json").exists() and not (out / "lora").exists()
    assert _main(args)[0] == 0
    ref = world["warm"]
    assert (out / "lora" / "adapter_model.safetensors").read_bytes() == \
        (ref / "lora" / "adapter_model.safetensors").read_bytes()
    a, b = torch.load(out / "adam_state.pt"), torch.load(ref / "adam_state.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k][m], b[k][m]) for k in a for m in a[k])
    # another rule in the same folder is refused
    assert _main(warmup(1))[0] == 2


def test_selection_export_killed_between_files_never_looks_finished(world, tmp_path):
    args = ["select", "random", "--pool", world["pool"], "--budget", "3", "--seed", "1"]
    assert _main([*args, "--out", tmp_path / "ref"])[0] == 0
    out = tmp_path / "sel"
    assert _main(["select", "random", "--pool", world["pool"], "--budget", "2", "--seed", "1", "--out", out,
                  "--overwrite"])[0] == 0
    r = _cli([*args, "--out", out, "--overwrite"], VLSELECT_TEST_KILL_IN_EXPORT="1")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not (out / "manifest.json").exists()  # the old manifest is gone: the folder does not look finished
    assert _main([*args, "--out", out, "--overwrite"])[0] == 0
    got, ref = _files(out), _files(tmp_path / "ref")
    for f in ("indices.npy", "scores.npy", "subset.json", "ids.txt"):
        assert got[f] == ref[f], f
    strip = lambda b: {k: v for k, v in json.loads(b).items() if k != "created_utc"}  # noqa: E731
    assert strip(got["manifest.json"]) == strip(ref["manifest.json"])


def test_a_bench_stage_killed_before_done_is_rerun_to_the_same_output(world, tmp_path):
    script = (
        "import sys\nfrom pathlib import Path\nfrom vlselect.bench.stages import StageCache\n"
        "from vlselect.bench.run import _extract_activations\n"
        "m, pool, images, root = map(Path, sys.argv[1:5])\n"
        "StageCache(root, log=lambda s: None).run('activations', {'k': 1}, "
        "lambda d: _extract_activations(m, pool, images, d))\n")
    argv = [world["model"], world["pool"], world["images"]]
    r = subprocess.run([sys.executable, "-c", script, *map(str, argv), str(tmp_path / "cache")],
                       env=_env(VLSELECT_TEST_KILL_AFTER_STAGE="activations"), capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    from vlselect.bench.stages import StageCache
    from vlselect.bench.run import _extract_activations

    cache = StageCache(tmp_path / "cache", log=lambda s: None)
    folder = cache.folder("activations", {"k": 1})
    assert (folder / "store" / "manifest.json").exists() and not (folder / "done.json").exists()
    calls = []
    cache.run("activations", {"k": 1}, lambda d: calls.append(_extract_activations(*argv, d)))
    assert calls and (folder / "done.json").exists()  # rerun (the store inside is reused: same key)
    ref = StageCache(tmp_path / "ref", log=lambda s: None)
    rf, _ = ref.run("activations", {"k": 1}, lambda d: _extract_activations(*argv, d))
    assert _files(folder / "store") == _files(rf / "store")
    # the stage folder is keyed by the code version too
    assert StageCache(tmp_path / "x", log=lambda s: None, code="other").folder("activations", {"k": 1}).name != \
        folder.name


# ------------------------------------------------------------------------------------------------ two processes
def test_a_second_process_on_a_held_out_is_refused_and_none_corrupts(world, tmp_path):
    from vlselect.artifact import FolderLock

    run = tmp_path / "run"
    args = ["train", "--model", world["model"], "--pool", world["pool"], "--images", world["images"], *TRAIN,
            "--out", run]
    held = FolderLock(run).acquire()  # this test process is the first writer
    try:
        r = _cli(args)
        assert r.returncode == 2, r.stderr
        assert f"{run} is being written by another vlselect process (pid {os.getpid()})" in " ".join(r.stderr.split())
        assert not (run / "train_result.json").exists()
    finally:
        held.release()
    assert _main(args)[0] == 0 and (run / "train_result.json").exists()


def test_two_extractions_on_one_out_at_once_give_the_uninterrupted_store(world, tmp_path):
    args = ["features", "activations", "--model", world["model"], "--pool", world["pool"], "--images",
            world["images"], "--shard-size", "2", "--batch-size", "2", "--quiet"]
    out = tmp_path / "both"
    procs = [subprocess.Popen([str(VENV_BIN / "vlselect"), *map(str, args), "--out", str(out)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    codes = [p.wait() for p in procs]
    assert codes == [0, 0], [p.stderr.read().decode()[-2000:] for p in procs]
    assert _main([*args, "--out", tmp_path / "ref"])[0] == 0
    assert _files(out) == _files(tmp_path / "ref")


# ------------------------------------------------------------------------------------------------ torchrun
@pytest.mark.slow
def test_gradients_and_warmup_under_a_real_two_process_torchrun(world, tmp_path):
    """torchrun with 2 CPU ranks (gloo): the gradient store equals the single-process one byte for byte (ranks
    write their own shards, rank 0 finalises after a barrier); the warm-up trains on both ranks and only rank 0
    exports (one adapter, no leftover temporary folder, the adapter is the checkpoint of the rule's step)."""
    import torch
    from safetensors.torch import load_file

    torchrun = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "--no-python",
                str(VENV_BIN / "vlselect")]
    ref, tr = tmp_path / "ref", tmp_path / "tr"
    assert _main(_grad_args(world, world["pool"], ref, "--norms"))[0] == 0
    r = subprocess.run([*torchrun, *map(str, _grad_args(world, world["pool"], tr, "--norms"))], env=_env(),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _files(tr) == _files(ref)
    warm = tmp_path / "warm"
    import shlex

    script = tmp_path / "warmup.sh"  # torchrun's own parser would take '--r' for one of its options
    script.write_text("#!/bin/sh\nexec " + shlex.join([
        str(VENV_BIN / "vlselect"), "train", "warmup", "--model", str(world["model"]), "--pool", str(world["pool"]),
        "--images", str(world["images"]), "--rule", "icons", "--r", "4", "--batch-size", "1", "--step", "1",
        "--device", "cpu", "--quiet", "--out", str(warm)]) + "\n")
    script.chmod(0o755)
    r = subprocess.run([*torchrun[:-1], str(script)], env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((warm / "warmup.json").read_text())
    assert meta["step"] == 1 and meta["key"] == json.loads((warm / "artifact.json").read_text())["key"]
    assert sorted(p.name for p in warm.iterdir() if not p.name.startswith(".vlselect")) == [
        "adam_state.pt", "artifact.json", "lora", "run", "warmup.json", "warmup_indices.json"]
    cp = torch.load(warm / "run" / "checkpoint-1" / "trainable.pt")
    saved = load_file(str(warm / "lora" / "adapter_model.safetensors"))
    for key, t in saved.items():
        if "lora_B" in key:
            src = next(n for n in cp if n.replace(".default", "").endswith(key.split("base_model.model.")[-1]))
            assert torch.equal(t, cp[src])
