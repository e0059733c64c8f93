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

``--objects`` sets the four kinds that ask for one object's attribute (colour of a shape, colour at a position,
position of a shape, shape at a position) beside the **random-object answer**: the attribute of an object of the
picture drawn at random (its expected accuracy, from the evaluation scenes, re-planned from the world's recipe),
with the share of the run's answers that name an attribute of some object in the picture, and its accuracy on
one-object pictures and on the others. A model that names what is there without finding the object asked for
scores the random-object answer.

``--answers`` prints, per kind, what the runs answer (the most common answers and their shares, over the runs)
beside the evaluation set's own answers (balanced by the world's planner) and the answers of the bench pool's
records of that kind (``cache/world-*/w/pool.json``, the training data): a fine-tune that learned a kind's answer
prior instead of the skill answers with the pool's majority.
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


#: a run's recipe keys that tell one training run of a recipe from another (the rest is the recipe itself)
PER_RUN = ("method", "budget", "seed", "indices")
#: the bench config's fields that a run's training recipe copies
TRAIN_FIELDS = ("epochs", "lr", "lora_r", "batch_size", "max_new_tokens", "modules_to_save", "adapter", "length_group",
                "projector_lr", "lora_targets")


def runs(cache: Path, method: str, budget: float) -> list[Path]:
    """The runs of ``method`` at ``budget`` with saved predictions, of one fine-tuning recipe: a cache may hold runs
    of several (a bench re-run with another ``--lr``, or a copied cache); those of the bench's ``results.json``
    beside the cache are kept, and runs of differing recipes without one are refused, never averaged."""
    found = []
    for rec in sorted(cache.glob("run-*/recipe.json")):
        r = json.loads(rec.read_text())
        if r.get("method") == method and abs(float(r.get("budget", -1)) - budget) < 1e-9 and \
                (rec.parent / "eval" / "predictions").is_dir():
            found.append((rec.parent, r))
    res = cache.parent / "results.json"
    if res.exists():
        cfg = json.loads(res.read_text()).get("config", {})
        # a recipe without projector_lr (lora_targets) trained the projector at lr (LoRA on every linear layer): the
        # bench writes them only when set
        want = {k: cfg.get(k) for k in TRAIN_FIELDS if k in cfg or k in ("projector_lr", "lora_targets")}
        found = [(d, r) for d, r in found if all(r.get(k) == v for k, v in want.items() if k in r or v is not None)]
    recipes = {json.dumps({k: v for k, v in r.items() if k not in PER_RUN}, sort_keys=True) for _, r in found}
    if len(recipes) > 1:
        rs = [json.loads(x) for x in recipes]
        keys = sorted({k for a in rs for k in set(a) | set(rs[0]) if a.get(k) != rs[0].get(k)})
        raise SystemExit(f"{cache}: the {method!r} runs at {budget:g} are of {len(recipes)} fine-tuning recipes "
                         f"(they differ in {', '.join(keys)}) and there is no results.json beside the cache to choose "
                         "one; give the folder of a single bench run")
    return [d for d, _ in found]


