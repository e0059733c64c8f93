"""Counting in the bench: how often a fine-tuned run keeps the foundation's one-too-few answer.

The shipped foundation captions a picture with the right number of objects ("3 objects: ..."), and answers
"How many objects are there?" about a *description* right, but about a *picture* it answers one fewer (2 for
three objects, 3 for four). Stage 2 has to overwrite that answer. This script reads the runs of finished
``vlselect bench`` worlds (their cached predictions; nothing is recomputed) and prints, per method and budget:

* per true count n = 1-4, the share of the evaluation's "How many objects" questions answered n (right) and,
  over n = 2-4, the share answered n - 1 (the foundation's answer), mean over training seeds and worlds;
* the counting rows ("How many objects", the pool's ``count_all`` records) the method's subset held, by the number
  of objects of their scene (mean over worlds), and the table's relative score (mean over seeds and worlds);
* by the subset's counting rows about scenes of n objects (every method's subsets pooled): the share of the
  n-object questions answered right.

With ``--probe N`` it also asks the bench's base model (no fine-tuning) about N counting records of the first
world's pool that show two to four objects: to caption the picture (the number its caption starts with), "How many
objects are there?" about the picture, and the same question about the scene's description in words (no picture).

    python benchmarks/count_prior.py BENCH_OUT [BENCH_OUT ...] [--probe 100] [--json out.json]

Each BENCH_OUT is a one-world bench folder or a several-world one (its ``world-*`` folders are read).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from _bench_cache import bench_runs, bench_selections, one_stage, world_folders  # a sibling module: the scripts run from benchmarks/
from vlselect.world.vocab import CAPTION_PROMPTS, QUESTIONS, SHORT_SUFFIX

#: The evaluation's "How many objects" question (the canonical count_all template).
COUNT_ALL = QUESTIONS["count_all"][0]
ZERO_SHOT = "base model (zero-shot)"
#: Runs that are not a method's subset (listed first; left out of the table by counting rows).
SPECIAL = (ZERO_SHOT, "full pool", "clean pool")
#: Bins of counting rows about n-object scenes for the pooled table: [low, high).
BINS = ((0, 10), (10, 20), (20, 40), (40, 80), (80, 10**9))


def answer_shift(predictions: list[dict]) -> dict:
    """How a run answers the "How many objects" questions: per true count n (1-4), the share answered n (right)
    and n - 1 (one too few)."""
    by_n: dict[int, list[str]] = defaultdict(list)
    for p in predictions:
        if p["question"].split("\n")[0] != COUNT_ALL:
            continue
        by_n[int(p["answers"][0])].append(p["prediction"].strip())
    if not by_n:
        raise SystemExit("no 'How many objects' question among the predictions: not a bench count set")
    return {"right": {n: sum(a == str(n) for a in v) / len(v) for n, v in sorted(by_n.items())},
            "one_fewer": {n: sum(a == str(n - 1) for a in v) / len(v) for n, v in sorted(by_n.items())},
            "questions": {n: len(v) for n, v in sorted(by_n.items())}}


def read_world(folder: Path) -> dict:
    """One world's runs: method, budget, seed, relative score (from results.json), the count answers, and the
    counting rows of the subset it trained on."""
    res = json.loads((folder / "results.json").read_text())
    cache = folder / "cache"
    pool = json.loads((one_stage(cache, "world") / "w" / "pool.json").read_text())
    nobj = np.array([len(r["meta"]["scene"]["objects"]) if r.get("meta", {}).get("kind") == "count_all" else 0
                     for r in pool])

    def per_n(idx) -> dict[int, int]:
        got = nobj[idx]
        return {n: int((got == n).sum()) for n in (1, 2, 3, 4)}

    rows: dict[tuple[str, float], dict[int, int]] = {("full pool", 1.0): per_n(slice(None)),
                                                     (ZERO_SHOT, 0.0): per_n([])}
    for key, idx in bench_selections(cache).items():
        rows[key] = per_n(np.load(idx))
    clean = [p for p in cache.glob("clean-*") if (p / "indices.npy").is_file()]
    clean_rows = per_n(np.load(clean[0] / "indices.npy")) if len(clean) == 1 else None
    relative = {(r["method"], float(r["budget"])): r.get("relative_per_seed") or [] for r in res["rows"]}
    runs = []
    for (method, budget, seed), run in sorted(bench_runs(cache).items()):
        preds = [json.loads(line) for line in (run / "eval" / "predictions" / "count.jsonl").read_text().splitlines()
                 if line.strip()]
        seeds = res["config"]["seeds"]
        rel = relative.get((method, budget), [])
        scores = json.loads((run / "done.json").read_text())["result"]["scores"]
        runs.append({"method": method, "budget": budget, "seed": seed, "scores": scores,
                     "rows": clean_rows if method == "clean pool" else rows.get((method, budget)),
                     "relative": rel[seeds.index(seed)] if seed in seeds and seeds.index(seed) < len(rel) else None,
                     **answer_shift(preds)})
    return {"folder": str(folder), "world_seed": res["config"]["seed"], "runs": runs,
            "reference": res["reference"]["scores"], "relative_sets": res["relative_sets"]}


def seed_spread(worlds: list[dict], set_name: str = "count") -> dict[float, dict[str, float]]:
    """Per budget, the standard deviation between training seeds (pooled over every method and world with >= 2
    seeds) of: ``set_name``'s share of the full pool's score, the relative performance over the counted sets, and
    the relative performance over the counted sets without ``set_name``. Shares are 100 x score / that world's
    reference score; the relative performance is their mean over the sets."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for i, w in enumerate(worlds):
        for r in w["runs"]:
            if r["method"] not in SPECIAL:
                groups[(i, r["method"], r["budget"])].append(r)
    out: dict[float, dict[str, float]] = {}
    for b in sorted({k[2] for k in groups}):
        sums = {"set": [0.0, 0], "all": [0.0, 0], "without": [0.0, 0]}
        for (i, m, bb), rs in groups.items():
            if bb != b or len(rs) < 2:
                continue
            ref, sets = worlds[i]["reference"], worlds[i]["relative_sets"]
            if set_name not in sets:
                continue
            rest = [s for s in sets if s != set_name]
            for key, use in (("set", [set_name]), ("all", sets), ("without", rest)):
                v = np.array([np.mean([100.0 * r["scores"][s] / ref[s] for s in use]) for r in rs])
                sums[key][0] += float(((v - v.mean()) ** 2).sum())
                sums[key][1] += len(v) - 1
        if sums["all"][1]:
            out[b] = {k: (x / n) ** 0.5 for k, (x, n) in sums.items()}
    return out


