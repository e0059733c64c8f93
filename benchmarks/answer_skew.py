"""How one question kind's answers are spread in each subset, and how the models trained on it answer that kind.

A gradient top-k (LESS, ICONS) keeps the rows whose gradients agree with the target's mean, and among short
answers those are rows with the same answer (``icons_answers.py``); a model fine-tuned on them then gives that
answer to every question of the kind. This script measures it for one kind (``pos_of`` by default: "Where is the
purple circle?") on finished ``vlselect bench`` runs:

- the subset: how many rows of the kind it holds, its most common answer and that answer's share;
- the runs trained on it (every training seed): accuracy on the evaluation questions of the kind (told apart from
  the set's other kinds by the question templates, ``vlselect.world.vocab.QUESTIONS``), their most common
  prediction and its share.

    python benchmarks/answer_skew.py BENCH_OUT [BENCH_OUT ...] [--kind pos_of] [--budget 0.2]
        [--methods random,less,less_support,less_tive] [--json out.json]

Each BENCH_OUT is a one-world bench folder with its cache, or a several-world one (its ``world-*`` folders). Nothing
is recomputed: the selections, the pool and the runs' predictions are read.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from _bench_cache import bench_runs, bench_selections, one_stage, world_folders  # a sibling module: the scripts run from benchmarks/


def template_pattern(kind: str) -> re.Pattern:
    """A regex matching the first line of any question of ``kind`` (its templates, a ``{slot}`` = any words)."""
    from vlselect.world.vocab import QUESTIONS

    if kind not in QUESTIONS:
        sys.exit(f"unknown question kind {kind!r}; the world's kinds: {', '.join(QUESTIONS)}")
    alts = [re.escape(t).replace(r"\{", "{").replace(r"\}", "}") for t in QUESTIONS[kind]]
    alts = [re.sub(r"\{[a-z_]+\}", r"[a-z ]+", a) for a in alts]
    return re.compile("^(?:" + "|".join(alts) + ")$")


def top_share(answers: list[str]) -> tuple[str | None, float]:
    """The most common answer (ties: the alphabetically first) and its share; (None, 0.0) for no answers."""
    if not answers:
        return None, 0.0
    c = Counter(answers)
    best = min(c, key=lambda a: (-c[a], a))
    return best, c[best] / len(answers)


def runs_on_kind(predictions: list[dict], pattern: re.Pattern) -> tuple[float, str | None, float, int]:
    """Accuracy (0-100, mean score) on the questions of the kind, the most common prediction, its share, and the
    number of questions."""
    mine = [p for p in predictions if pattern.match(p["question"].split("\n")[0])]
    if not mine:
        return float("nan"), None, 0.0, 0
    top, share = top_share([p["prediction"].strip() for p in mine])
    return 100.0 * float(np.mean([p["score"] for p in mine])), top, share, len(mine)


def read_world(folder: Path, kind: str, budget: float, methods: list[str], set_name: str) -> list[dict]:
    cache = folder / "cache"
    pool = json.loads((one_stage(cache, "world") / "w" / "pool.json").read_text())
    kinds = np.array([r.get("meta", {}).get("kind", "") for r in pool])
    answers = [r["conversations"][-1]["value"].strip() for r in pool]
    sels, runs = bench_selections(cache), bench_runs(cache)
    pattern = template_pattern(kind)
    out = []
    for m in methods:
        if (m, budget) not in sels:
            sys.exit(f"{folder}: no selection of {m} at {budget:g}; its selections: "
                     f"{sorted({k[0] for k in sels})}")
        idx = np.load(sels[(m, budget)])
        rows = [answers[i] for i in idx if kinds[i] == kind]
        top, share = top_share(rows)
        seeds = sorted(s for (mm, b, s) in runs if mm == m and b == budget)
        per_seed = []
        for s in seeds:
            f = runs[(m, budget, s)] / "eval" / "predictions" / f"{set_name}.jsonl"
            preds = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            per_seed.append(runs_on_kind(preds, pattern))
        out.append({"world": folder.name, "method": m, "rows": len(rows), "top_answer": top, "top_share": share,
                    "accuracy": float(np.mean([a for a, *_ in per_seed])) if per_seed else float("nan"),
                    "top_prediction": [t for _, t, _, _ in per_seed],
                    "top_prediction_share": float(np.mean([sh for _, _, sh, _ in per_seed])) if per_seed else 0.0,
                    "questions": per_seed[0][3] if per_seed else 0, "seeds": seeds})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("benches", nargs="+", type=Path, help="finished vlselect bench folders (with their caches)")
    ap.add_argument("--kind", default="pos_of", help="question kind (vlselect.world.vocab.QUESTIONS)")
    ap.add_argument("--set", default=None, help="evaluation set holding the kind (default: the one EVAL_SETS names)")
    ap.add_argument("--budget", type=float, default=0.2)
    ap.add_argument("--methods", default="random,less,less_support,less_tive")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from vlselect.world.build import EVAL_SETS

    set_name = args.set or next((n for n, (_, kinds, _) in EVAL_SETS.items() if args.kind in kinds), None)
    if set_name is None:
        sys.exit(f"no evaluation set asks {args.kind!r}; pass --set")
    methods = [m for m in args.methods.split(",") if m]
    rows = [r for f in world_folders(args.benches) for r in read_world(f, args.kind, args.budget, methods, set_name)]
    print(f"{args.kind} rows of each subset at {args.budget:g} and its most common answer; the runs trained on it "
          f"(mean over seeds) on the {set_name} set's {args.kind} questions")
    print(f"  {'world':9s} {'method':14s} {'rows':>5s}  {'top answer (share)':26s} {'accuracy':>8s}  "
          "top prediction per seed (mean share)")
    for r in rows:
        top = f"{r['top_answer']} ({100 * r['top_share']:.0f}%)"
        preds = ", ".join(map(str, r["top_prediction"]))
        print(f"  {r['world']:9s} {r['method']:14s} {r['rows']:5d}  {top:26s} {r['accuracy']:8.1f}  "
              f"{preds} ({100 * r['top_prediction_share']:.0f}%)")
    if args.json:
        args.json.write_text(json.dumps({"kind": args.kind, "set": set_name, "budget": args.budget, "rows": rows},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
