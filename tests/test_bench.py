"""The benchmark's cache and cost accounting, and one miniature end-to-end run of ``vlselect bench``."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from vlselect.bench import BenchConfig, StageCache, recipe_key, run_bench


def test_recipe_key_is_stable_and_order_free():
    assert recipe_key({"a": 1, "b": [1, 2]}) == recipe_key({"b": [1, 2], "a": 1})
    assert recipe_key({"a": 1}) != recipe_key({"a": 2})
    assert len(recipe_key({})) == 12


def test_stage_runs_once_and_a_new_recipe_runs_again(tmp_path):
    calls = []

    def stage(d):
        calls.append(d)
        (d / "x.txt").write_text("hi")
        return {"value": len(calls)}

    cache = StageCache(tmp_path, log=lambda m: None)
    f1, r1 = cache.run("s", {"k": 1}, stage)
    f2, r2 = cache.run("s", {"k": 1}, stage)
    f3, r3 = cache.run("s", {"k": 2}, stage)
    assert len(calls) == 2 and f1 == f2 != f3
    assert r1 == r2 == {"value": 1} and r3 == {"value": 2}
    # a fresh process (new cache object) sees the finished stage too
    again = StageCache(tmp_path, log=lambda m: None)
    assert again.run("s", {"k": 1}, stage)[1] == {"value": 1} and len(calls) == 2
    assert json.loads((f1 / "recipe.json").read_text()) == {"k": 1}


def test_an_interrupted_stage_is_run_again(tmp_path):
    cache = StageCache(tmp_path, log=lambda m: None)

    def boom(d):
        (d / "partial").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.run("s", {"k": 1}, boom)
    assert not (cache.folder("s", {"k": 1}) / "done.json").exists()
    assert cache.run("s", {"k": 1}, lambda d: 7)[1] == 7


def test_cost_table_sums_time_and_keeps_peak_memory_per_group(tmp_path):
    cache = StageCache(tmp_path, log=lambda m: None)
    cache.record("run", {"i": 1}, {"r": 1}, seconds=2.0, peak_rss_mb=100.0, group="train random")
    cache.record("run", {"i": 2}, {"r": 2}, seconds=3.0, peak_rss_mb=80.0, group="train random")
    cache.record("run", {"i": 3}, {"r": 3}, seconds=1.0, peak_rss_mb=50.0, group="train coincide")
    table = {r["stage"]: r for r in cache.cost_table()}
    assert table["train random"]["seconds"] == 5.0 and table["train random"]["peak_rss_mb"] == 100.0
    assert table["train random"]["runs"] == 2 and table["train coincide"]["seconds"] == 1.0
    # recorded stages are cached for the next run, with the cost measured where they ran
    nxt = StageCache(tmp_path, log=lambda m: None)
    assert nxt.run("run", {"i": 2}, lambda d: 0)[1] == {"r": 2}
    assert nxt.cost_table()[0]["seconds"] == 3.0 and nxt.cost_table()[0]["cached"] == 1


@pytest.mark.slow
def test_miniature_bench_end_to_end_and_a_second_run_reuses_every_stage(tmp_path):
    cfg = BenchConfig.quick(size=120, eval_size=6, val_size=4, pretrain_size=64, methods=("random", "coincide", "tive"),
                            budgets=(0.25,), epochs=1, grad_dim=32, batch_size=16, lora_r=4, jobs=1,
                            max_new_tokens=4, model_size="xs", base="captions", modules_to_save=("vision_tower",))
    logs: list[str] = []
    res = run_bench(tmp_path / "b", cfg, log=logs.append)
    out = tmp_path / "b"
    assert {r["method"] for r in res["rows"]} == {"random", "coincide", "tive"}
    assert all(r["budget"] == 0.25 for r in res["rows"])
    # every subset has its budget's size and its indices come from the pool
    files = sorted((out / "cache").glob("select-*/indices_0.25.npy"))
    assert len(files) == 3
    for f in files:
        idx = np.load(f)
        assert len(idx) == 30 and len(set(idx.tolist())) == 30 and idx.min() >= 0 and idx.max() < 120
    comp = res["composition"]["subsets"]
    assert set(comp) == {"random@0.25", "coincide@0.25", "tive@0.25"}
    assert all(sum(c.values()) == 30 for c in comp.values()) and sum(res["composition"]["pool"].values()) == 120
    assert res["reference"]["label"].startswith("full pool") and set(res["sets"]) == set(res["reference"]["scores"])
    stages = {c["stage"] for c in res["costs"]}
    assert {"world", "base", "activations", "gradients", "select coincide", "train+eval full pool"} <= stages
    # TIVE's self-attention gradients come from the gradient stage's one pass, in a store of their own
    (gdir,) = (out / "cache").glob("gradients-*")
    from vlselect.features.store import FeatureStore

    every, attn = FeatureStore.open(gdir / "store"), FeatureStore.open(gdir / "store_self_attn")
    assert (every.manifest["params"], attn.manifest["params"]) == ("lora", "self_attn")
    assert attn.manifest["num_params"] < every.manifest["num_params"] and attn.finished and every.finished
    assert set(res["overlap"]["methods"]) == {"random", "coincide", "tive"} and len(res["overlap"]["jaccard"]) == 3
    assert all(res["overlap"]["jaccard"][i][i] == 1.0 for i in range(3))
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(res["rows"]))
    from vlselect.artifact import code_version

    assert saved["code_version"] == code_version()  # what combining worlds checks
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,budget,n_seeds,relative_mean") and len(csv_lines) == 1 + 1 + 1 + 3
    assert csv_lines[2].startswith("base model (zero-shot),0.0,1,")
    page = (out / "report.html").read_text()
    assert "coincide" in page and "<svg" in page
    # second run: nothing recomputed, same table
    again = run_bench(out, cfg, log=logs.append)
    assert all(c["cached"] == c["runs"] for c in again["costs"])
    assert [r["relative_mean"] for r in again["rows"]] == [r["relative_mean"] for r in res["rows"]]
    assert res["failures"] == [] and again["failures"] == []
    # a method that refuses its input is recorded in results.json (and the rest of the table is still made)
    import vlselect.select as select_pkg
    from vlselect.errors import SelectionError

    real = select_pkg.run_method

    def refusing(name, *a, **kw):
        if name == "length":
            raise SelectionError("length: refused for the test")
        return real(name, *a, **kw)

    select_pkg.run_method = refusing
    try:
        third = run_bench(out, dataclasses.replace(cfg, methods=("random", "coincide", "tive", "length")),
                          log=logs.append)
    finally:
        select_pkg.run_method = real
    assert third["failures"] == [{"stage": "select", "method": "length",
                                  "error": "SelectionError: length: refused for the test"}]
    assert {r["method"] for r in third["rows"]} == {"random", "coincide", "tive"}
    assert json.loads((out / "results.json").read_text())["failures"] == third["failures"]


def test_miniature_bench_on_the_foundation_with_the_clean_reference(tmp_path):
    """The default base: the shipped foundation (no pre-training stage, its fingerprint in every key), LoRA with the
    vision tower frozen, and the clean-pool reference run on exactly the rows whose answer is right."""
    cfg = BenchConfig.quick(size=120, eval_size=4, val_size=4, methods=("random",), budgets=(0.25,), grad_dim=32,
                            batch_size=16, lora_r=4, jobs=1, clean_reference=True)
    assert cfg.base == "foundation" and cfg.adapter == "lora" and cfg.modules_to_save == ()
    res = run_bench(tmp_path / "b", cfg, log=lambda m: None)
    stages = {c["stage"] for c in res["costs"]}
    assert "base" not in stages and "captions" not in stages and "train+eval clean pool" in stages
    pool = json.loads(next((tmp_path / "b" / "cache").glob("world-*/w/pool.json")).read_text())
    correct = [i for i, r in enumerate(pool) if r["meta"]["correct"]]
    assert 0 < len(correct) < len(pool)
    clean_idx = np.load(next((tmp_path / "b" / "cache").glob("clean-*/indices.npy")))
    assert clean_idx.tolist() == correct
    assert res["clean_pool"]["fraction"] == round(len(correct) / len(pool), 4)
    assert {r["method"] for r in res["rows"]} == {"random"}  # the reference is not a method row
    assert any("foundation" in n for n in res["notes"])
    # the zero-shot reference: the foundation's own answers, no training run (checked against evaluating it here)
    from vlselect.bench.run import ZERO_SHOT
    from vlselect.evaluate import evaluate
    from vlselect.models.foundation import foundation_path

    world = next((tmp_path / "b" / "cache").glob("world-*/w"))
    direct = evaluate(foundation_path(), sorted(str(f) for f in (world / "eval").glob("*.json")), str(world / "images"),
                      tmp_path / "direct", progress=False, max_new_tokens=cfg.max_new_tokens)
    assert res["zero_shot"]["scores"] == {k: v["score"] for k, v in direct["sets"].items()}
    zdirs = [d for d in (tmp_path / "b" / "cache").glob("run-*")
             if json.loads((d / "recipe.json").read_text())["method"] == ZERO_SHOT]
    assert len(zdirs) == 1 and not (zdirs[0] / "train").exists() and "train+eval " + ZERO_SHOT in stages


def test_bench_refuses_a_world_at_another_image_size_than_the_foundation(tmp_path):
    from vlselect.errors import ConfigError

    cfg = BenchConfig.quick(size=60, eval_size=2, val_size=2, methods=("random",), budgets=(0.5,), image_size=32)
    with pytest.raises(ConfigError, match="24 px"):
        run_bench(tmp_path / "b", cfg, log=lambda m: None)


def test_chance_levels_and_learned_sets_by_hand(tmp_path):
    from vlselect.bench.run import chance_levels, learned_sets

    a = tmp_path / "a.json"
    a.write_text(json.dumps({"name": "colour", "metric": "exact_match", "samples": [
        {"answers": ["Red"]}, {"answers": ["red "]}, {"answers": ["blue"]}, {"answers": ["green"]}]}))
    g = tmp_path / "g.json"
    g.write_text(json.dumps({"name": "box", "metric": "iou", "samples": [{"answers": ["[0, 0, 1, 1]"]}]}))
    chance = chance_levels([a, g])
    assert chance == {"colour": 50.0, "box": 0.0}  # 'Red' and 'red ' are one answer: 2 of 4
    assert learned_sets({"colour": 59.0, "box": 10.0}, chance, 10.0) == ["box"]
    assert learned_sets({"colour": 60.0, "box": 9.9}, chance, 10.0) == ["colour"]
    # yes/no is scored by F1 of "yes": always answering yes on a balanced set scores 2*0.5/1.5 = 66.7, not 50
    y = tmp_path / "y.json"
    y.write_text(json.dumps({"name": "exist", "metric": "yes_no", "samples": [
        {"answers": ["yes"]}, {"answers": ["no"]}, {"answers": ["Yes"]}, {"answers": ["no"]}]}))
    from vlselect.evaluate.metrics import yes_no_scores

    always_yes = yes_no_scores(["yes"] * 4, ["yes", "no", "yes", "no"])["f1"]
    assert chance_levels([y]) == {"exist": pytest.approx(always_yes)} and always_yes == pytest.approx(200 / 3)
    assert learned_sets({"exist": 70.0}, chance_levels([y]), 10.0) == []


def test_targets_are_judged_from_the_rows():
    from vlselect.bench.run import check_targets

    rows = [{"method": m, "budget": b, "relative_mean": v} for m, b, v in [
        ("random", 0.05, 80.0), ("random", 0.1, 85.0), ("random", 0.2, 90.0),
        ("coincide", 0.1, 86.0), ("coincide", 0.2, 89.0), ("icons", 0.1, 95.0), ("icons", 0.2, 99.0),
        ("coincide_icons", 0.05, 81.0), ("coincide_icons", 0.1, 96.0), ("coincide_icons", 0.2, 98.5)]]
    got = {t["target"]: t["met"] for t in check_targets({"rows": rows})}
    assert got["coincide above random at 10%"] is True and got["coincide above random at 20%"] is False
    assert got["icons above random at 20%"] is True and got["tive above random at 10%"] is None
    assert got["best method at 20% reaches 98% of the full pool"] is True  # icons, 99
    assert got["coincide_icons at least as good as every single method at 5%"] is True  # 81 > random 80
    assert got["coincide_icons at least as good as every single method at 10%"] is True  # 96 > icons 95
    assert got["coincide_icons at least as good as every single method at 20%"] is False  # 98.5 < icons 99
    tie = rows + [{"method": "tive", "budget": 0.1, "relative_mean": 96.0}]  # the issue: "at least as good"
    assert {t["target"]: t["met"] for t in check_targets({"rows": tie})}[
        "coincide_icons at least as good as every single method at 10%"] is True  # 96 = tive 96
    assert got["random keeps at most 85% of the full pool at 5%"] is True  # 80
    assert got["random keeps 88-97% of the full pool at 20%"] is True  # 90
    assert "the full pool learns at least 7 evaluation sets" not in got  # no learned sets in the input: not judged
    rows[0]["relative_mean"], rows[2]["relative_mean"] = 85.5, 97.5
    seven = {"learned_sets": list("abcdefg")}
    got = {t["target"]: t["met"] for t in check_targets({"rows": rows, **seven})}
    assert got["random keeps at most 85% of the full pool at 5%"] is False  # 85.5
    assert got["random keeps 88-97% of the full pool at 20%"] is False  # 97.5: above the band
    assert got["the full pool learns at least 7 evaluation sets"] is True
    per_world = {"learned_per_world": [list("abcdefg"), list("abcdef")]}  # every world must learn seven
    got = {t["target"]: t["met"] for t in check_targets({"rows": rows[1:], **per_world})}
    assert got["the full pool learns at least 7 evaluation sets"] is False
    assert got["random keeps at most 85% of the full pool at 5%"] is None  # no 5% row (the quick form)


def test_generation_length_covers_every_evaluation_answer(tmp_path):
    """A box answer is 21 tokens plus the end of turn: with the old max_new_tokens=16 every grounding answer was
    cut and scored 0 (a defect of the bench, found in issue 12)."""
    from transformers import AutoTokenizer

    from vlselect.models.foundation import foundation_path
    from vlselect.world import make_world

    w = make_world(tmp_path / "w", size=20, seed=0, eval_size=20, image_size=24)
    tok = AutoTokenizer.from_pretrained(str(foundation_path()))
    longest = 0
    for f in (w.out_dir / "eval").glob("*.json"):
        for s in json.loads(f.read_text())["samples"]:
            for a in s["answers"]:
                longest = max(longest, len(tok(str(a) + "</s>", add_special_tokens=False)["input_ids"]))
    assert longest >= 20  # the boxes
    for cfg in (BenchConfig(), BenchConfig.quick()):
        assert cfg.max_new_tokens >= longest


def test_bench_command_passes_the_fine_tuning_batch_size(tmp_path, monkeypatch):
    """``vlselect bench --batch-size N`` reaches the runs' recipe (BenchConfig.batch_size); the default is 8 (the
    shipped foundation leaves answer formats to the fine-tune, which a subset learns only with enough steps)."""
    from typer.testing import CliRunner

    import vlselect.bench as vb
    import vlselect.bench.report_console as rc
    from vlselect.cli import app

    seen = []
    monkeypatch.setattr(vb, "run_bench", lambda out, cfg, overwrite=False: seen.append(cfg) or {})
    monkeypatch.setattr(vb, "run_worlds", lambda out, cfg, worlds, overwrite=False: seen.append(cfg) or {})
    monkeypatch.setattr(rc, "print_results", lambda results, console: None)
    monkeypatch.setattr(rc, "print_worlds", lambda results, console: None)
    runner = CliRunner()
    for args, want in (([], 8), (["--batch-size", "32"], 32), (["--quick", "--batch-size", "4"], 4)):
        res = runner.invoke(app, ["bench", "--out", str(tmp_path / "b"), *args])
        assert res.exit_code == 0, res.output
        assert seen[-1].batch_size == want
    assert seen[-1].size == 4000  # --quick kept
    res = runner.invoke(app, ["bench", "--out", str(tmp_path / "b"), "--batch-size", "0"])
    assert res.exit_code != 0 and not seen[3:]


def test_counted_sets_by_hand(tmp_path):
    """The sets the table counts: learned by the full pool (mean over its seeds, 10 points above chance), else every
    set the full pool scores on."""
    from vlselect.bench.run import counted_sets

    a = tmp_path / "a.json"  # chance 50: two of four answers are 'red'
    a.write_text(json.dumps({"name": "colour", "metric": "exact_match", "samples": [
        {"answers": ["red"]}, {"answers": ["red"]}, {"answers": ["blue"]}, {"answers": ["green"]}]}))
    g = tmp_path / "g.json"  # IoU: chance 0
    g.write_text(json.dumps({"name": "box", "metric": "iou", "samples": [{"answers": ["[0, 0, 1, 1]"]}]}))
    runs = [{"scores": {"colour": 58.0, "box": 4.0}}, {"scores": {"colour": 64.0, "box": 8.0}}]  # means 61, 6
    assert counted_sets(runs, [a, g], 10.0) == ["colour"]
    assert counted_sets(runs, [a, g], 12.0) == ["box", "colour"]  # none learned: every set with a score
    assert counted_sets([{"scores": {"colour": 0.0, "box": 4.0}}], [a, g], 10.0) == ["box"]


def test_validation_targets_are_the_counted_sets_and_the_selection_records_them(tmp_path, monkeypatch):
    """ICONS and the composites read the validation gradients of the sets the table counts only (decided after the
    full-pool runs), and their selection stage's recipe names those sets; ``val_targets="all"`` gives them every
    set, as the bench did before."""
    import vlselect.bench.run as br
    import vlselect.select as select_pkg

    seen: dict[str, list[str]] = {}
    given: dict[str, dict] = {}
    real = select_pkg.run_method

    params: dict[str, dict] = {}

    def spy(name, inputs, *a, **kw):
        seen[name] = sorted(k for k in inputs if k.startswith("val/"))
        given[name] = inputs
        params[name] = dict(kw.get("params") or {})
        return real(name, inputs, *a, **kw)

    monkeypatch.setattr(br, "run_method", spy, raising=False)
    monkeypatch.setattr(select_pkg, "run_method", spy)
    monkeypatch.setattr(br, "counted_sets", lambda runs, files, margin: ["color", "count"])
    cfg = BenchConfig.quick(size=120, eval_size=4, val_size=4,
                            methods=("random", "icons", "icons_coincide", "less_tive", "less_support", "tive",
                                     "less_tive_support", "less_coincide"),
                            budgets=(0.25,), grad_dim=32, batch_size=16, lora_r=4, jobs=1, zero_shot_reference=False)
    res = run_bench(tmp_path / "b", cfg, log=lambda m: None)
    assert seen["icons"] == seen["icons_coincide"] == seen["less_tive"] == seen["less_support"] == [
        "val/color", "val/count"] == seen["less_tive_support"] == seen["less_coincide"]
    # less_coincide: LESS's gradients (every LoRA, as ICONS) and COINCIDE's activations with the bench's K
    assert np.array_equal(given["less_coincide"]["train"], given["icons"]["train"])
    assert np.array_equal(given["less_coincide"]["features"], given["icons_coincide"]["features"])
    assert params["less_coincide"]["n_clusters"] == params["icons_coincide"]["n_clusters"] == round((120 / 2) ** 0.5)
    # less_support: LESS's gradients, and the world card's support task (captions) keeps its pool share
    assert params["less_support"] == {"support": "caption"} == params["less_tive_support"]
    assert np.array_equal(given["less_support"]["train"], given["icons"]["train"])
    assert seen["random"] == seen["tive"] == []
    # less_tive: LESS's mix from every LoRA's gradients (ICONS's train), instance values from TIVE's own
    assert np.array_equal(given["less_tive"]["train"], given["icons"]["train"])
    assert np.array_equal(given["less_tive"]["instance"], given["tive"]["train"])
    assert np.array_equal(given["less_tive_support"]["instance"], given["tive"]["train"])
    assert np.array_equal(given["less_tive_support"]["train"], given["icons"]["train"])
    assert not np.array_equal(given["tive"]["train"], given["icons"]["train"])
    recipes = {json.loads((d / "recipe.json").read_text())["method"]: json.loads((d / "recipe.json").read_text())
               for d in (tmp_path / "b" / "cache").glob("select-*")}
    assert recipes["icons"]["targets"] == ["color", "count"] and "targets" not in recipes["random"]
    assert [r["method"] for r in res["rows"]] == ["random", "icons", "icons_coincide", "less_tive", "less_support",
                                                  "tive", "less_tive_support", "less_coincide"]
    pool = res["composition"]["pool"]
    for m in ("less_support", "less_tive_support"):
        sub = res["composition"]["subsets"][f"{m}@0.25"]
        assert sub.get("caption", 0) == int(np.floor(pool["caption"] / sum(pool.values()) * sum(sub.values()) + 0.5))
    every = sorted(f"val/{p.stem}" for p in next((tmp_path / "b" / "cache").glob("world-*/w/eval")).glob("*.json"))
    run_bench(tmp_path / "b", dataclasses.replace(cfg, val_targets="all"), log=lambda m: None)
    assert len(every) == 9 and seen["icons"] == every


def test_bench_command_passes_the_validation_targets(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import vlselect.bench as vb
    import vlselect.bench.report_console as rc
    from vlselect.cli import app

    seen = []
    monkeypatch.setattr(vb, "run_bench", lambda out, cfg, overwrite=False: seen.append(cfg) or {})
    monkeypatch.setattr(vb, "run_worlds", lambda out, cfg, worlds, overwrite=False: seen.append(cfg) or {})
    monkeypatch.setattr(rc, "print_results", lambda results, console: None)
    monkeypatch.setattr(rc, "print_worlds", lambda results, console: None)
    runner = CliRunner()
    for args, want in (([], "counted"), (["--val-targets", "all"], "all")):
        res = runner.invoke(app, ["bench", "--out", str(tmp_path / "b"), *args])
        assert res.exit_code == 0, res.output
        assert seen[-1].val_targets == want
    res = runner.invoke(app, ["bench", "--out", str(tmp_path / "b"), "--val-targets", "learned"])
    assert res.exit_code != 0 and "counted or all" in str(res.exception) and len(seen) == 2
    assert seen[-1].lr == 3e-4 == BenchConfig().lr  # the default is the config's
    res = runner.invoke(app, ["bench", "--out", str(tmp_path / "b"), "--lr", "1e-3", "--worlds", "0"])
    assert res.exit_code == 0, res.output
    assert seen[-1].lr == 1e-3 and len(seen) == 3
    res = runner.invoke(app, ["bench", "--out", str(tmp_path / "b"), "--lr", "0"])
    assert res.exit_code != 0 and "positive learning rate" in str(res.exception) and len(seen) == 3
    assert seen[-1].projector_lr == 2e-5 == BenchConfig().projector_lr  # LLaVA-1.5's mm_projector_lr
    res = runner.invoke(app, ["bench", "--out", str(tmp_path / "b"), "--projector-lr", "3e-4", "--worlds", "0"])
    assert res.exit_code == 0, res.output
    assert seen[-1].projector_lr == 3e-4 and seen[-1].lr == 3e-4
    assert seen[-1].lora_r == 16 == BenchConfig().lora_r
    res = runner.invoke(app, ["bench", "--out", str(tmp_path / "b"), "--lora-r", "4", "--worlds", "0"])
    assert res.exit_code == 0 and seen[-1].lora_r == 4, res.output
    res = runner.invoke(app, ["bench", "--out", str(tmp_path / "b"), "--projector-lr", "-1"])
    assert res.exit_code != 0 and "positive learning rate" in str(res.exception) and len(seen) == 5
    assert seen[-1].lora_targets is None  # LoRA on every linear layer, as the bench always trained it
    res = runner.invoke(app, ["bench", "--out", str(tmp_path / "b"), "--lora-targets", "gate_proj, up_proj,down_proj",
                              "--worlds", "0"])
    assert res.exit_code == 0 and seen[-1].lora_targets == ("gate_proj", "up_proj", "down_proj"), res.output
    res = runner.invoke(app, ["bench", "--out", str(tmp_path / "b"), "--lora-targets", "mlp"])
    assert res.exit_code != 0 and "'mlp'" in str(res.exception) and len(seen) == 6
    res = runner.invoke(app, ["bench", "--out", str(tmp_path / "b"), "--lora-targets", "up_proj", "--adapter", "full"])
    assert res.exit_code != 0 and "--adapter lora only" in str(res.exception) and len(seen) == 6


def test_bench_run_gives_the_projector_its_own_rate(tmp_path, monkeypatch):
    """``projector_lr`` (2e-5 by default) reaches train_lora; ``None`` trains the projector at ``lr`` and those
    runs' cache keys are those of before the option (no projector_lr key in the recipe)."""
    import vlselect.bench.run as br

    got = []

    class Res:
        final_dir = str(tmp_path)
        samples, losses, padding = 0, [], None

    monkeypatch.setattr("vlselect.train.train_lora", lambda *a, **kw: got.append(kw) or Res())
    monkeypatch.setattr("vlselect.evaluate.evaluate", lambda *a, **kw: {"sets": {}})
    monkeypatch.setattr(br, "_scores", lambda results: {})
    job = {"out": str(tmp_path / "o"), "base": "b", "pool": "p", "images": "i", "eval_files": [], "indices": None,
           "r": 16, "lr": 1e-3, "projector_lr": 1e-3, "epochs": 1, "batch_size": 8, "length_group": 4, "seed": 0,
           "max_new_tokens": 8, "adapter": "lora", "modules_to_save": [], "zero_shot": False}
    for extra, want in (({}, 1e-3), ({"projector_lr": 2e-5}, 2e-5)):
        assert br._train_and_eval({**job, **extra})["scores"] == {}
        assert got[-1]["projector_lr"] == want and got[-1]["lr"] == 1e-3
        assert got[-1]["target_modules"] is None  # train_lora's default: every linear layer of the language model
    br._train_and_eval({**job, "target_modules": br._target_modules(BenchConfig(lora_targets=("up_proj",)))})
    assert got[-1]["target_modules"].endswith(r"\.(up_proj)$")
    assert br._target_modules(BenchConfig()) is None
    assert br._projector_recipe(BenchConfig(projector_lr=None, lora_targets=("up_proj",))) == {"lora_targets": ["up_proj"]}
    assert BenchConfig().projector_rate() == 2e-5 == BenchConfig(lr=1e-3).projector_rate()  # the default's own rate
    assert BenchConfig(projector_lr=None).projector_rate() == 3e-4  # None: at lr, the bench before 2026-12-06
    assert BenchConfig(projector_lr=None, lr=1e-3).projector_rate() == 1e-3
    assert br._projector_recipe(BenchConfig(projector_lr=None)) == {}  # those runs keep their keys
    assert br._projector_recipe(BenchConfig()) == {"projector_lr": 2e-5}
    from vlselect.errors import ConfigError

    with pytest.raises(ConfigError, match="val_targets='some'"):  # before any work
        run_bench(tmp_path / "c", BenchConfig.quick(val_targets="some"), log=lambda m: None)
    assert not (tmp_path / "c" / "cache").exists() or not any((tmp_path / "c" / "cache").iterdir())