def probe(folder: Path, n: int = 100) -> dict:
    """The base model of a bench world, no fine-tuning, on ``n`` counting records of its pool with two to four
    objects: per true count, the share of captions of the picture that start with the right number, of answers
    to "How many objects are there?" about the picture that are right and one too few, and of answers about the
    scene's description in words (the caption text, no picture) that are right."""
    import re

    from vlselect.evaluate.run import generate_answers
    from vlselect.models.load import load_vlm
    from vlselect.world.scene import Obj, Scene
    from vlselect.world.vocab import POSITIONS
    from vlselect.world.tasks import caption_text

    cache = folder / "cache"
    world = one_stage(cache, "world") / "w"
    base = json.loads((one_stage(cache, "warmup") / "done.json").read_text())["result"]["base_model"]
    pool = json.loads((world / "pool.json").read_text())
    recs = [r for r in pool if r.get("meta", {}).get("kind") == "count_all" and r.get("image")
            and 2 <= len(r["meta"]["scene"]["objects"]) <= 4][:n]
    if not recs:
        raise SystemExit(f"{world / 'pool.json'}: no counting record with a picture of two to four objects")
    loaded = load_vlm(base)
    truth = [len(r["meta"]["scene"]["objects"]) for r in recs]
    images = [r["image"] for r in recs]
    question = f"{COUNT_ALL}\n{SHORT_SUFFIX}"
    captions = generate_answers(loaded, [CAPTION_PROMPTS[0]] * len(recs), images, world / "images",
                                max_new_tokens=64)
    on_picture = generate_answers(loaded, [question] * len(recs), images, world / "images", max_new_tokens=8)
    scenes = [Scene(tuple(Obj(o["shape"], o["color"], o["size"], POSITIONS.index(o["pos"])) for o in r["meta"]["scene"]["objects"]),
                    r["meta"]["scene"].get("word")) for r in recs]
    on_text = generate_answers(loaded, [f"{caption_text(sc)}\n{question}" for sc in scenes], [None] * len(recs),
                               world / "images", max_new_tokens=8)

    def lead(c: str) -> int | None:
        m = re.match(r"\s*(\d+) objects?:", c)
        return int(m.group(1)) if m else None

    out = {"base": str(base), "records": len(recs), "by_count": {}}
    for k in (2, 3, 4):
        ix = [i for i, t in enumerate(truth) if t == k]
        if not ix:
            continue
        share = lambda xs, want: 100.0 * sum(xs[i].strip() == want for i in ix) / len(ix)  # noqa: E731
        out["by_count"][k] = {"n": len(ix), "caption_count_right": 100.0 * sum(lead(captions[i]) == k for i in ix) / len(ix),
                              "picture_right": share(on_picture, str(k)), "picture_one_fewer": share(on_picture, str(k - 1)),
                              "text_right": share(on_text, str(k))}
    return out


