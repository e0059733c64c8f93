"""Why ICONS picks what it picks: its specialist and generalist stages taken apart on a bench run's features.

Reads the cache of a ``vlselect bench`` run (the world, the pool's projected LoRA gradients and the validation
sets' gradients) and prints, at one budget:

1. per validation task (the specialist stage, ``vlselect.select.icons.icons_task_scores``): the pool-task mix of
   the rows at or above its percentile (the rows it votes for), and the share of wrong answers among them;
2. the cosine between the validation tasks' mean (normalised) gradients: how much of every task's direction is
   one shared direction;
3. the generalist vote: how many votes the rows of each pool task get, and the task mix of ICONS's selection
   against the pool's.

It uses the package's own ICONS functions on the bench's own inputs, so what it prints is what the bench's
ICONS run did (no re-implementation).

    python benchmarks/icons_anatomy.py --bench /tmp/bench --budget 0.2
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from _bench_cache import one_stage as _one  # a sibling module: the scripts run from benchmarks/


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", required=True, type=Path, help="a vlselect bench --out folder")
    ap.add_argument("--budget", type=float, default=0.2)
    ap.add_argument("--json", type=Path, default=None, help="also write the tables as JSON here")
    a = ap.parse_args()

    from vlselect.features import FeatureStore
    from vlselect.select.icons import icons_targets, icons_task_scores, icons_votes

    cache = a.bench / "cache"
    world = _one(cache, "world") / "w"
    pool = json.loads((world / "pool.json").read_text())
    tasks = np.asarray([r["task"] for r in pool])
    wrong = np.asarray([not r.get("meta", {}).get("correct", True) for r in pool])
    grads = FeatureStore.open(_one(cache, "gradients") / "store").array("gradients")
    vdir = _one(cache, "val_gradients")
    vals = {f"val/{p.name}": FeatureStore.open(p).array("gradients") for p in sorted(vdir.iterdir()) if p.is_dir()}
    targets = icons_targets({"train": grads, **vals})
    scores, _ = icons_task_scores(np.asarray(grads), targets)
    valid = np.isfinite(scores).all(axis=1)
    pct = 100.0 * (1.0 - a.budget)
    _, mark, votes = icons_votes(scores, pct, valid=valid)
    names = [t.name for t in targets]
    pool_tasks = sorted(set(tasks))
    n = len(tasks)
    k = int(np.floor(a.budget * valid.sum()))

    out: dict = {"budget": a.budget, "tasks": names, "pool_tasks": pool_tasks}
    print(f"pool: {n} rows; budget {a.budget:.0%} -> {k} rows; {len(names)} validation tasks\n")
    print("1. rows each validation task votes for (its top {:.0%}), by pool task (%), and their wrong answers".format(
        a.budget))
    head = "| val task | " + " | ".join(pool_tasks) + " | wrong |"
    print(head)
    print("|" + "---|" * (len(pool_tasks) + 2))
    spec = {}
    for t, name in enumerate(names):
        rows = np.flatnonzero(mark[:, t])
        c = Counter(tasks[rows])
        shares = {pt: 100.0 * c.get(pt, 0) / max(1, rows.size) for pt in pool_tasks}
        spec[name] = {"shares": shares, "wrong": 100.0 * wrong[rows].mean() if rows.size else 0.0}
        print(f"| {name.removeprefix('val/')} | " + " | ".join(f"{shares[pt]:.0f}" for pt in pool_tasks)
              + f" | {spec[name]['wrong']:.1f} |")
    out["specialist"] = spec

    # 2. shared direction: cosine of the tasks' mean normalised validation gradients
    means = []
    for name in names:
        v = np.asarray(vals[name if name in vals else f"val/{name}"], dtype=np.float64)
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        means.append(v.mean(axis=0))
    M = np.asarray(means)
    Mn = M / np.linalg.norm(M, axis=1, keepdims=True)
    cos = Mn @ Mn.T
    off = cos[~np.eye(len(names), dtype=bool)]
    print(f"\n2. cosine between validation tasks' mean gradients: mean off-diagonal {off.mean():.2f} "
          f"(min {off.min():.2f}, max {off.max():.2f})")
    print("| | " + " | ".join(n_.removeprefix("val/") for n_ in names) + " |")
    print("|" + "---|" * (len(names) + 1))
    for i, name in enumerate(names):
        print(f"| {name.removeprefix('val/')} | " + " | ".join(f"{cos[i, j]:.2f}" for j in range(len(names))) + " |")
    out["task_cosine"] = cos.tolist()

    # 3. the vote
    order = np.lexsort((np.arange(n), -votes))
    sel = order[:k]
    print("\n3. votes per row by pool task (mean), and the task mix of the top-k by votes against the pool (%)")
    print("| pool task | pool % | mean votes | rows with >= half the votes | selected % |")
    print("|---|---|---|---|---|")
    half = len(names) / 2
    cs = Counter(tasks[sel])
    vote_tab = {}
    for pt in pool_tasks:
        r = tasks == pt
        vote_tab[pt] = {"pool": 100.0 * r.mean(), "mean_votes": float(votes[r].mean()),
                        "half": int((votes[r] >= half).sum()), "selected": 100.0 * cs.get(pt, 0) / k}
        print(f"| {pt} | {vote_tab[pt]['pool']:.1f} | {vote_tab[pt]['mean_votes']:.2f} | {vote_tab[pt]['half']} | "
              f"{vote_tab[pt]['selected']:.1f} |")
    out["vote"] = vote_tab
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