def test_without_a_counted_set_the_targeted_methods_fail_with_a_reason(tmp_path, monkeypatch):
    """When the full pool gives no counted set (its runs failed), ICONS gets no silent empty target: the failure is
    recorded with the fix, and the other methods' rows are still made."""
    import vlselect.bench.run as br

    monkeypatch.setattr(br, "counted_sets", lambda runs, files, margin: [])
    cfg = BenchConfig.quick(size=120, eval_size=4, val_size=4, methods=("random", "icons"), budgets=(0.25,),
                            grad_dim=32, batch_size=16, lora_r=4, jobs=1, zero_shot_reference=False)
    res = run_bench(tmp_path / "b", cfg, log=lambda m: None)
    assert [f["method"] for f in res["failures"]] == ["icons"]
    error = res["failures"][0]["error"]
    assert "no evaluation set is counted" in error and "--val-targets all" in error
    assert [r["method"] for r in res["rows"]] == ["random"]


def test_one_pair_of_workers_serves_both_rounds_of_runs():
    """The bench's two rounds of runs (before and after the full-pool runs) go to the same worker processes, whose
    encode caches then stay warm; closing them ends those processes and a later round starts new ones."""
    import os

    from vlselect.bench import run as br

    w = br._Workers(2)
    try:
        first = {w.executor().submit(os.getpid).result() for _ in range(6)}
        second = {w.executor().submit(os.getpid).result() for _ in range(6)}
        assert second <= first and os.getpid() not in first
        w.close()
        third = {w.executor().submit(os.getpid).result() for _ in range(6)}
        assert not third & first
    finally:
        w.close()