def kind_scores(run: Path) -> dict[str, tuple[float, int]]:
    """kind → (mean score 0-100, samples) of one run's predictions."""
    acc: dict[str, list[float]] = defaultdict(list)
    for f in sorted((run / "eval" / "predictions").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            p = json.loads(line)
            acc[kind_of(f.stem, p["id"])].append(float(p["score"]))
    return {k: (100 * sum(v) / len(v), len(v)) for k, v in acc.items()}


def _answers(run: Path, pick) -> dict[str, Counter]:
    """kind → Counter of ``pick(prediction row)`` over a run's saved predictions (grounding, scored by IoU, left
    out)."""
    from vlselect.world.build import EVAL_SETS

    ans: dict[str, Counter] = defaultdict(Counter)
    for f in sorted((run / "eval" / "predictions").glob("*.jsonl")):
        if EVAL_SETS[f.stem][0] == "iou":
            continue
        for line in f.read_text().splitlines():
            p = json.loads(line)
            ans[kind_of(f.stem, p["id"])][pick(p)] += 1
    return ans


def gold_answers(run: Path) -> dict[str, Counter]:
    """kind → Counter of the evaluation set's canonical answers (grounding left out)."""
    return _answers(run, lambda p: str(p["answers"][0] if p.get("answers") else ""))


def majority(run: Path) -> dict[str, float]:
    """kind → share (0-100) of its most common canonical answer: the best constant answer's accuracy (not for
    grounding, scored by IoU: its chance is 0, as the bench has it)."""
    return {k: 100 * c.most_common(1)[0][1] / sum(c.values()) for k, c in gold_answers(run).items()}


def predicted_answers(run: Path) -> dict[str, Counter]:
    """kind → Counter of the run's answers (as generated, stripped; grounding left out)."""
    return _answers(run, lambda p: str(p["prediction"]).strip())


def pool_answers(cache: Path) -> dict[str, Counter]:
    """kind → Counter of the answers of the bench pool's records of that kind (the first answer of each record; the
    world folder the bench made in its cache). A cache that holds several world folders (made by other code
    versions) is read when their pools are byte-identical and refused when they differ."""
    import hashlib

    pools = sorted(cache.glob("world-*/w/pool.json"))
    texts = {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in pools}
    if len(texts) != 1:
        raise SystemExit(f"{cache}: {len(texts)} different bench pools ({', '.join(str(p) for p in texts.values())}); "
                         "--answers needs the cache of one bench world")
    out: dict[str, Counter] = defaultdict(Counter)
    for r in json.loads(pools[0].read_text()):
        gpt = [t["value"] for t in r["conversations"] if t["from"] == "gpt"]
        if gpt:
            out[r.get("meta", {}).get("kind", r["task"])][gpt[0].strip()] += 1
    return out


def _shares(c: Counter, top: int = 4) -> str:
    n = sum(c.values())
    return ", ".join(f"{a} {100 * k / n:.0f}%" for a, k in c.most_common(top)) if n else "-"


#: kinds that ask for one object's attribute: kind → the attribute (of :class:`vlselect.world.scene.Obj`)
ONE_OBJECT = {"color_of_shape": "color", "color_at_pos": "color", "pos_of": "pos", "shape_at_pos": "shape"}


def object_stats(run: Path, sets: dict, pictures: list) -> dict[str, dict[str, float]]:
    """For the :data:`ONE_OBJECT` kinds of one run: accuracy, the random-object answer's expected accuracy, the share
    of answers naming an attribute of an object in the picture, accuracy on one-object pictures and on the others
    (all 0-100); ``sets``/``pictures`` as :func:`vlselect.world.build.plan_eval` returns them for the run's world."""
    acc: dict[str, dict[str, list[float]]] = {}
    for f in sorted((run / "eval" / "predictions").glob("*.jsonl")):
        if f.stem not in sets:
            continue
        for line in f.read_text().splitlines():
            p = json.loads(line)
            i = int(p["id"].rsplit("_", 1)[1])
            smp = sets[f.stem][i]
            if p.get("question") is not None and p["question"] != smp["qa"].prompt:
                # the world re-planned from the run's recipe is not the one the run was scored on (other code)
                raise SystemExit(f"{run}: {f.stem} sample {p['id']} asked {p['question']!r}, but the re-planned world "
                                 f"asks {smp['qa'].prompt!r}; --objects needs the code that made the bench")
            attr = ONE_OBJECT.get(smp["kind"])
            if attr is None:
                continue
            vals = [str(getattr(o, attr)).lower() for o in pictures[smp["picture"]].scene.objects]
            a = acc.setdefault(smp["kind"], {"model": [], "random_object": [], "names_an_object": [], "one": [],
                                             "several": []})
            a["model"].append(float(p["score"]))
            a["random_object"].append(sum(v == smp["qa"].answer.lower() for v in vals) / len(vals))
            a["names_an_object"].append(float(str(p["prediction"]).strip().lower() in vals))
            a["one" if len(vals) == 1 else "several"].append(float(p["score"]))
    return {k: {m: (100 * sum(v) / len(v) if v else float("nan")) for m, v in a.items()} for k, a in acc.items()}


def world_plan(run: Path):
    """The evaluation sets and pictures of the world a run was scored on (re-planned from its recipe's world)."""
    from vlselect.world.build import WorldConfig, plan_eval

    w = json.loads((run / "recipe.json").read_text()).get("world")
    if not w:
        raise SystemExit(f"{run}: its recipe.json names no world (seed, eval_size, image_size); not a bench run")
    return plan_eval(WorldConfig(seed=w["seed"], eval_size=w["eval_size"], image_size=w["image_size"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="bench folders or world folders")
    ap.add_argument("--method", default="full pool", help='a method as the bench names it ("full pool", random, ...)')
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--objects", action="store_true", help="the one-object kinds against the random-object answer")
    ap.add_argument("--answers", action="store_true", help="what the runs answer per kind, beside the evaluation "
                    "set's answers and the bench pool's")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    per_run, chance, objs = [], {}, []
    said: dict[str, Counter] = defaultdict(Counter)
    gold: dict[str, Counter] = defaultdict(Counter)
    pooled: dict[str, Counter] = defaultdict(Counter)
    for c in caches(args.paths):
        rs = runs(c, args.method, args.budget)
        if not rs:
            raise SystemExit(f"{c}: no run of {args.method!r} at budget {args.budget} with saved predictions")
        plan = world_plan(rs[0]) if args.objects else None
        for r in rs:
            per_run.append((f"{c.parent.name}/{r.name}", kind_scores(r)))
            chance = chance or majority(r)
            if plan is not None:
                objs.append(object_stats(r, *plan))
            if args.answers:
                for k, cnt in predicted_answers(r).items():
                    said[k] += cnt
                for k, cnt in gold_answers(r).items():
                    gold[k] += cnt
        if args.answers:
            for k, cnt in pool_answers(c).items():
                pooled[k] += cnt
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
    mean_objs = {}
    if objs:
        print("\none object's attribute (mean over the runs): the model, the random-object answer, answers naming an "
              "object there, the model on one-object pictures / on the others")
        for k in ONE_OBJECT:
            rows = [o[k] for o in objs if k in o]
            if not rows:
                continue
            mean_objs[k] = {m: sum(r[m] for r in rows) / len(rows) for m in rows[0]}
            m = mean_objs[k]
            print(f"{k:15s} model {m['model']:5.1f}  random object {m['random_object']:5.1f}  names an object there "
                  f"{m['names_an_object']:5.1f}  one object {m['one']:5.1f} / several {m['several']:5.1f}")
    if args.answers:
        print("\nanswers per kind (most common, share): the runs', the evaluation set's, the bench pool's")
        for name, (_, kinds, _) in EVAL_SETS.items():
            for k in kinds:
                if k in said:
                    print(f"{k:15s} runs: {_shares(said[k]):44s} evaluation: {_shares(gold[k]):44s} "
                          f"pool: {_shares(pooled[k])}")
    if args.json:
        Path(args.json).write_text(json.dumps({"method": args.method, "budget": args.budget,
                                               "runs": [n for n, _ in per_run], "kinds": out,
                                               "one_object": mean_objs}, indent=1))


if __name__ == "__main__":
    main()
