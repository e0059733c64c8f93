"""Rows of each evaluated skill in a subset against the subset's score on that skill's evaluation set.

An evaluation set of the world asks questions of a few kinds (``vlselect.world.build.EVAL_SETS``: colour asks
``color_of_shape``, position ``pos_of`` and ``shape_at_pos``, ...), and the pool holds records of the same kinds.
For every method, budget and world of finished ``vlselect bench`` runs, this script counts the rows of each counted
set's kinds in the method's subset (per kind) and sets them beside the set's score as a share of that world's full
pool (mean over the training seeds, from ``results.json``). It prints, per counted set, the share by bins of the
subset's rows of the set's kinds and by bins of its caption rows (the pool's support task: a caption names every
object's colour, shape and position), every method, budget and world pooled, then each method's rows and share.

    python benchmarks/skill_rows.py BENCH_OUT [BENCH_OUT ...] [--json out.json]

Each BENCH_OUT is a one-world bench folder with its cache, or a several-world one (its ``world-*`` folders).
Nothing is recomputed: the selections and the results tables are read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from _bench_cache import bench_selections, one_stage, world_folders  # a sibling module: the scripts run from benchmarks/
from vlselect.world.build import EVAL_SETS

BINS = ((0, 25), (25, 50), (50, 100), (100, 200), (200, 400), (400, 10**9))


def read_world(folder: Path) -> list[dict]:
    """One world's cells: method, budget, the rows of each counted set's kinds in its subset, and the set's score
    as a share of the full pool's (mean over the training seeds)."""
    res = json.loads((folder / "results.json").read_text())
    cache = folder / "cache"
    pool = json.loads((one_stage(cache, "world") / "w" / "pool.json").read_text())
    kinds = np.array([r.get("meta", {}).get("kind") or "" for r in pool])
    is_caption = np.array([r.get("task") == "caption" for r in pool])
    ref = res["reference"]["scores"]
    scores = {(r["method"], float(r["budget"])): r["scores"] for r in res["rows"]}
    out = []
    for key, path in sorted(bench_selections(cache).items()):
        if key not in scores:
            continue
        idx = np.load(path)
        got = kinds[idx]
        for s in res["relative_sets"]:
            ks = EVAL_SETS[s][1]
            out.append({"world": res["config"]["seed"], "method": key[0], "budget": key[1], "set": s,
                        "rows": {k: int((got == k).sum()) for k in ks}, "captions": int(is_caption[idx].sum()),
                        "share": 100.0 * scores[key][s] / ref[s]})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench", nargs="+", type=Path, help="vlselect bench --out folders (with their caches)")
    ap.add_argument("--json", type=Path, default=None, help="also write every cell here")
    a = ap.parse_args(argv)
    cells = [c for f in world_folders(a.bench) for c in read_world(f)]
    if not cells:
        raise SystemExit("no selection with a row in the results table in these folders")
    for s in dict.fromkeys(c["set"] for c in cells):
        cs = [c for c in cells if c["set"] == s]
        ks = EVAL_SETS[s][1]
        print(f"\n{s} (asks {', '.join(ks)}): share of the full pool by the subset's rows of those kinds")
        line = []
        for lo, hi in BINS:
            v = [c["share"] for c in cs if lo <= sum(c["rows"].values()) < hi]
            label = f"{lo}-{hi - 1}" if hi < 10**9 else f">={lo}"
            if v:
                line.append(f"{label}: {statistics.mean(v):.0f} ({len(v)})")
        print("  " + "   ".join(line))
        line = []
        for lo, hi in BINS:
            v = [c["share"] for c in cs if lo <= c["captions"] < hi]
            label = f"{lo}-{hi - 1}" if hi < 10**9 else f">={lo}"
            if v:
                line.append(f"{label}: {statistics.mean(v):.0f} ({len(v)})")
        print("  by the subset's caption rows (the pool's support task; every caption names each object's position):")
        print("  " + "   ".join(line))
        by = defaultdict(list)
        for c in cs:
            by[(c["method"], c["budget"])].append(c)
        print(f"  {'method':<20}{'budget':>7}   " + " / ".join(ks) + " rows, captions (mean of worlds)   share")
        for (m, b), v in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            rows = (" / ".join(f"{statistics.mean(c['rows'][k] for c in v):.0f}" for k in ks)
                    + f", {statistics.mean(c['captions'] for c in v):.0f}")
            print(f"  {m:<20}{b:>7.0%}   {rows:<28}{statistics.mean(c['share'] for c in v):>7.1f}")
    if a.json:
        a.json.write_text(json.dumps(cells, indent=1) + "\n")
        print(f"\nwritten: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
