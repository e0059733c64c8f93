"""One table over several worlds from finished single-world ``vlselect bench`` runs that differ only in ``--seed``.

    python benchmarks/across_worlds.py RUN_A RUN_B [...] [--json FILE]

``vlselect bench`` does this itself now (``--worlds 0,1``, the default): this script combines runs made apart,
e.g. an older world with a new one. Each ``RUN`` is a finished single-world bench folder (its ``results.json``).
The runs must have the same recipe except the world seed and must be of different worlds; anything else is
refused with the difference named (:func:`vlselect.bench.worlds.combine_worlds`). Prints each world's relative
performance and their mean per method and budget, then the targets judged on the means.
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
        combined = combine_worlds(res, [str(p) for p in args.runs])
    except ConfigError as exc:
        sys.exit(str(exc))
    print_worlds(combined, Console())
    if args.json:
        args.json.write_text(json.dumps(combined, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
