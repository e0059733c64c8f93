"""benchmarks/method_on_bench.py hands a method exactly the inputs the bench gave it (checked on a miniature bench)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlselect.bench import BenchConfig, run_bench

from bench_scripts import load_script, on_path


@pytest.fixture(scope="module")
def mini_bench(tmp_path_factory):
    import vlselect.bench.run as br

    out = tmp_path_factory.mktemp("mob") / "b"
    real = br.counted_sets
    br.counted_sets = lambda runs, files, margin: ["color", "count"]  # a miniature model learns no set
    try:
        cfg = BenchConfig.quick(size=120, eval_size=4, val_size=4, methods=("random", "tive", "less", "less_support",
                                                                             "icons_coincide"),
                                budgets=(0.25,), grad_dim=32, batch_size=16, lora_r=4, jobs=1,
                                zero_shot_reference=False)
        run_bench(out, cfg, log=lambda m: None)
    finally:
        br.counted_sets = real
    return out


@pytest.mark.parametrize("method", ["tive", "less", "less_support", "icons_coincide"])
def test_select_only_reproduces_the_bench_subsets(mini_bench, method, tmp_path, capsys):
    mob = load_script("method_on_bench")
    with on_path():
        code = mob.main(["--bench", str(mini_bench), "--method", method, "--select-only", "--out", str(tmp_path / "o")])
    assert code == 0 and "identical to the bench's subset" in capsys.readouterr().out
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["identical_to_bench"] == {"0.25": True}
    bench_sel = next(p for p in (mini_bench / "cache").glob("select-*")
                     if json.loads((p / "recipe.json").read_text())["method"] == method)
    assert np.array_equal(np.load(tmp_path / "o" / "indices_0.25.npy"), np.load(bench_sel / "indices_0.25.npy"))


def test_a_method_the_bench_did_not_run_is_said_and_a_folder_of_another_probe_refused(mini_bench, tmp_path, capsys):
    mob = load_script("method_on_bench")
    with on_path():
        assert mob.main(["--bench", str(mini_bench), "--method", "less_coincide", "--select-only",
                         "--out", str(tmp_path / "o")]) == 0
        assert "the bench ran no such selection" in capsys.readouterr().out
        with pytest.raises(SystemExit, match="holds the probe"):
            mob.main(["--bench", str(mini_bench), "--method", "less", "--select-only", "--out", str(tmp_path / "o")])
