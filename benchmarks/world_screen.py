"""``vlselect bench`` on a world whose default task shares or near-duplicate group sizes are changed: the screens
of issue 12 (OCR at 12% of the pool, OCR in groups of 8) in one reproducible command.

    python benchmarks/world_screen.py --composition ocr=0.12,text=0.07 -- --worlds 0,1 --methods random --out D
    python benchmarks/world_screen.py --redundancy ocr=8 -- --worlds 0,1 --methods random --out D

Everything after ``--`` is passed to ``vlselect bench`` unchanged. The overrides are set in
``vlselect.world.build.DEFAULT_COMPOSITION`` / ``DEFAULT_REDUNDANCY`` before the bench builds its worlds (the
bench's training workers are spawned and never build a world). The bench's world cache key carries the changed
tables (``vlselect.world.build.changed_defaults``), so a world built with other shares is never reused; the
overrides are also written to ``D/world_overrides.json``, and the script refuses a ``--out`` that holds a bench
made with other overrides (or with none), so that one folder holds one world's screen. The evaluation sets do not depend on the shares or group sizes (they are
drawn from the world's seed alone), so scores stay comparable with the shipped world's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _pairs(text: str, what: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            example = {"composition": "ocr=0.12,text=0.07", "redundancy": "ocr=8"}[what]
            sys.exit(f"--{what}: {item!r} is not task=number; e.g. --{what} {example}")
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        sys.exit("give the bench's own arguments after --, e.g. -- --worlds 0,1 --methods random --out D")
    cut = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--composition", default="", help="task=share pairs that replace the world's default shares")
    ap.add_argument("--redundancy", default="", help="task=mean group size pairs that replace the defaults")
    a = ap.parse_args(argv[:cut])
    bench_args = argv[cut + 1:]
    if "--out" not in bench_args:
        sys.exit("give the bench an --out folder of its own (its world is built with the overrides)")
    out = Path(bench_args[bench_args.index("--out") + 1])

    import vlselect.world.build as build

    comp, red = _pairs(a.composition, "composition"), _pairs(a.redundancy, "redundancy")
    for name in list(comp) + list(red):
        if name not in build.TASKS:
            sys.exit(f"unknown task {name!r}; use one of {', '.join(build.TASKS)}")
    build.DEFAULT_COMPOSITION.update(comp)
    build.DEFAULT_REDUNDANCY.update(red)
    from vlselect.errors import ConfigError

    try:
        build.WorldConfig().validate()  # a bad share or group size: the world's own message, before any work
    except ConfigError as exc:
        sys.exit(str(exc))
    overrides = {"composition": dict(build.DEFAULT_COMPOSITION), "redundancy": dict(build.DEFAULT_REDUNDANCY)}

    marker = out / "world_overrides.json"
    if marker.is_file():
        if json.loads(marker.read_text()) != overrides:
            sys.exit(f"{out}: made with other world overrides ({marker}); use a new --out")
    elif out.exists() and any(out.iterdir()):
        sys.exit(f"{out}: holds a bench made without world_screen.py's record of its world; use a new --out")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(overrides, indent=1) + "\n")
    print(f"world defaults: composition {overrides['composition']}, redundancy {overrides['redundancy']}", flush=True)

    from vlselect.cli import main as vlselect_main

    vlselect_main(["bench", *bench_args])


if __name__ == "__main__":  # the bench spawns workers: nothing above may run on their import
    main()
