"""What each method's subset holds, beyond its task mix: scene complexity, near-duplicates, easy and wrong rows.

Reads the cache of a ``vlselect bench`` run (its world's ``pool.json`` with each record's ``meta``, and every
method's selected row indices) and prints, per method and budget:

* ``groups/row``: distinct near-duplicate groups per selected row (1.00 = no two rows share a scene; a low value
  means the budget went to near-duplicates of one picture);
* ``objects 1/2/3/4``: the share of image records whose scene has 1, 2, 3 or 4 objects (the pool draws each
  equally often; counting and position questions need every count);
* ``text-only``: the share of records without a picture (the off-target chat);
* ``easy``, ``wrong``, ``noisy``: the share of trivially easy records (one large object in the centre), of records
  with a wrong answer, and of records from the noisy source.

Nothing is recomputed: the numbers are read off the bench's own selections, so they describe the subsets the
table's runs trained on.

    python benchmarks/subset_profile.py --bench /tmp/bench [--budgets 0.1,0.2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from _bench_cache import one_stage as _one  # a sibling module: the scripts run from benchmarks/


def profile(pool: list[dict], idx: np.ndarray) -> dict:
    """The profile of the rows ``idx`` of ``pool`` (see the module docstring)."""
    recs = [pool[int(i)] for i in idx]
    meta = [r.get("meta", {}) for r in recs]
    groups = {(r["task"], m.get("group")) for r, m in zip(recs, meta)}
    nobj = Counter(len(m["scene"]["objects"]) for m in meta if m.get("scene") and m["scene"].get("objects"))
    with_scene = max(1, sum(nobj.values()))
    n = max(1, len(recs))
    return {
        "rows": len(recs),
        "groups_per_row": len(groups) / n,
        "objects": {k: 100.0 * nobj.get(k, 0) / with_scene for k in (1, 2, 3, 4)},
        "text_only": 100.0 * sum(not r.get("image") and not r.get("images") for r in recs) / n,
        "easy": 100.0 * sum(bool(m.get("easy")) for m in meta) / n,
        "wrong": 100.0 * sum(not m.get("correct", True) for m in meta) / n,
        "noisy": 100.0 * sum(m.get("source") not in (None, "clean") for m in meta) / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", required=True, type=Path, help="a vlselect bench --out folder")
    ap.add_argument("--budgets", default=None, help="comma list of budgets (default: every budget selected)")
    ap.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    a = ap.parse_args()

    cache = a.bench / "cache"
    pool = json.loads((_one(cache, "world") / "w" / "pool.json").read_text())
    wanted = None if a.budgets is None else {float(b) for b in a.budgets.split(",")}
    rows = [("pool", 1.0, profile(pool, np.arange(len(pool))))]
    for d in sorted(cache.glob("select-*")):
        if not (d / "done.json").exists():
            continue
        recipe = json.loads((d / "recipe.json").read_text())
        name = recipe["method"] + (f" (K={recipe['n_clusters']})" if recipe.get("n_clusters") else "")
        for f in sorted(d.glob("indices_*.npy"), key=lambda p: float(p.stem.split("_", 1)[1])):
            b = float(f.stem.split("_", 1)[1])
            if wanted is None or b in wanted:
                rows.append((name, b, profile(pool, np.load(f))))
    rows[1:] = sorted(rows[1:], key=lambda r: (r[0], r[1]))
    print("| method | budget | rows | groups/row | objects 1 / 2 / 3 / 4 (%) | text-only % | easy % | wrong % | noisy % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, b, p in rows:
        objs = " / ".join(f"{p['objects'][k]:.0f}" for k in (1, 2, 3, 4))
        print(f"| {name} | {b:g} | {p['rows']} | {p['groups_per_row']:.2f} | {objs} | {p['text_only']:.0f} | {p['easy']:.1f} | "
              f"{p['wrong']:.1f} | {p['noisy']:.0f} |")
    if a.json is not None:
        a.json.write_text(json.dumps([{"method": n, "budget": b, **p} for n, b, p in rows], indent=1) + "\n")


if __name__ == "__main__":
    main()
