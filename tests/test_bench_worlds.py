"""The benchmark over several worlds: the mean table, its refusals, its files and the command's world seeds.

The mean is checked against numbers worked by hand, not against the code's own arithmetic."""

from __future__ import annotations

import copy
import json

import pytest

from vlselect.bench import BenchConfig, combine_worlds
from vlselect.errors import ConfigError


def _world(seed: int, rel: dict, learned=("color", "count"), zero=40.0) -> dict:
    """A finished single-world results dict as run_bench writes it (the fields combine_worlds reads)."""
    from dataclasses import asdict

    cfg = asdict(BenchConfig(seed=seed, methods=("random", "icons", "less", "coincide_icons")))
    return {"config": cfg, "sets": ["color", "count", "exist"], "chance": {"color": 20.0, "count": 25.0, "exist": 66.7},
            "learned_sets": list(learned), "relative_sets": list(learned),
            "reference": {"label": "full pool", "scores": {"color": 60.0 + seed, "count": 50.0, "exist": 50.0},
                          "per_seed": []},
            "zero_shot": {"scores": {"color": 20.0, "count": 30.0, "exist": 40.0}, "relative": zero},
            "rows": [{"method": m, "budget": b, "n_seeds": 3, "relative_mean": v, "relative_low": v - 5,
                      "relative_per_seed": [v - 2, v, v + 2],
                      "relative_high": v + 5, "scores": {"color": v / 2, "count": 10.0, "exist": 0.0}}
                     for (m, b), v in rel.items()],
            "costs": [{"stage": "train+eval random", "seconds": 10.0 + seed, "peak_rss_mb": 600.0 + seed, "runs": 9,
                       "cached": 0}],
            "wall_seconds": 100.0, "targets": [], "failures": [], "code_version": "0.1+abc"}


W0 = {("random", 0.05): 70.0, ("random", 0.1): 80.0, ("random", 0.2): 90.0, ("icons", 0.1): 75.0,
      ("icons", 0.2): 99.0, ("coincide_icons", 0.05): 72.0}
W1 = {("random", 0.05): 76.0, ("random", 0.1): 78.0, ("random", 0.2): 86.0, ("icons", 0.1): 89.0,
      ("icons", 0.2): 97.0, ("coincide_icons", 0.05): 80.0}


def test_mean_over_worlds_by_hand():
    c = combine_worlds([_world(0, W0), _world(1, W1)])
    rows = {(r["method"], r["budget"]): r for r in c["rows"]}
    assert rows[("random", 0.2)]["relative_mean"] == pytest.approx(88.0)  # (90 + 86) / 2
    assert rows[("icons", 0.1)]["relative_mean"] == pytest.approx(82.0)  # (75 + 89) / 2
    assert rows[("icons", 0.1)]["relative_per_world"] == [75.0, 89.0]
    assert rows[("icons", 0.1)]["relative_low"] is None  # no interval over two worlds
    assert c["worlds"] == [0, 1] and c["world_folders"] == ["world-0", "world-1"]
    assert c["reference"]["scores"]["color"] == pytest.approx(60.5)  # (60 + 61) / 2
    assert c["zero_shot"]["relative"] == pytest.approx(40.0)
    assert c["costs"] == [{"stage": "train+eval random", "seconds": 21.0, "peak_rss_mb": 601.0, "runs": 18,
                           "cached": 0}]
    got = {t["target"]: t for t in c["targets"]}
    # judged on the means: icons 82 vs random 79 at 10% (world 0 alone: 75 vs 80, not met)
    assert got["icons above random at 10%"]["met"] is True and got["icons above random at 10%"]["detail"] == "82.0 vs 79.0"
    assert got["random keeps 88-97% of the full pool at 20%"]["met"] is True  # 88.0, the band's edge
    assert got["random keeps at most 85% of the full pool at 5%"]["met"] is True  # 73.0
    assert got["coincide_icons at least as good as every single method at 5%"]["met"] is True  # 76.0 vs random 73.0
    assert got["the full pool learns at least 7 evaluation sets"]["met"] is False
    assert got["the full pool learns at least 7 evaluation sets"]["detail"].startswith("2 / 2 per world")


