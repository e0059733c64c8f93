"""The features CLI end to end: bad images, --skip-bad, SIGKILL-and-resume, torchrun with 2 processes (gloo),
--shard i/N + merge, info (issue 3)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures_models import tiny_llava, write_pool  # noqa: F401

from vlselect.cli import main
from vlselect.features import FeatureStore

VENV_BIN = Path(sys.executable).parent
FILES = ["activations.npy", "has_image.npy", "loss.npy", "perplexity.npy", "el2n.npy", "missing.npy",
         "sample_ids.json", "manifest.json"]


@pytest.fixture(scope="module")
def pool6(tmp_path_factory):
    return write_pool(tmp_path_factory.mktemp("pool6"), n=6)


def _args(model, pool, images, out, *extra):
    return ["features", "activations", "--model", str(model), "--pool", str(pool), "--images", str(images),
            "--out", str(out), "--losses", "--shard-size", "2", "--batch-size", "2", "--quiet", *extra]


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.update(extra)
    return env


def _main(args):
    """Run the CLI in-process; success exits 0 (typer standalone mode), errors exit 2."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code


def _same_bytes(a: Path, b: Path):
    for f in FILES:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_bad_image_exits_2_and_skip_bad_records_missing(tmp_path, tiny_llava, pool6, capsys):  # noqa: F811
    pool, images = pool6
    bad = tmp_path / "images"
    shutil.copytree(images, bad)
    (bad / "img1.png").unlink()
    (bad / "img4.png").write_bytes(b"garbage")
    assert _main(_args(tiny_llava, pool, bad, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "s1" in err and "img1.png" in err and "--skip-bad" in err
    assert _main(_args(tiny_llava, pool, bad, tmp_path / "out2", "--skip-bad")) == 0
    st = FeatureStore.open(tmp_path / "out2")
    assert st.missing().tolist() == [False, True, False, False, True, False]
    assert st.manifest["missing_rows"] == [1, 4] and st.manifest["n_missing"] == 2
    acts = st.array("activations")
    assert not acts[1].any() and acts[0].any()
    assert np.isnan(st.array("loss")[[1, 4]]).all() and np.isfinite(st.array("loss")[[0, 2, 3, 5]]).all()
    assert _main(["features", "info", str(tmp_path / "out2")]) == 0
    out = capsys.readouterr().out
    assert "n_missing         2" in out and "shape=(6, 192)" in out


def test_sigkill_resume_torchrun_and_shard_merge_are_byte_identical(tmp_path, tiny_llava, pool6):  # noqa: F811
    import json

    import torch

    pool, images = pool6
    cli = [str(VENV_BIN / "vlselect")]
    # 1. killed right after its first shard, then resumed
    res = tmp_path / "resumed"
    r = subprocess.run(cli + _args(tiny_llava, pool, images, res), env=_env(VLSELECT_TEST_KILL_AFTER_SHARDS="1"))
    assert r.returncode == -signal.SIGKILL
    assert not (res / "manifest.json").exists()
    plan = json.loads((res / "plan.json").read_text())
    st = FeatureStore.create(res, arrays=plan["arrays"], n_rows=6, shard_size=2, meta=plan["meta"],
                             sample_ids=json.loads((res / "sample_ids.json").read_text()), code=plan["code"])
    assert [s.index for s in st.pending()] == [1, 2]  # shard 0 is kept and will not be recomputed
    st.close()
    subprocess.run(cli + _args(tiny_llava, pool, images, res), env=_env(), check=True)
    # 2. an uninterrupted run with two processes under torchrun (gloo on CPU): ranks split the shards
    tr = tmp_path / "torchrun"
    subprocess.run([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "--no-python", *cli,
                    *_args(tiny_llava, pool, images, tr)], env=_env(), check=True, capture_output=True)
    _same_bytes(res, tr)
    # 3. SLURM-style --shard i/N into separate dirs (in-process, one thread like the subprocesses), then merge
    parts = [tmp_path / "p0", tmp_path / "p1"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i, p in enumerate(parts):
            assert _main(_args(tiny_llava, pool, images, p, "--shard", f"{i}/2")) == 0
            assert not (p / "manifest.json").exists()
    finally:
        torch.set_num_threads(threads)
    assert _main(["features", "merge", *map(str, parts), "--out", str(tmp_path / "merged")]) == 0
    _same_bytes(res, tmp_path / "merged")
