"""One table over several worlds from finished single-world ``vlselect bench`` runs that differ only in ``--seed``.

    python benchmarks/across_worlds.py RUN_A RUN_B [...] [--json FILE]

``vlselect bench`` does this itself now (``--worlds 0,1``, the default): this script combines runs made apart,
e.g. an older world with a new one. Each ``RUN`` is a finished single-world bench folder (its ``results.json``).
The runs must have the same recipe except the world seed and must be of different worlds; anything else is
refused with the difference named (:func:`vlselect.bench.worlds.combine_worlds`). Prints each world's relative
performance and their mean per method and budget, then the targets judged on the means, where the spread comes
from (:func:`spread`), and where each method's points are lost: its share of the full pool's score on each counted
set, mean over the worlds (:func:`per_set`; the relative performance is the mean of these shares).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished single-world vlselect bench folders")
    ap.add_argument("--json", type=Path, help="write the mean table and the targets here")
    ap.add_argument("--allow-other-code", action="store_true",
                    help="combine runs of different (or unrecorded) vlselect code versions; the notes name them")
    ap.add_argument("--allow-other-methods", action="store_true",
                    help="combine runs of different --methods: the table keeps the methods every world ran")
    args = ap.parse_args(argv)
    from rich.console import Console

    from vlselect.bench.report_console import print_worlds
    from vlselect.bench.worlds import combine_worlds
    from vlselect.errors import ConfigError

    res = []
    for p in args.runs:
        r = json.loads((p / "results.json").read_text())
        if "worlds" in r:
            sys.exit(f"{p}: already a mean over worlds {r['worlds']}; pass its world folders ({', '.join(r['world_folders'])})")
        res.append(r)
    try:
        combined = combine_worlds(res, [str(p) for p in args.runs], allow_other_code=args.allow_other_code,
                                  allow_other_methods=args.allow_other_methods)
    except ConfigError as exc:
        sys.exit(str(exc))
    print_worlds(combined, Console())
    print("\nwhere the spread comes from (per budget, averaged over methods; sd in points of relative performance):")
    for b, x in combined["spread"].items():
        for what, y in (("a method's score", x), ("its gap to random", x.get("vs_random"))):
            if y:
                print(f"  {float(b):.0%}, {what}: between training seeds sd {y['seed_sd']:.1f}, between worlds sd "
                      f"{y['world_sd']:.1f}; sd of the mean over worlds x seeds: "
                      + ", ".join(f"{k} {v:.1f}" for k, v in y["mean_sd"].items()))
    combined["per_set"] = per_set(res)
    sets = res[0]["relative_sets"]
    print("\nshare of the full pool's score on each counted set (%, mean over the worlds):")
    print(f"  {'method':<20}{'budget':>7}" + "".join(f"{s[:14]:>16}" for s in sets))
    for m, by_b in combined["per_set"].items():
        for b, v in by_b.items():
            print(f"  {m:<20}{float(b):>7.0%}" + "".join(f"{v[s]:>16.1f}" for s in sets))
    if args.json:
        args.json.write_text(json.dumps(combined, indent=1))
    return 0


def per_set(res: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Per method and budget, each counted set's score as a share of that world's full pool (100 x score /
    reference score, the method's mean over its training seeds), averaged over the worlds; methods and budgets that
    every world has. The mean over the sets is the table's relative performance."""
    sets = res[0]["relative_sets"]
    if any(r["relative_sets"] != sets for r in res):
        raise SystemExit("the worlds count different sets: " + "; ".join(str(r["relative_sets"]) for r in res))
    rows = [{(x["method"], x["budget"]): x["scores"] for x in r["rows"]} for r in res]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for k in rows[0]:
        if all(k in r for r in rows):
            out.setdefault(k[0], {})[str(k[1])] = {
                s: sum(100.0 * r[k][s] / w["reference"]["scores"][s] for r, w in zip(rows, res)) / len(res)
                for s in sets}
    return out


def spread(res: list[dict]) -> dict[str, dict]:
    """Variance components of the relative scores, per budget (:func:`vlselect.bench.spread.variance_components`):
    between training seeds within a world and between worlds, for a method's score and (``vs_random``) for its gap
    to random, with the standard deviation of a mean over a few layouts of worlds x seeds (``mean_sd``)."""
    from vlselect.bench.spread import variance_components

    return variance_components(res)


if __name__ == "__main__":
    raise SystemExit(main())
