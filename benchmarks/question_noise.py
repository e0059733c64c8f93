"""How much of the spread between training seeds comes from the evaluation's finite question sets.

A run's score on a set is its share of right answers to that set's questions (200 per set in the full bench).
Two runs of one method and budget that differ only in the training seed differ in score for two reasons: the
models differ in what they can do, and, for a fixed ability, which questions the set happens to hold. The second
part would shrink with larger sets. For each pair of seeds (a, b) of a method and budget, the per-question
difference d_q = right_a(q) - right_b(q) has variance var(d); had the questions been drawn anew, the difference of
the two scores would vary by var(d) / n from the drawing alone, so a single run's score by var(d) / (2 n). Summed
over the counted sets as the relative performance weighs them (each set's share of the full pool, mean over the
sets) and averaged over pairs, methods and worlds, that is set against the observed variance between seeds.

    python benchmarks/question_noise.py BENCH_OUT [BENCH_OUT ...]

Each BENCH_OUT is a one-world bench folder with its cache, or a several-world one (its ``world-*`` folders).
Nothing is recomputed: the runs' cached predictions are read.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from _bench_cache import bench_runs, world_folders  # a sibling module: the scripts run from benchmarks/

SPECIAL = ("full pool", "clean pool", "base model (zero-shot)")


def question_part(right: dict[int, dict[str, np.ndarray]], reference: dict[str, float]) -> tuple[float, float]:
    """For one method and budget: ``right[seed][set]`` is the 0/1 (or partial) score of every question of the set
    in that seed's run. Returns (the variance of the relative performance between the seeds, the part of it that
    the drawing of the questions accounts for), both in squared points of relative performance."""
    seeds = sorted(right)
    sets = list(reference)
    k = len(sets)
    rel = [np.mean([100.0 * 100.0 * right[s][x].mean() / reference[x] for x in sets]) for s in seeds]
    parts = []
    for a, b in itertools.combinations(seeds, 2):
        v = 0.0
        for x in sets:
            d = 100.0 * 100.0 * (right[a][x] - right[b][x]) / reference[x]
            v += d.var(ddof=1) / len(d) / k ** 2
        parts.append(v / 2)
    return float(np.var(rel, ddof=1)), float(np.mean(parts))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench", nargs="+", type=Path, help="vlselect bench --out folders (with their caches)")
    a = ap.parse_args(argv)
    by_budget: dict[float, list[tuple[float, float]]] = defaultdict(list)
    n_questions = set()
    for folder in world_folders(a.bench):
        res = json.loads((folder / "results.json").read_text())
        ref = {x: res["reference"]["scores"][x] for x in res["relative_sets"]}
        cells: dict[tuple, dict] = defaultdict(dict)
        for (method, budget, seed), run in sorted(bench_runs(folder / "cache").items()):
            if method in SPECIAL:
                continue
            right = {}
            for x in ref:
                lines = (run / "eval" / "predictions" / f"{x}.jsonl").read_text().splitlines()
                right[x] = np.array([float(json.loads(line)["score"]) for line in lines if line.strip()])
                n_questions.add(len(right[x]))
            cells[(method, budget)][seed] = right
        for (m, b), right in cells.items():
            if len(right) >= 2:
                by_budget[b].append(question_part(right, ref))
    print(f"questions per counted set: {sorted(n_questions)}")
    print("between training seeds, relative performance (points; mean over methods and worlds):")
    for b, xs in sorted(by_budget.items()):
        obs, part = float(np.mean([x[0] for x in xs])), float(np.mean([x[1] for x in xs]))
        print(f"  {b:.0%}: variance {obs:.1f} (sd {obs ** 0.5:.1f}); from the drawing of the questions "
              f"{part:.1f} (sd {part ** 0.5:.1f}), {100 * part / obs:.0f}% of it; with sets three times as large "
              f"the sd would be {(obs - part * 2 / 3) ** 0.5:.1f}  [{len(xs)} method-budget cells]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
