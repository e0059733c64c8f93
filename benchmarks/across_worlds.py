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
        combined = combine_worlds(res, [str(p) for p in args.runs], allow_other_code=args.allow_other_code)
    except ConfigError as exc:
        sys.exit(str(exc))
    print_worlds(combined, Console())
    combined["spread"] = spread(res)
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
    """Variance components of the relative scores, per budget, averaged over the methods every world has with the
    same number (>= 2) of training seeds: within a world between training seeds (the mean of each world's sample
    variance), and between worlds (the variance of the world means less the seed part, ``var_w - var_s / S``, the
    one-way random-effects estimate, floored at 0). From them, the standard deviation of a method's mean over W
    worlds x S seeds, ``sqrt(var_world / W + var_seed / (W S))``, for a few layouts of the same kind of budget.
    ``vs_random``: the same for each method's gap to random (training seed i against random's seed i), what the
    "above random" and "at least as good as" targets compare."""
    import numpy as np

    rows = [{(x["method"], x["budget"]): x["relative_per_seed"] for x in r["rows"]} for r in res]

    def per_seed(k: tuple) -> "np.ndarray | None":  # worlds x seeds, or None when the seeds do not line up
        if not all(k in r for r in rows):
            return None
        x = [r[k] for r in rows]
        n = {len(v) for v in x}
        return None if len(n) != 1 or n == {1} else np.array(x, dtype=float)

    def components(arrays: list) -> dict | None:
        seed_v = [float(a.var(axis=1, ddof=1).mean()) for a in arrays]
        world_v = [max(float(a.mean(axis=1).var(ddof=1)) - v / a.shape[1], 0.0) for a, v in zip(arrays, seed_v)]
        if not seed_v:
            return None
        vs, vw = float(np.mean(seed_v)), float(np.mean(world_v))
        return {"methods": len(seed_v), "seed_sd": vs ** 0.5, "world_sd": vw ** 0.5,
                "mean_sd": {f"{w}x{s}": (vw / w + vs / (w * s)) ** 0.5 for w, s in ((1, 3), (2, 3), (3, 2), (3, 3))}}

    out = {}
    for b in sorted({k[1] for k in rows[0]}):
        keys = [k for k in rows[0] if k[1] == b and per_seed(k) is not None]
        c = components([per_seed(k) for k in keys])
        if c is None:
            continue
        ref = per_seed(("random", b))  # a method's gap to random, seed i against random's seed i
        if ref is not None:
            gap = components([per_seed(k) - ref for k in keys if k[0] != "random" and per_seed(k).shape == ref.shape])
            if gap is not None:
                c["vs_random"] = gap
        out[str(b)] = c
    return out


if __name__ == "__main__":
    raise SystemExit(main())
