#!/usr/bin/env python
"""Scores by kind of question inside each evaluation set, from a finished bench's saved predictions (issue 12).

Three of the bench's sets mix two kinds of question (:data:`vlselect.world.build.EVAL_SETS`): counting (all objects,
or objects of a shape), position (where is a named object, or which shape is at a position) and multiple choice
(colour of a shape, or shape at a position); the sample at index i of a set asks its set's kind ``i % k`` (the
world's evaluation planner alternates them). A set counted as learned can be learned in one kind only; this script
says which, for every run of a method at a budget (mean over its seeds, and each seed), beside each kind's
majority-answer share (the best constant answer; the bench's chance level of a kind).

    python benchmarks/scores_by_kind.py BENCH_OR_WORLD [...] [--method "full pool"] [--budget 1.0]

A bench folder (``world-N`` folders with ``cache/``) or a world folder; nothing is recomputed.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path


def kind_of(set_name: str, sample_id: str) -> str:
    from vlselect.world.build import EVAL_SETS

    kinds = EVAL_SETS[set_name][1]
    return kinds[int(sample_id.rsplit("_", 1)[1]) % len(kinds)]


def caches(paths: list[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if (p / "cache").is_dir():
            out.append(p / "cache")
        worlds = sorted(p.glob("world-*/cache"))
        out.extend(worlds)
        if not (p / "cache").is_dir() and not worlds:
            raise SystemExit(f"{p}: neither a bench folder (world-N/cache) nor a world folder (cache/)")
    return out


def runs(cache: Path, method: str, budget: float) -> list[Path]:
    found = []
    for rec in sorted(cache.glob("run-*/recipe.json")):
        r = json.loads(rec.read_text())
        if r.get("method") == method and abs(float(r.get("budget", -1)) - budget) < 1e-9 and \
                (rec.parent / "eval" / "predictions").is_dir():
            found.append(rec.parent)
    return found


def kind_scores(run: Path) -> dict[str, tuple[float, int]]:
    """kind → (mean score 0-100, samples) of one run's predictions."""
    acc: dict[str, list[float]] = defaultdict(list)
    for f in sorted((run / "eval" / "predictions").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            p = json.loads(line)
            acc[kind_of(f.stem, p["id"])].append(float(p["score"]))
    return {k: (100 * sum(v) / len(v), len(v)) for k, v in acc.items()}


def majority(run: Path) -> dict[str, float]:
    """kind → share (0-100) of its most common canonical answer: the best constant answer's accuracy (not for
    grounding, scored by IoU: its chance is 0, as the bench has it)."""
    from vlselect.world.build import EVAL_SETS

    ans: dict[str, Counter] = defaultdict(Counter)
    for f in sorted((run / "eval" / "predictions").glob("*.jsonl")):
        if EVAL_SETS[f.stem][0] == "iou":
            continue
        for line in f.read_text().splitlines():
            p = json.loads(line)
            ans[kind_of(f.stem, p["id"])][str(p["answers"][0] if p.get("answers") else "")] += 1
    return {k: 100 * c.most_common(1)[0][1] / sum(c.values()) for k, c in ans.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="bench folders or world folders")
    ap.add_argument("--method", default="full pool", help='a method as the bench names it ("full pool", random, ...)')
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    per_run, chance = [], {}
    for c in caches(args.paths):
        rs = runs(c, args.method, args.budget)
        if not rs:
            raise SystemExit(f"{c}: no run of {args.method!r} at budget {args.budget} with saved predictions")
        for r in rs:
            per_run.append((f"{c.parent.name}/{r.name}", kind_scores(r)))
            chance = chance or majority(r)
    from vlselect.world.build import EVAL_SETS

    print(f"{args.method} at {args.budget:g}: {len(per_run)} runs ({', '.join(n for n, _ in per_run)})")
    print(f"{'set':15s} {'kind':15s} {'majority':>8s} {'mean':>6s}   per run")
    out = {}
    for name, (_, kinds, _) in EVAL_SETS.items():
        for k in kinds:
            vals = [s[k][0] for _, s in per_run if k in s]
            if not vals:  # a run evaluated without this set
                continue
            m = sum(vals) / len(vals)
            out[k] = {"set": name, "majority": chance.get(k, 0.0), "mean": m, "runs": vals}
            print(f"{name:15s} {k:15s} {chance[k] if k in chance else 0.0:8.1f} {m:6.1f}   "
                  + " ".join(f"{v:5.1f}" for v in vals))
    if args.json:
        Path(args.json).write_text(json.dumps({"method": args.method, "budget": args.budget,
                                               "runs": [n for n, _ in per_run], "kinds": out}, indent=1))


if __name__ == "__main__":
    main()
