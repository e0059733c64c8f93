"""Score one selection method on a finished bench's own inputs, without re-running the bench.

    python benchmarks/method_on_bench.py --bench OUT/world-0 --method less_coincide [--select-only] [--out DIR]

A method added after a bench ran (or left out of its ``--methods``) gets the inputs the bench would give it, read
from the bench's cache (``vlselect.bench.run._method_inputs`` over its activation, gradient and validation-gradient
stores; ICONS, LESS and the composites target the sets the bench counted), is run at the bench's budgets with its
seed, and each subset is trained and evaluated by the bench's own job (recipe, training seeds, evaluation sets).
The relative performance (% of the bench's full pool over its counted sets, mean over seeds) is printed beside the
bench's rows, with each counted set's share. A bench re-run would recompute every stage (a stage's key holds the
code version); this keeps the bench's cached inputs, so a new method is scored against exactly the subsets and
runs the bench's table holds.

``--select-only`` stops after the selection and, for a method the bench ran, says whether the subsets are
identical to the bench's (a check that this script hands the method what the bench did).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from _bench_cache import bench_run, bench_selections, claim_folder, one_stage, train_job  # sibling module


def bench_inputs(cache: Path, cfg, method: str, targets: list[str]):
    """The role arrays and parameters the bench gives ``method``, and the activation store (its missing rows)."""
    from vlselect.bench.run import _GRAD_STORES, TIVE_GRADS, VAL_METHODS, _method_inputs
    from vlselect.features import FeatureStore
    from vlselect.pool import open_pool

    acts = FeatureStore.open(one_stage(cache, "activations") / "store")
    gdir = one_stage(cache, "gradients")
    grads = FeatureStore.open(gdir / _GRAD_STORES["lora"])
    tive = gdir / _GRAD_STORES["self_attn"]
    tive_grads = FeatureStore.open(tive) if tive.is_dir() else None
    if method in TIVE_GRADS and tive_grads is None:
        sys.exit(f"{gdir}: the bench computed no self-attention gradients (it ran no TIVE method); {method} needs them")
    vdir = one_stage(cache, "val_gradients")
    vals = {p.name: FeatureStore.open(p) for p in sorted(vdir.iterdir()) if p.is_dir()}
    if method in VAL_METHODS and cfg.val_targets != "all":
        vals = {k: v for k, v in vals.items() if k in targets}
    pool = open_pool(one_stage(cache, "world") / "w" / "pool.json")
    man = acts.manifest
    layout = {"num_layers": len(man["layers"]), "hidden_size": man["hidden_size"]}
    inputs, params = _method_inputs(acts, grads, vals, pool, layout, tive_grads)(method, cfg)
    return inputs, params, acts, np.asarray(pool.tasks)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", required=True, type=Path, help="a finished single-world vlselect bench folder")
    ap.add_argument("--method", required=True, help="a registered selection method (vlselect select --list)")
    ap.add_argument("--select-only", action="store_true", help="select and compare with the bench; no training")
    ap.add_argument("--out", type=Path, help="where the subsets and runs go (default BENCH/method_on_bench-METHOD)")
    a = ap.parse_args(argv)

    import torch

    from vlselect.bench.run import _train_and_eval
    from vlselect.select import get_method, run_method

    get_method(a.method)  # an unknown name fails before any work
    res, cfg, ident = bench_run(a.bench)
    cache = a.bench / "cache"
    counted = res["relative_sets"]
    out = a.out or a.bench / (f"method_on_bench-{a.method}" + ("-select" if a.select_only else ""))
    probe = {**ident, "method": a.method, "select_only": a.select_only}
    done = claim_folder(out, probe)
    if done is not None:
        print(done)
        return 0
    torch.set_num_threads(2)
    inputs, params, acts, tasks = bench_inputs(cache, cfg, a.method, counted)
    sels = run_method(a.method, inputs, list(cfg.budgets), tasks=tasks, seed=cfg.seed, params=params,
                      exclude=acts.missing())
    paths = {}
    for b, s in zip(cfg.budgets, sels):
        paths[b] = out / f"indices_{b}.npy"
        np.save(paths[b], np.asarray(s.indices))
    if a.select_only:
        have = bench_selections(cache)
        same = {str(b): (bool(np.array_equal(np.load(have[(a.method, b)]), np.load(paths[b])))
                         if (a.method, b) in have else None) for b in cfg.budgets}
        for b, v in same.items():
            print(f"{float(b):.0%}: " + ("the bench ran no such selection" if v is None else
                                         "identical to the bench's subset" if v else "DIFFERS from the bench's subset"))
        (out / "summary.json").write_text(json.dumps({**probe, "identical_to_bench": same}, indent=1))
        return 0 if all(v is not False for v in same.values()) else 1
    torch.set_num_threads(1)

    ref = res["reference"]["scores"]
    runs: dict[float, list[dict]] = {b: [] for b in cfg.budgets}
    with ProcessPoolExecutor(cfg.jobs, mp_context=mp.get_context("spawn")) as ex:
        futs = [(b, s, ex.submit(_train_and_eval, train_job(cfg, cache, paths[b], s, out / f"run_{b}_{s}")))
                for b in cfg.budgets for s in (cfg.seeds if b in cfg.seed_budgets else cfg.seeds[:1])]
        for b, s, fut in futs:
            sc = fut.result()["scores"]
            runs[b].append({k: 100.0 * sc[k] / ref[k] for k in counted})
            print(f"{b:.0%} seed {s}: {np.mean(list(runs[b][-1].values())):.1f}", flush=True)
    rel = {b: float(np.mean([np.mean(list(r.values())) for r in rs])) for b, rs in runs.items()}
    shares = {b: {k: float(np.mean([r[k] for r in rs])) for k in counted} for b, rs in runs.items()}
    own = {(r["method"], r["budget"]): r["relative_mean"] for r in res["rows"]}
    print(f"\nrelative performance (% of the full pool over {', '.join(counted)}; mean over seeds)")
    print(f"{'':<22}" + "".join(f"{b:>8.0%}" for b in cfg.budgets))
    for m in sorted({m for m, _ in own}, key=lambda m: list(cfg.methods).index(m) if m in cfg.methods else 99):
        print(f"{m:<22}" + "".join(f"{own[(m, b)]:>8.1f}" if (m, b) in own else f"{'-':>8}" for b in cfg.budgets))
    print(f"{a.method + ' (this run)':<22}" + "".join(f"{rel[b]:>8.1f}" for b in cfg.budgets))
    for b in cfg.budgets:
        print(f"  {b:.0%} share per set: " + ", ".join(f"{k} {v:.1f}" for k, v in shares[b].items()))
    (out / "summary.json").write_text(json.dumps({
        **probe, "relative": {str(b): v for b, v in rel.items()},
        "per_seed": {str(b): [float(np.mean(list(r.values()))) for r in rs] for b, rs in runs.items()},
        "shares": {str(b): v for b, v in shares.items()}, "params": {k: v for k, v in params.items()},
        "bench_rows": {f"{m}@{b}": v for (m, b), v in own.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
