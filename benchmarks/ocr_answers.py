"""What the bench's fine-tuned models answer to the OCR set: the format, or the word? (issue 12, eleventh stop)

For every finished run of one or more ``vlselect bench`` folders, the OCR set's answers split three ways:

- exact: the sign's word (the set's score);
- a world word: any of the world's OCR words (``vlselect.world.vocab.WORDS``), so the short answer format is
  learned, right or wrong;
- the most common answer (a tie: the alphabetically first; ``answer_skew.top_share``) and its share (a run that
  answers one word to every sign has learned the format, not the reading).

    python benchmarks/ocr_answers.py BENCH_OUT [BENCH_OUT ...] [--methods random] [--json out.json]

Each BENCH_OUT is a one-world bench folder with its cache, or a several-world one (its ``world-*`` folders). Nothing
is recomputed: the runs' predictions are read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _bench_cache import bench_runs, world_folders  # sibling modules: the scripts run from benchmarks/
from answer_skew import top_share


REFERENCES = ("full pool", "clean pool", "base model (zero-shot)")  # the bench's reference runs, never filtered out


def ocr_answers(run: Path) -> dict:
    """Exact-match share, share of answers that are a world word, and the top answer of one run's OCR set."""
    from vlselect.world.vocab import WORDS

    pred = run / "eval" / "predictions" / "ocr.jsonl"
    if not pred.is_file():
        sys.exit(f"{run}: no OCR predictions ({pred}); give a finished bench folder whose runs evaluated the ocr set")
    rows = [json.loads(line) for line in pred.read_text().splitlines() if line.strip()]
    if not rows:
        sys.exit(f"{pred}: empty; the run's evaluation did not finish — rerun the bench on that folder")
    n = len(rows)
    top, share = top_share([r["prediction"] for r in rows])
    return {"n": n, "exact": 100 * sum(r["score"] for r in rows) / n,
            "world_word": 100 * sum(r["prediction"] in WORDS for r in rows) / n,
            "top": top, "top_share": 100 * share}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("benches", nargs="+", type=Path)
    ap.add_argument("--methods", default=None, help="comma list (default: every method of the runs; the full-pool, "
                    "clean-pool and zero-shot references are always shown)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    keep = None if args.methods is None else set(args.methods.split(","))

    rows = []
    for folder in world_folders(args.benches):
        for (method, budget, seed), run in sorted(bench_runs(folder / "cache").items()):
            if keep is not None and method not in keep and method not in REFERENCES:
                continue
            rows.append({"bench": str(folder), "method": method, "budget": budget, "seed": seed, **ocr_answers(run)})
    if not rows:
        sys.exit("no finished runs in " + ", ".join(map(str, args.benches)))
    print(f"{'bench':40s} {'method':24s} {'budget':>6s} {'seed':>4s} {'exact':>6s} {'a world word':>12s}  top answer (share)")
    for r in rows:
        print(f"{r['bench'][-40:]:40s} {r['method']:24s} {r['budget']:6.2f} {r['seed']:4d} {r['exact']:6.1f} "
              f"{r['world_word']:12.1f}  {r['top']!r} ({r['top_share']:.0f}%)")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
