"""More training seeds for a finished bench's subsets: how much of a table's gap is the training run's luck.

    python benchmarks/more_seeds.py --bench OUT --methods less_tive,less,icons,random --budget 0.05 --seeds 1,2

``OUT`` is a finished ``vlselect bench`` run. For each method the script takes the subset the bench selected at
``--budget`` (the same indices file, in the same order) and trains and evaluates it with the bench's own job, recipe
and full-pool reference, once per extra seed; a seed changes only the training (LoRA initialisation and sample
order), never the subset. It prints each method's relative performance over the bench's seeds and the new ones
side by side, and writes ``summary.json``.

Runs go to ``--out`` (default ``OUT/more_seeds``), one folder per method, budget and seed, each with the recipe it
was made from (``job.json``: the bench folder, the md5 of its ``results.json`` and vlselect's code version, the
method, the budget, the seed and the md5 of the indices file); a finished run with the same recipe is reused, any other is refused with the fix, an unfinished one starts over.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from _bench_cache import bench_run, method_selection, train_job  # a sibling module: the scripts run from benchmarks/


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", required=True, type=Path, help="a finished vlselect bench folder")
    ap.add_argument("--methods", required=True, help="comma-separated methods of that bench")
    ap.add_argument("--budget", required=True, type=float, help="one of the bench's budgets, e.g. 0.05")
    ap.add_argument("--seeds", required=True, help="comma-separated training seeds to add, e.g. 1,2")
    ap.add_argument("--out", type=Path, help="where the runs go (default BENCH/more_seeds)")
    args = ap.parse_args(argv)

    from vlselect.bench.run import _train_and_eval

    res, cfg, ident = bench_run(args.bench)
    if args.budget not in cfg.budgets:
        sys.exit(f"--budget {args.budget} is not a budget of {args.bench} ({', '.join(map(str, cfg.budgets))})")
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    had_seeds = list(cfg.seeds if args.budget in cfg.seed_budgets else cfg.seeds[:1])
    if set(seeds) & set(had_seeds):
        sys.exit(f"the bench already trained seed(s) {sorted(set(seeds) & set(had_seeds))} at {args.budget}; "
                 "fix: pass other --seeds")
    rows = {(r["method"], r["budget"]): r for r in res["rows"]}
    missing = [m for m in methods if (m, args.budget) not in rows]
    if missing:
        sys.exit(f"{args.bench}: no row for {', '.join(missing)} at {args.budget}; fix: name methods of that bench")
    cache = args.bench / "cache"
    ref, counted = res["reference"]["scores"], res["relative_sets"]
    out = args.out or args.bench / "more_seeds"

    def rel(scores: dict) -> float:
        return float(np.mean([scores[k] / ref[k] * 100 for k in counted]))

    jobs, done = [], {}
    for m in methods:
        idx = method_selection(cache, m) / f"indices_{args.budget}.npy"
        md5 = hashlib.md5(idx.read_bytes()).hexdigest()
        for seed in seeds:
            folder = out / f"{m}_{args.budget:g}_{seed}"
            recipe = {**ident, "method": m, "budget": args.budget, "seed": seed, "indices_md5": md5}
            if (folder / "job.json").exists():
                had = json.loads((folder / "job.json").read_text())
                if had != recipe:
                    sys.exit(f"{folder} holds the run {had}, not {recipe}; fix: pass another --out, or delete it")
                if (folder / "result.json").exists():
                    done[(m, seed)] = json.loads((folder / "result.json").read_text())
                    continue
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            (folder / "job.json").write_text(json.dumps(recipe, indent=1))
            jobs.append((m, seed, folder, train_job(cfg, cache, idx, seed, folder / "run")))
    if jobs:
        with ProcessPoolExecutor(cfg.jobs, mp_context=mp.get_context("spawn")) as ex:
            futs = [(m, seed, folder, ex.submit(_train_and_eval, job)) for m, seed, folder, job in jobs]
            for m, seed, folder, fut in futs:
                r = fut.result()
                (folder / "result.json").write_text(json.dumps({"scores": r["scores"]}, indent=1))
                done[(m, seed)] = {"scores": r["scores"]}
                print(f"{m} @ {args.budget:g} seed {seed}: {rel(r['scores']):.1f}", flush=True)
    summary = {}
    print(f"\nrelative performance at {args.budget:g} (bench seeds | added seeds | mean of all)")
    for m in methods:
        bench = [float(v) for v in rows[(m, args.budget)]["relative_per_seed"]]
        added = [rel(done[(m, s)]["scores"]) for s in seeds]
        summary[m] = {"bench_seeds": bench, "added_seeds": dict(zip(map(str, seeds), added)),
                      "mean": float(np.mean(bench + added))}
        print(f"  {m:<18} {' '.join(f'{v:5.1f}' for v in bench):<18} | {' '.join(f'{v:5.1f}' for v in added):<18} | "
              f"{summary[m]['mean']:.1f}")
    (out / f"summary_{args.budget:g}.json").write_text(json.dumps({"budget": args.budget, "counted": counted,
                                                                  "methods": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
