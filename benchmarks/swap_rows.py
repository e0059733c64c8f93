"""An intervention on one method's subset: swap some of its rows of one pool task for rows of another, retrain.

    python benchmarks/swap_rows.py --bench OUT/world-0 --method less --budget 0.2 --drop vqa_color --add caption \\
        --n 300 [--draw-seed 0] [--out DIR]

From the ``--method`` selection at ``--budget`` of a finished single-world ``vlselect bench`` run, ``--n`` rows of
pool task ``--drop`` (drawn at random, ``RandomState(--draw-seed)``) are replaced by ``--n`` rows of task ``--add``
that the subset does not hold (drawn the same way), so the subset keeps its size. The new subset is trained and
evaluated with the bench's own job (its recipe and training seeds at that budget), and each counted set's score
is printed as a share of the bench's full pool beside the method's own runs (``results.json``). It tests what a
table of associations (``skill_rows.py``) only suggests: e.g. whether captions, not position questions, are what a
subset needs to answer position questions.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from _bench_cache import bench_run, claim_folder, method_selection, one_stage, train_job  # a sibling module: the scripts run from benchmarks/


def swap(idx: np.ndarray, tasks: np.ndarray, drop: str, add: str, n: int, seed: int) -> np.ndarray:
    """``idx`` with ``n`` of its rows of task ``drop`` replaced by ``n`` rows of task ``add`` it does not hold, both
    drawn with ``RandomState(seed)``; sorted. Exits with a clear message when either task has too few rows."""
    rng = np.random.RandomState(seed)
    held = np.flatnonzero(tasks[idx] == drop)
    if held.size < n:
        raise SystemExit(f"the subset holds {held.size} rows of {drop!r}, fewer than --n {n}")
    free = np.setdiff1d(np.flatnonzero(tasks == add), idx)
    if free.size < n:
        raise SystemExit(f"the pool has {free.size} rows of {add!r} outside the subset, fewer than --n {n}")
    out = np.delete(idx, rng.choice(held, size=n, replace=False))
    return np.sort(np.concatenate([out, rng.choice(free, size=n, replace=False)]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", required=True, type=Path, help="a finished single-world vlselect bench folder")
    ap.add_argument("--method", required=True, help="the selection to change")
    ap.add_argument("--budget", required=True, type=float, help="one of the bench's budgets")
    ap.add_argument("--drop", required=True, help="pool task whose rows leave the subset")
    ap.add_argument("--add", required=True, help="pool task whose rows come in")
    ap.add_argument("--n", required=True, type=int, help="rows swapped")
    ap.add_argument("--draw-seed", type=int, default=0, help="seed of the draws")
    ap.add_argument("--out", type=Path, help="where the subset and runs go (default BENCH/swap_rows-...)")
    a = ap.parse_args(argv)

    from vlselect.bench.run import _train_and_eval

    res, cfg, ident = bench_run(a.bench)
    if a.budget not in cfg.budgets:
        sys.exit(f"--budget {a.budget:g} is not one of the bench's budgets {list(cfg.budgets)}")
    cache = a.bench / "cache"
    selection = method_selection(cache, a.method)  # before the output folder is claimed: a wrong name leaves none
    name = f"swap_rows-{a.method}-{a.budget:g}-{a.drop}-{a.add}-{a.n}" + (f"-draw{a.draw_seed}" if a.draw_seed else "")
    out = a.out or a.bench / name
    probe = {**ident, "method": a.method, "budget": a.budget, "drop": a.drop, "add": a.add, "n": a.n,
             "draw_seed": a.draw_seed}
    done = claim_folder(out, probe)  # this probe's folder alone; a finished one is shown, not rerun
    if done is not None:
        print(done)
        return 0

    pool = json.loads((one_stage(cache, "world") / "w" / "pool.json").read_text())
    tasks = np.array([r["task"] for r in pool])
    idx = np.load(selection / f"indices_{a.budget}.npy")
    new = swap(idx, tasks, a.drop, a.add, a.n, a.draw_seed)
    path = out / f"indices_{a.budget}.npy"
    np.save(path, new)
    seeds = cfg.seeds if a.budget in cfg.seed_budgets else cfg.seeds[:1]
    ref, counted = res["reference"]["scores"], res["relative_sets"]
    own = next(r for r in res["rows"] if r["method"] == a.method and r["budget"] == a.budget)

    def shares(scores: dict) -> dict[str, float]:
        return {k: 100.0 * scores[k] / ref[k] for k in counted}

    runs = []
    with ProcessPoolExecutor(cfg.jobs, mp_context=mp.get_context("spawn")) as ex:
        futs = [(s, ex.submit(_train_and_eval, train_job(cfg, cache, path, s, out / f"run_{s}"))) for s in seeds]
        for s, fut in futs:
            r = fut.result()
            runs.append(shares(r["scores"]))
            print(f"seed {s}: " + ", ".join(f"{k} {v:.1f}" for k, v in runs[-1].items()), flush=True)
    mean = {k: float(np.mean([r[k] for r in runs])) for k in counted}
    base = shares(own["scores"])
    print(f"\n{a.method} @ {a.budget:.0%}, share of the full pool per counted set (mean of {len(seeds)} seeds):")
    print(f"  {'':<34}" + "".join(f"{k[:14]:>16}" for k in counted) + f"{'relative':>10}")
    for label, v in ((f"its own subset", base), (f"{a.n} {a.drop} -> {a.add}", mean)):
        print(f"  {label:<34}" + "".join(f"{v[k]:>16.1f}" for k in counted) + f"{np.mean(list(v.values())):>10.1f}")
    (out / "summary.json").write_text(json.dumps({**probe, "own": base, "swapped": mean, "per_seed": runs},
                                                 indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
