"""Why ICONS's subsets skew the answers (existence records that all answer "no", colour records without "red"):
measured on a finished bench's cache.

    python benchmarks/icons_answers.py --bench OUT [--budget 0.2]

``OUT`` is the folder of a ``vlselect bench`` run that included ``icons`` (its ``cache/`` holds the warm-up
model, the pool's and the validation sets' gradients and the selections). The script prints, from those stages
only (nothing is trained or re-selected):

1. the warm-up (reference) model's answers to the validation existence questions: how many it answers "yes" and
   "no", and its accuracy on each half, read from greedy generation;
2. the validation existence gradients split by their answer: the norm of each half's mean unit vector (how
   coherent the half's directions are), their cosine, and how much of ICONS's existence target (the mean of all
   unit vectors) each half supplies;
3. ICONS's votes for the pool's existence records by answer (with the targets its selection used), their
   existence-task score when existence is a target, and the share of each answer that each target marks;
4. the answers of the existence records in the ICONS selection at the budget, beside the pool's;
5. for each answer of the colour, count, position and existence questions: its share of the pool's records, of
   ICONS's selection and of the others named by ``--compare`` (random by default), and how often the warm-up
   model gives it on the validation set against how often it is right there (does ICONS pick the answers the
   reference model under-predicts? measured: no).

Every number comes from the bench's stages as they are; nothing is recomputed with other settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from _bench_cache import method_selection, one_stage  # a sibling module: the scripts run from benchmarks/


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _answer(text: str) -> str:
    t = text.strip().lower()
    return "yes" if t.startswith("yes") else "no" if t.startswith("no") else "other"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", required=True, type=Path, help="output folder of a vlselect bench run with icons")
    ap.add_argument("--budget", type=float, default=0.2, help="budget whose selection and threshold are read")
    ap.add_argument("--task", default="exist", help="validation set / pool task to analyse")
    ap.add_argument("--answers", default="color:vqa_color,count:vqa_count,position:vqa_position,exist:exist",
                    help="validation set:pool task pairs whose answer shares are compared")
    ap.add_argument("--compare", default="random", help="other selections of the cache to set beside ICONS's in 5")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    from vlselect.features.store import FeatureStore
    from vlselect.select.icons import icons_targets, icons_task_scores, icons_votes

    cache = args.bench / "cache"
    world = one_stage(cache, "world") / "w"
    valworld = one_stage(cache, "valworld") / "w"
    warm = json.loads((one_stage(cache, "warmup") / "done.json").read_text())["result"]
    gstage, vstage = one_stage(cache, "gradients"), one_stage(cache, "val_gradients")
    pool = json.loads((world / "pool.json").read_text())
    out: dict = {"bench": str(args.bench), "budget": args.budget, "task": args.task}

    def selection(method: str) -> np.ndarray:
        return np.load(method_selection(cache, method) / f"indices_{args.budget}.npy")

    # the validation sets ICONS's selection targeted (the recipe names them since val_targets; before, all)
    chosen_targets = json.loads((method_selection(cache, "icons") / "recipe.json").read_text()).get("targets")
    out["targets"] = chosen_targets or "all"

    # 1. the warm-up model's answers on the validation set ------------------------------------------------------
    from vlselect.evaluate import evaluate

    vfile = valworld / "eval" / f"{args.task}.json"
    vset = json.loads(vfile.read_text())["samples"]
    eval_dir = args.bench / "icons_answers" / "warmup_eval"
    evaluate(warm["base_model"], [vfile], valworld / "images", eval_dir, adapter=warm["lora_dir"], progress=False,
             max_new_tokens=8)
    lines = (eval_dir / "predictions" / f"{args.task}.jsonl").read_text().splitlines()
    preds = [json.loads(x)["prediction"] for x in lines if x.strip()]
    gold = [s["answers"][0].strip().lower() for s in vset]
    said = [_answer(p) for p in preds]
    table = {g: {a: sum(1 for x, y in zip(gold, said) if x == g and y == a) for a in ("yes", "no", "other")}
             for g in ("yes", "no")}
    out["warmup_answers"] = table
    print(f"1. warm-up model on the validation '{args.task}' set ({len(vset)} questions; rows: gold, columns: said)")
    for g in ("yes", "no"):
        print(f"   gold {g:>3}: " + "  ".join(f"said {a} {table[g][a]:>3}" for a in ("yes", "no", "other")))

    # 2. the validation gradients by answer -------------------------------------------------------------------
    V = _unit(FeatureStore.open(vstage / args.task).array("gradients"))
    yes = np.array([g == "yes" for g in gold])
    target = V.mean(axis=0)
    m_yes, m_no = V[yes].mean(axis=0), V[~yes].mean(axis=0)
    part_yes, part_no = yes.mean() * m_yes, (~yes).mean() * m_no  # target = part_yes + part_no
    tn = float(np.linalg.norm(target))
    out["val"] = {"n_yes": int(yes.sum()), "n_no": int((~yes).sum()),
                  "coherence_yes": float(np.linalg.norm(m_yes)), "coherence_no": float(np.linalg.norm(m_no)),
                  "cos_yes_no": float(m_yes @ m_no / np.linalg.norm(m_yes) / np.linalg.norm(m_no)),
                  "target_norm": tn,
                  "share_of_target_yes": float(part_yes @ target / tn**2),
                  "share_of_target_no": float(part_no @ target / tn**2)}
    v = out["val"]
    print(f"2. validation gradients: {v['n_yes']} 'yes', {v['n_no']} 'no'; norm of the mean unit vector "
          f"(1 = all alike): yes {v['coherence_yes']:.3f}, no {v['coherence_no']:.3f}; cosine of the two means "
          f"{v['cos_yes_no']:+.3f}; share of the target (projection): yes {v['share_of_target_yes']:+.2f}, "
          f"no {v['share_of_target_no']:+.2f}")

    # 3. ICONS's existence score of the pool's existence records ---------------------------------------------
    G = FeatureStore.open(gstage / "store").array("gradients")
    vals = {f"val/{p.name}": FeatureStore.open(p).array("gradients") for p in sorted(vstage.iterdir())
            if p.is_dir() and (chosen_targets is None or p.name in chosen_targets)}
    targets = icons_targets(vals)
    names = [t.name for t in targets]
    scores, _ = icons_task_scores(G, targets)
    thr, mark, votes = icons_votes(scores, 100 * (1 - args.budget))
    rec = np.array([i for i, r in enumerate(pool) if r.get("task") == args.task])
    ans = np.array([_answer(pool[i]["conversations"][-1]["value"]) for i in rec])
    out["pool"] = {}
    t = names.index(args.task) if args.task in names else None
    print(f"3. ICONS's votes (targets: {', '.join(names)}) for the pool's {len(rec)} '{args.task}' records"
          + ("" if t is None else f"; its '{args.task}' score (threshold at the {100 * (1 - args.budget):.0f}th "
             f"percentile of all rows: {thr[t]:+.4f})"))
    for a in ("yes", "no"):
        rows = rec[ans == a]
        d = {"n": int(len(rows)), "mean_votes": float(votes[rows].mean())}
        if t is not None:
            d.update(mean_score=float(scores[rows, t].mean()), above_threshold=int(mark[rows, t].sum()))
        out["pool"][a] = d
        print(f"   answer {a:>3}: {d['n']:>4} records, mean votes {d['mean_votes']:.2f} of {len(names)}"
              + ("" if t is None else f", mean score {d['mean_score']:+.4f}, {d['above_threshold']:>4} above the "
                 "threshold"))
    if t is not None:
        other = np.setdiff1d(np.arange(len(pool)), rec)
        print(f"   (every other record: mean '{args.task}' score {scores[other, t].mean():+.4f})")
    out["votes_by_task"] = {}
    print(f"   share (%) of the '{args.task}' records each voting task marks (above its own threshold), by answer:")
    for k, name in enumerate(names):
        shares = {a: float(100 * mark[rec[ans == a], k].mean()) for a in ("yes", "no")}
        out["votes_by_task"][name] = shares
        print(f"      {name:>16}: yes {shares['yes']:5.1f}, no {shares['no']:5.1f}")

    # 4. the selection ---------------------------------------------------------------------------------------
    idx = selection("icons")
    chosen = np.intersect1d(idx, rec)
    ca = [_answer(pool[i]["conversations"][-1]["value"]) for i in chosen]
    out["selection"] = {a: ca.count(a) for a in ("yes", "no")}
    out["pool_answers"] = {a: int((ans == a).sum()) for a in ("yes", "no")}
    print(f"4. ICONS's {args.budget:.0%} selection holds {len(chosen)} '{args.task}' records: "
          f"{out['selection']['yes']} yes, {out['selection']['no']} no (pool: {out['pool_answers']['yes']} yes, "
          f"{out['pool_answers']['no']} no)")

    # 5. answer shares per task: pool, ICONS, other methods, and the warm-up model on the validation set -------
    others = {m: selection(m) for m in args.compare.split(",") if m}
    pairs = [p.split(":") for p in args.answers.split(",")]
    evaluate(warm["base_model"], [valworld / "eval" / f"{v}.json" for v, _ in pairs], valworld / "images", eval_dir,
             adapter=warm["lora_dir"], progress=False, max_new_tokens=8)
    out["answers"] = {}
    cols = ["icons", *others]
    print(f"5. answer shares (%) at {args.budget:.0%}: pool / {' / '.join(cols)} records; the warm-up model on the "
          "validation set: how often it gives the answer / how often the answer is right")
    for vname, ptask in pairs:
        recs = np.array([i for i, r in enumerate(pool) if r.get("task") == ptask])
        text = {int(i): pool[i]["conversations"][-1]["value"].strip().lower() for i in recs}
        vs = json.loads((valworld / "eval" / f"{vname}.json").read_text())["samples"]
        vgold = [s["answers"][0].strip().lower() for s in vs]
        vsaid = [json.loads(x)["prediction"].strip().lower() for x in
                 (eval_dir / "predictions" / f"{vname}.jsonl").read_text().splitlines() if x.strip()]
        counts: dict[str, int] = {}
        for v in text.values():
            counts[v] = counts.get(v, 0) + 1
        values = sorted(counts, key=lambda a: -counts[a])[:8]
        picked = {m: [text[int(i)] for i in np.intersect1d(sel, recs)] for m, sel in {"icons": idx, **others}.items()}
        rows = {}
        for a in values:
            rows[a] = {"pool": 100 * counts[a] / len(text),
                       **{m: 100 * v.count(a) / max(1, len(v)) for m, v in picked.items()},
                       "warmup_says": 100 * sum(p.startswith(a) for p in vsaid) / len(vsaid),
                       "gold": 100 * vgold.count(a) / len(vgold)}
        out["answers"][vname] = {"pool_task": ptask, **{f"{m}_records": len(v) for m, v in picked.items()},
                                 "rows": rows}
        print(f"   {vname} ({ptask}: " + ", ".join(f"{m} {len(v)} records" for m, v in picked.items()) + ")")
        for a, r in rows.items():
            print(f"      {a[:14]:>14}: {r['pool']:5.1f} / " + " / ".join(f"{r[m]:5.1f}" for m in cols)
                  + f"   warm-up says {r['warmup_says']:5.1f}, right answer {r['gold']:5.1f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