def test_worlds_that_differ_in_more_than_the_seed_are_refused():
    a, b = _world(0, W0), _world(1, W1)
    b["config"]["lr"] = 1e-3  # the default is 3e-4
    with pytest.raises(ConfigError, match="world-1: its recipe differs from world-0's in lr"):
        combine_worlds([a, b])
    with pytest.raises(ConfigError, match="same world"):
        combine_worlds([_world(0, W0), _world(0, W1)])
    with pytest.raises(ConfigError, match="at least two"):
        combine_worlds([_world(0, W0)])
    a, b = _world(0, W0), _world(1, W1)
    b["code_version"] = "0.1+def"  # world 1 run by other code: refused unless asked for, then named
    with pytest.raises(ConfigError, match="world-1: 0.1\\+def.*--allow-other-code"):
        combine_worlds([a, b])
    del a["code_version"]  # a results.json from before the version was recorded
    c = combine_worlds([a, b], allow_other_code=True)
    assert any("world 0: not recorded; world 1: 0.1+def" in n for n in c["notes"])


def test_worlds_of_other_methods_are_refused_unless_asked_then_only_the_shared_methods_count():
    a, b = _world(0, W0), _world(1, W1)
    b["config"]["methods"] = ["random", "coincide_icons", "less"]  # world 1 ran another list (icons left out)
    b["rows"] = [r for r in b["rows"] if r["method"] != "icons"]
    with pytest.raises(ConfigError, match="differs from world-0's in methods.*--allow-other-methods"):
        combine_worlds([a, b])
    c = combine_worlds([a, b], allow_other_methods=True)
    assert c["config"]["methods"] == ["random", "less", "coincide_icons"]  # world 0's order, those world 1 ran too
    assert {r["method"] for r in c["rows"]} == {"random", "coincide_icons"}
    assert c["incomplete"] == []  # a method a world did not run is not a failure
    rows = {(r["method"], r["budget"]): r for r in c["rows"]}
    assert rows[("random", 0.2)]["relative_mean"] == pytest.approx(88.0)  # (90 + 86) / 2, as with every method
    assert any("ran different methods" in n and "(random, less, coincide_icons)" in n
               and "world 1: random, coincide_icons, less" in n for n in c["notes"])
    # nothing is judged on a method one world did not run: its targets say "not judged"
    assert [t["met"] for t in c["targets"] if t["target"].startswith("icons ")] == [None, None]


def test_a_row_missing_from_one_world_is_left_out_and_named():
    w1 = dict(W1)
    del w1[("icons", 0.2)]  # e.g. its selection failed in world 1
    c = combine_worlds([_world(0, W0), _world(1, w1, learned=("color",))])
    assert ("icons", 0.2) not in {(r["method"], r["budget"]) for r in c["rows"]}
    assert c["incomplete"] == [{"method": "icons", "budget": 0.2, "worlds": [0]}]
    assert any("icons at 20% is missing from some worlds" in n for n in c["notes"])
    assert any("count different evaluation sets" in n for n in c["notes"])
    assert c["relative_sets"] == ["color", "count"] and c["learned_sets"] == ["color"]


def test_run_worlds_writes_each_world_and_the_mean(tmp_path, monkeypatch):
    import vlselect.bench.worlds as bw

    seen = []

    def fake_run_bench(out, cfg, log=None, command=None, overwrite=False):
        seen.append((out, cfg.seed))
        return _world(cfg.seed, {0: W0, 3: W1}[cfg.seed])

    monkeypatch.setattr(bw, "run_bench", fake_run_bench)
    c = bw.run_worlds(tmp_path / "b", BenchConfig(), [0, 3], log=lambda m: None)
    assert seen == [(tmp_path / "b" / "world-0", 0), (tmp_path / "b" / "world-3", 3)]
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    assert saved["worlds"] == [0, 3] and saved["rows"] == json.loads(json.dumps(c["rows"]))
    csv_rows = (tmp_path / "b" / "results.csv").read_text().splitlines()
    assert csv_rows[0].startswith("method,budget,relative_mean,world_0,world_3,color")
    assert any(r.startswith("random,0.2,88.00,90.00,86.00,") for r in csv_rows)  # mean, world 0, world 3
    assert "mean of 2 worlds" in (tmp_path / "b" / "report.html").read_text()
    with pytest.raises(ConfigError, match="at least two different"):
        bw.run_worlds(tmp_path / "c", BenchConfig(), [2, 2], log=lambda m: None)


