"""One table over several worlds: the mean of finished ``vlselect bench`` runs that differ only in ``--seed``.

    python benchmarks/across_worlds.py RUN_A RUN_B [...] [--json FILE]

Each ``RUN`` is a finished bench folder (its ``results.json``). The runs must have the same recipe except the
world seed (``config.seed``) and the same counted sets; anything else is refused with the difference named. For
every method and budget the script prints each world's relative performance and their mean, then the issue's
targets (:func:`vlselect.bench.run.check_targets`) judged on the means, and on each world alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished vlselect bench folders")
    ap.add_argument("--json", type=Path, help="write the mean table and the targets here")
    args = ap.parse_args(argv)
    from vlselect.bench.run import check_targets

    res = [json.loads((r / "results.json").read_text()) for r in args.runs]
    base = {k: v for k, v in res[0]["config"].items() if k != "seed"}
    for r, p in zip(res[1:], args.runs[1:]):
        other = {k: v for k, v in r["config"].items() if k != "seed"}
        diff = sorted(k for k in set(base) | set(other) if base.get(k) != other.get(k))
        if diff:
            sys.exit(f"{p}: its recipe differs from {args.runs[0]}'s in {', '.join(diff)} (only the world seed may)")
        if r["relative_sets"] != res[0]["relative_sets"]:
            sys.exit(f"{p}: counts {r['relative_sets']}, {args.runs[0]} counts {res[0]['relative_sets']}; the "
                     "relative scores are not comparable")
    seeds = [r["config"]["seed"] for r in res]
    if len(set(seeds)) != len(seeds):
        sys.exit(f"two runs of the same world (seeds {seeds}); pass runs of different worlds")
    per = [{(x["method"], x["budget"]): x["relative_mean"] for x in r["rows"]} for r in res]
    keys = [k for k in per[0] if all(k in p for p in per)]
    rows = [{"method": m, "budget": b, "relative_mean": float(np.mean([p[(m, b)] for p in per])),
             "per_world": [p[(m, b)] for p in per]} for m, b in keys]
    budgets = sorted({b for _, b in keys})
    print(f"relative performance, worlds {', '.join(map(str, seeds))} (each world | mean)")
    for m in dict.fromkeys(m for m, _ in keys):
        cells = []
        for b in budgets:
            r = next(x for x in rows if x["method"] == m and x["budget"] == b)
            cells.append(f"{' / '.join(f'{v:5.1f}' for v in r['per_world'])} | {r['relative_mean']:5.1f}")
        print(f"  {m:<18} " + "    ".join(cells))
    targets = check_targets({"rows": rows})
    print("\ntargets on the mean over worlds:")
    for t in targets:
        print(f"  {'met' if t['met'] else 'NOT met':<8} {t['target']}: {t['detail']}")
    if args.json:
        args.json.write_text(json.dumps({"worlds": seeds, "runs": [str(p) for p in args.runs], "rows": rows,
                                         "targets": targets,
                                         "targets_per_world": [r.get("targets") for r in res]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