def _fmt(x, spec="{:.1f}"):
    return "-" if x is None else spec.format(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench", nargs="+", type=Path, help="vlselect bench --out folders")
    ap.add_argument("--probe", type=int, default=0, metavar="N",
                    help="also ask the base model about N counting records of the first world (0: no)")
    ap.add_argument("--json", type=Path, default=None, help="also write every run's figures here")
    a = ap.parse_args()
    folders = world_folders(a.bench)
    worlds = [read_world(f) for f in folders]
    print(f"{len(worlds)} world(s): " + ", ".join(f"{w['world_seed']} ({w['folder']})" for w in worlds))
    found = {}
    if a.probe:
        found = probe(folders[0], a.probe)
        print(f"\nthe base model ({found['base']}), no fine-tuning, on {found['records']} counting records of world "
              f"{worlds[0]['world_seed']}'s pool (%):")
        print(f"  {'objects':>8}{'records':>9}{'caption starts right':>22}{'picture: right':>16}"
              f"{'one too few':>13}{'description: right':>20}")
        for k, v in found["by_count"].items():
            print(f"  {k:>8}{v['n']:>9}{v['caption_count_right']:>22.0f}{v['picture_right']:>16.0f}"
                  f"{v['picture_one_fewer']:>13.0f}{v['text_right']:>20.0f}")

    zs = [r for w in worlds for r in w["runs"] if r["method"] == ZERO_SHOT]
    if zs:
        print("\nthe base model, no fine-tuning ('How many objects', share right / one too few, per true count):")
        for w, r in zip(worlds, zs):
            print(f"  world {w['world_seed']}: " + "  ".join(
                f"{n}: {100 * r['right'][n]:.0f} / {100 * r['one_fewer'][n]:.0f}" for n in r["right"]))

    cells: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for w in worlds:
        for r in w["runs"]:
            # the clean pool's share differs a little from world to world: one row
            cells[(r["method"], 0.95 if r["method"] == "clean pool" else r["budget"])].append(r)

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return statistics.mean(xs) if xs else None

    print("\n'How many objects' by method and budget (runs of every world; % right for 1/2/3/4 objects, % one too"
          " few for 2-4; counting rows of the subset for 1/2/3/4-object scenes, mean over worlds):")
    print(f"  {'method':<24}{'budget':>7}{'runs':>5}   {'right 1/2/3/4':<17}{'one fewer':>10}   "
          f"{'rows 1/2/3/4':<18}{'relative':>9}")
    for (m, b), rs in sorted(cells.items(), key=lambda kv: (kv[0][0] not in SPECIAL, kv[0][0], kv[0][1])):
        right = "/".join(_fmt(mean(100 * r["right"].get(n) if n in r["right"] else None for r in rs), "{:.0f}")
                         for n in (1, 2, 3, 4))
        q = [(sum(r["one_fewer"][n] * r["questions"][n] for n in (2, 3, 4) if n in r["questions"]),
              sum(r["questions"].get(n, 0) for n in (2, 3, 4))) for r in rs]
        fewer = mean(100 * x / t for x, t in q if t)
        sub = [r["rows"] for r in rs if r["rows"] is not None]
        rows = "/".join(_fmt(mean(x[n] for x in sub), "{:.0f}") for n in (1, 2, 3, 4)) if sub else "-"
        print(f"  {m:<24}{('~' if m == 'clean pool' else '') + f'{b:.2f}':>7}{len(rs):>5}   {right:<17}{_fmt(fewer, '{:.0f}'):>10}   {rows:<18}"
              f"{_fmt(mean(r['relative'] for r in rs)):>9}")

    print("\nby the subset's counting rows about scenes of n objects (every method's subsets, budgets and worlds;"
          " % of the n-object questions answered right, runs):")
    for n in (2, 3, 4):
        line = []
        for lo, hi in BINS:
            got = [100 * r["right"][n] for (m, b), v in cells.items() if m not in SPECIAL for r in v
                   if r["rows"] is not None and n in r["right"] and lo <= r["rows"][n] < hi]
            label = f"{lo}-{hi - 1}" if hi < 10**9 else f">={lo}"
            line.append(f"{label}: {_fmt(mean(got), '{:.0f}')} ({len(got)})")
        print(f"  {n} objects   " + "   ".join(line))
    spread = seed_spread(worlds)
    print("\nsd between training seeds (pooled over methods and worlds), points of relative performance:")
    for b, v in spread.items():
        print(f"  {b:.0%}: counting's share {v['set']:.1f}; the relative performance {v['all']:.1f}, "
              f"without counting {v['without']:.1f}")
    if a.json:
        a.json.write_text(json.dumps({"worlds": worlds, "probe": found or None, "seed_spread": spread}, indent=1) + "\n")
        print(f"\nwritten: {a.json}")


if __name__ == "__main__":
    sys.exit(main())