def test_bench_command_runs_two_worlds_by_default_and_one_when_asked(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import vlselect.bench as vb
    import vlselect.bench.report_console as rc
    from vlselect.cli import app

    calls = []
    monkeypatch.setattr(vb, "run_bench", lambda out, cfg, overwrite=False: calls.append(("one", cfg.seed, cfg)) or {})
    monkeypatch.setattr(vb, "run_worlds", lambda out, cfg, worlds, overwrite=False:
                        calls.append(("worlds", list(worlds), cfg)) or {})
    monkeypatch.setattr(rc, "print_results", lambda results, console: None)
    monkeypatch.setattr(rc, "print_worlds", lambda results, console: None)
    runner = CliRunner()
    for args, want in (([], ("worlds", [0, 1])), (["--quick"], ("one", 0)), (["--seed", "3"], ("one", 3)),
                       (["--worlds", "2,5,7"], ("worlds", [2, 5, 7])), (["--worlds", "4"], ("one", 4))):
        res = runner.invoke(app, ["bench", "--out", str(tmp_path / "b"), *args])
        assert res.exit_code == 0, res.output
        assert calls[-1][:2] == want, args
    assert calls[0][2].methods == vb.DEFAULT_METHODS and "length" not in vb.DEFAULT_METHODS
    res = runner.invoke(app, ["bench", "--out", str(tmp_path / "b"), "--methods", "all", "--seed", "0"])
    assert res.exit_code == 0 and calls[-1][2].methods == vb.ALL_METHODS
    # every seed at 10% and 20% (where the targets are judged), the first seed alone at 5%, on 20,000 records
    assert (calls[0][2].size, calls[0][2].seed_budgets, calls[0][2].seeds) == (20000, (0.1, 0.2), (0, 1, 2))
    assert calls[0][2].clean_reference is False  # the oracle on the pool without wrong answers is asked for
    res = runner.invoke(app, ["bench", "--out", str(tmp_path / "b"), "--clean-reference", "--seed", "0"])
    assert res.exit_code == 0 and calls[-1][2].clean_reference is True
    res = runner.invoke(app, ["bench", "--out", str(tmp_path / "b"), "--seed-budgets", "0.05,0.1,0.2", "--seed", "0"])
    assert res.exit_code == 0 and calls[-1][2].seed_budgets == (0.05, 0.1, 0.2)
    n = len(calls)
    for bad, msg in ((["--seed", "1", "--worlds", "0,1"], "give one"), (["--worlds", "0,x"], "integers"),
                     (["--worlds", "1,1"], "different world seeds"),
                     (["--seed-budgets", "0.3"], "0.3 is not among the budgets run (0.05, 0.1, 0.2)"),
                     (["--budgets", "0.1", "--seed-budgets", "0.2"], "0.2 is not among"),
                     (["--seed-budgets", "ten"], "give fractions")):
        res = runner.invoke(app, ["bench", "--out", str(tmp_path / "b"), *bad])
        assert res.exit_code != 0 and msg in str(res.exception), bad
    assert len(calls) == n  # refused before any work


def test_across_worlds_script_refuses_a_mean_and_combines_worlds(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "across_worlds", Path(__file__).resolve().parents[1] / "benchmarks" / "across_worlds.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for s, rel in ((0, W0), (1, W1)):
        (tmp_path / f"w{s}").mkdir()
        (tmp_path / f"w{s}" / "results.json").write_text(json.dumps(_world(s, rel)))
    assert mod.main([str(tmp_path / "w0"), str(tmp_path / "w1"), "--json", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert {(r["method"], r["budget"]): r["relative_mean"] for r in m["rows"]}[("icons", 0.2)] == pytest.approx(98.0)
    (tmp_path / "mean").mkdir()
    (tmp_path / "mean" / "results.json").write_text(json.dumps(m))
    with pytest.raises(SystemExit, match="already a mean over worlds"):
        mod.main([str(tmp_path / "mean"), str(tmp_path / "w0")])
    bad = copy.deepcopy(_world(1, W1))
    bad["config"]["batch_size"] = 32
    (tmp_path / "w1" / "results.json").write_text(json.dumps(bad))
    with pytest.raises(SystemExit, match="batch_size"):
        mod.main([str(tmp_path / "w0"), str(tmp_path / "w1")])


def test_across_worlds_spread_by_hand():
    """Seeds [1, 3] and [5, 7]: within-world variance 2; world means 2 and 6 have variance 8, less 2 / 2 for the
    seeds' share of it: 7 between worlds."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "across_worlds", Path(__file__).resolve().parents[1] / "benchmarks" / "across_worlds.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = [{"rows": [{"method": "random", "budget": 0.2, "relative_per_seed": v},
                     {"method": "one_seed", "budget": 0.2, "relative_per_seed": [50.0]}]}
           for v in ([1.0, 3.0], [5.0, 7.0])]
    got = mod.spread(res)["0.2"]
    assert got["methods"] == 1  # the one-seed row has no seed variance: left out
    assert got["seed_sd"] == pytest.approx(2 ** 0.5) and got["world_sd"] == pytest.approx(7 ** 0.5)
    assert got["mean_sd"]["2x3"] == pytest.approx((7 / 2 + 2 / 6) ** 0.5)
    assert "vs_random" not in got  # random alone: no gap to measure
    # a method's gap to random, paired by seed: gaps [0, 2] and [4, 6] give the same components as above
    res = [{"rows": [{"method": "random", "budget": 0.1, "relative_per_seed": r},
                     {"method": "m", "budget": 0.1, "relative_per_seed": [a + d for a, d in zip(r, g)]}]}
           for r, g in (([10.0, 20.0], [0.0, 2.0]), ([30.0, 10.0], [4.0, 6.0]))]
    gap = mod.spread(res)["0.1"]["vs_random"]
    assert gap["methods"] == 1
    assert gap["seed_sd"] == pytest.approx(2 ** 0.5) and gap["world_sd"] == pytest.approx(7 ** 0.5)


def test_two_miniature_worlds_end_to_end_and_a_rerun_with_other_input_recomputes(tmp_path):
    """Two real (miniature) worlds: each gets its own pool and folder, the mean is made from their files, and a
    rerun into the same folder with another world size recomputes instead of handing back the first run."""
    import dataclasses

    from vlselect.bench import run_worlds

    cfg = BenchConfig.quick(size=120, eval_size=6, val_size=4, pretrain_size=64, methods=("random", "coincide"),
                            budgets=(0.25,), epochs=1, grad_dim=32, batch_size=16, lora_r=4, jobs=1,
                            max_new_tokens=4, model_size="xs", base="captions", modules_to_save=("vision_tower",))
    out = tmp_path / "b"
    c = run_worlds(out, cfg, [0, 1], log=lambda m: None)
    worlds = [json.loads((out / f"world-{w}" / "results.json").read_text()) for w in (0, 1)]
    assert [w["config"]["seed"] for w in worlds] == [0, 1]
    pools = [json.loads(next((out / f"world-{w}" / "cache").glob("world-*/w/pool.json")).read_text()) for w in (0, 1)]
    assert len(pools[0]) == len(pools[1]) == 120 and pools[0] != pools[1]  # two draws, not one world twice
    # benchmarks/count_prior.py reads the same folders: the full pool's counting rows, counted here by another
    # path (the records whose first question is one of the world's "How many objects" phrasings)
    import importlib.util
    from pathlib import Path

    from vlselect.world.vocab import QUESTIONS

    import sys

    bench_dir = str(Path(__file__).resolve().parents[1] / "benchmarks")
    spec = importlib.util.spec_from_file_location("count_prior", bench_dir + "/count_prior.py")
    cp = importlib.util.module_from_spec(spec)
    sys.path.insert(0, bench_dir)  # the script imports its sibling _bench_cache
    try:
        spec.loader.exec_module(cp)
    finally:
        sys.path.remove(bench_dir)
    w0 = cp.read_world(out / "world-0")
    first_q = [r["conversations"][0]["value"].replace("<image>", "").strip().split("\n")[0] for r in pools[0]]
    full = [r for r in w0["runs"] if r["method"] == "full pool"]
    assert full and sum(full[0]["rows"].values()) == sum(q in QUESTIONS["count_all"] for q in first_q) > 0
    assert {(r["method"], r["budget"]) for r in w0["runs"]} >= {("random", 0.25), ("coincide", 0.25)}
    assert all(sum(r["questions"].values()) > 0 for r in w0["runs"])
    for r in c["rows"]:
        per = [next(x for x in w["rows"] if (x["method"], x["budget"]) == (r["method"], r["budget"]))["relative_mean"]
               for w in worlds]
        assert r["relative_per_world"] == per and r["relative_mean"] == pytest.approx(sum(per) / 2)
    assert json.loads((out / "results.json").read_text())["worlds"] == [0, 1]
    c2 = run_worlds(out, dataclasses.replace(cfg, size=150), [0, 1], log=lambda m: None)
    assert c2["config"]["size"] == 150
    for w in (0, 1):
        r = json.loads((out / f"world-{w}" / "results.json").read_text())
        assert r["config"]["size"] == 150 and sum(r["composition"]["pool"].values()) == 150


def test_target_margins_against_the_spread_by_hand():
    """Each target's margin beside the sd of its number, worked by hand."""
    from vlselect.bench.run import check_targets
    from vlselect.bench.spread import sd_of_mean, variance_components

    # two worlds (the fixtures): every row's seeds are v-2, v, v+2 (seed variance 4); icons' gap to random at 10%
    # is -5 in every seed of world 0 (75 vs 80) and +11 in world 1 (89 vs 78): seed variance 0, world means -5 and
    # 11, variance 128, between worlds 128 - 0/3; sd of a two-world x three-seed mean sqrt(128 / 2) = 8
    c = combine_worlds([_world(0, W0), _world(1, W1)])
    gap = c["spread"]["0.1"]["vs_random"]
    assert gap["methods"] == 1 and gap["seed_var"] == pytest.approx(0.0) and gap["world_var"] == pytest.approx(128.0)
    got = {t["target"]: t for t in c["targets"]}
    t = got["icons above random at 10%"]
    assert t["margin"] == pytest.approx(3.0) and t["sd"] == pytest.approx(8.0) and t["resolved"] is False
    # random at 20%: 90 and 86 (world means), seeds add variance 4: between worlds 8 - 4/3 over the one method
    # there with icons (99, 97): icons' world variance 2 - 4/3; pooled (20/3 + 2/3) / 2 = 11/3; seed 4
    s20 = c["spread"]["0.2"]
    assert s20["world_var"] == pytest.approx(11 / 3) and s20["seed_var"] == pytest.approx(4.0)
    band = got["random keeps 88-97% of the full pool at 20%"]
    assert band["margin"] == pytest.approx(0.0)  # 88.0 is on the band's lower edge
    assert band["sd"] == pytest.approx((11 / 3 / 2 + 4 / 6) ** 0.5) and band["resolved"] is False
    assert "margin" not in got["the full pool learns at least 7 evaluation sets"]

    # one world: the seeds' spread only. random 78, 80, 82 (variance 4), icons 80, 84, 88 (16): a score's seed
    # variance 10; icons' gap 2, 4, 6 (variance 4), sd of a three-seed mean sqrt(4 / 3)
    one = {"rows": [{"method": "random", "budget": 0.1, "relative_mean": 80.0, "relative_per_seed": [78.0, 80.0, 82.0]},
                    {"method": "icons", "budget": 0.1, "relative_mean": 84.0, "relative_per_seed": [80.0, 84.0, 88.0]}]}
    sp = variance_components([one])
    assert sp["0.1"]["seed_var"] == pytest.approx(10.0) and sp["0.1"]["world_var"] is None
    assert sd_of_mean(sp["0.1"], 1, 3) == pytest.approx((10 / 3) ** 0.5)
    t = {x["target"]: x for x in check_targets(one, spread=sp)}["icons above random at 10%"]
    assert t["margin"] == pytest.approx(4.0) and t["sd"] == pytest.approx((4 / 3) ** 0.5) and t["resolved"] is True
    assert "sd" not in {x["target"]: x for x in check_targets(one)}["icons above random at 10%"]  # no spread given


def test_console_targets_show_the_margin_or_say_why_there_is_none():
    from rich.console import Console

    from vlselect.bench.report_console import _print_targets

    with_sd = [{"target": "icons above random at 10%", "met": True, "detail": "84.0 vs 80.0", "margin": 4.0,
                "sd": 3.0, "resolved": False}]
    con = Console(record=True, width=200)
    _print_targets(with_sd, "targets", con, worlds=2)
    out = con.export_text()
    assert "+4.0 ± 6.0 (within noise)" in out and "between its worlds" in out and "No margins" not in out
    con = Console(record=True, width=200)
    _print_targets([{k: v for k, v in with_sd[0].items() if k in ("target", "met", "detail")}], "targets", con)
    out = con.export_text()
    assert "No margins" in out and "┃ margin" not in out and "(within noise)" not in out
