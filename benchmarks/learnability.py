"""Is a skill learnable by the bench's model at all? Fine-tune the shipped foundation on a pool of ONE task.

The full bench's pool holds 500-1,200 records per task and the full pool learns four of the nine evaluation
sets (benchmarks/RESULTS.md). Whether a set that is not learned is short of data or out of the model's reach is
measured here: a world of ``--size`` records of one task (``--task``, a pool task of the world: exist, mc, ocr,
grounding, vqa_count, ...), the bench's stage-2 recipe (LoRA r=16 on every linear layer of the language model,
projector in full, vision tower frozen, lr 1e-3, batch 32, the bench's batch on the first foundation (it is 8 now); ``--adapter full`` and ``--epochs`` to vary it), then
the world's nine evaluation sets. Every row prints the set's score, its chance level (the best constant answer, as
the bench computes it) and whether it is learned (10+ points above chance, the bench's rule).

``--task exist`` also scores existence by kind of question on the same evaluation pictures: a present object
(answer yes), an object whose colour and shape are both absent ("easy no"), colour absent, shape absent, and the
evaluation set's own kind (colour or shape present, the pair absent): a model that answers from the picture
gets the easy ones right first.

``--probe`` trains nothing: it asks the model (``--base``, default the shipped foundation) every question kind of
the world about *descriptions* of 100 held-out scenes per kind and prints the share answered right (what its
language model reads, before any picture).

``--reading exist`` (or ``mc``, or ``color``: the colour of the one object of a shape) asks the question about a
*description* of the scene instead of a picture (text only: scene caption, then the question), ``--size`` dedicated
records, the language model trained in full: can the language model do it at all, without the vision side? With
``color`` (and with ``--probe``) the answers are set beside the random-object answer: the colour of an object of the
description drawn at random.

One thread; each run prints its training time.

    python benchmarks/learnability.py --task exist --size 10000
    python benchmarks/learnability.py --task exist --size 10000 --epochs 3
    python benchmarks/learnability.py --reading exist --size 20000 --lr 3e-4
    python benchmarks/learnability.py --probe [--base MODEL]
    python benchmarks/learnability.py --task vqa_color --size 40000 --adapter projector --base FOUNDATION
    python benchmarks/learnability.py --objects-of learnability-out/vqa_color_40000_e1_projector
    python benchmarks/learnability.py --task exist --size 10000 \
        --base learnability-out/read_exist_20000_e1_full/train/final      # that language model, then pictures
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

KIND_SETS = ("count", "position", "mc")  # the evaluation sets of two kinds of question
QUESTION = "Is there a {c} {s} in the image?\nAnswer the question using a single word or phrase."


def exist_variants(seed: int, eval_size: int, image_size: int, out: Path) -> list[Path]:
    """Existence questions of five kinds on the pictures of the world's ``exist`` evaluation set."""
    from vlselect.world.build import WorldConfig, plan_eval
    from vlselect.world.vocab import COLOR_NAMES, SHAPES

    sets, pics = plan_eval(WorldConfig(seed=seed, eval_size=eval_size, image_size=image_size))
    rng = np.random.default_rng(5)
    kinds: dict[str, list] = {"exist_yes": [], "exist_easy_no": [], "exist_colour_absent": [],
                              "exist_shape_absent": [], "exist_pair_absent": []}
    for k, smp in enumerate(sets["exist"]):
        sc = pics[smp["picture"]].scene
        img = f"eval_exist_{k:04d}.png"
        cols, shapes = {o.color for o in sc.objects}, {o.shape for o in sc.objects}
        taken = {(o.color, o.shape) for o in sc.objects}
        o = sc.objects[int(rng.integers(0, len(sc.objects)))]
        kinds["exist_yes"].append((img, o.color, o.shape, "yes"))
        absent_c = [c for c in COLOR_NAMES if c not in cols]
        absent_s = [s for s in SHAPES if s not in shapes]
        if absent_c and absent_s:
            kinds["exist_easy_no"].append((img, absent_c[rng.integers(len(absent_c))],
                                           absent_s[rng.integers(len(absent_s))], "no"))
        if absent_c:
            kinds["exist_colour_absent"].append((img, absent_c[rng.integers(len(absent_c))], o.shape, "no"))
        if absent_s:
            kinds["exist_shape_absent"].append((img, o.color, absent_s[rng.integers(len(absent_s))], "no"))
        hard_s = [s for s in SHAPES if (o.color, s) not in taken and s in shapes]
        hard_c = [c for c in COLOR_NAMES if (c, o.shape) not in taken and c in cols]
        if hard_s:
            kinds["exist_pair_absent"].append((img, o.color, hard_s[rng.integers(len(hard_s))], "no"))
        elif hard_c:
            kinds["exist_pair_absent"].append((img, hard_c[rng.integers(len(hard_c))], o.shape, "no"))
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, rows in kinds.items():
        samples = [{"id": f"{name}_{i}", "image": img, "question": QUESTION.format(c=c, s=s), "answers": [a]}
                   for i, (img, c, s, a) in enumerate(rows)]
        p = out / f"{name}.json"
        p.write_text(json.dumps({"name": name, "metric": "exact_match", "samples": samples}))
        files.append(p)
    return files


def reading_world(kind: str, size: int, out: Path) -> tuple[Path, Path]:
    """A text-only pool of ``size`` (description, question) records of one kind, and 300 held-out ones."""
    from vlselect.world.scene import sample_scene
    from vlselect.world.tasks import ask_color_of_shape, ask_exist, ask_mc_color, caption_text

    ask = {"exist": ask_exist, "mc": ask_mc_color, "color": ask_color_of_shape}[kind]

    def make(rng, n: int, canonical: bool) -> list:
        rows = []
        while len(rows) < n:
            scene = sample_scene(rng)
            qa = ask(scene, rng, canonical=canonical)
            if qa is not None:
                rows.append((caption_text(scene), qa))
        return rows

    out.mkdir(parents=True, exist_ok=True)
    pool = [{"id": f"read_{i}", "task": f"read_{kind}",
             "conversations": [{"from": "human", "value": f"{c}\n{qa.prompt}"}, {"from": "gpt", "value": qa.answer}]}
            for i, (c, qa) in enumerate(make(np.random.default_rng(1), size, False))]
    (out / "pool.json").write_text(json.dumps(pool))
    held = [{"id": f"e{i}", "question": f"{c}\n{qa.prompt}", "answers": [qa.answer]}
            for i, (c, qa) in enumerate(make(np.random.default_rng(99), 300, True))]
    ev = out / f"read_{kind}.json"
    ev.write_text(json.dumps({"name": f"read_{kind}", "metric": "exact_match", "samples": held}))
    return out / "pool.json", ev


def probe_sets(out: Path, per_kind: int = 100) -> list[Path]:
    """One exact-match set per question kind of the text pool: a held-out scene's description, then the question."""
    from vlselect.world.make import TEXT_QA_KINDS
    from vlselect.world.scene import sample_scene
    from vlselect.world.tasks import ASK, caption_text

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(12345)
    files = []
    for kind in TEXT_QA_KINDS:
        rows = []
        while len(rows) < per_kind:
            scene = sample_scene(rng, word=(kind == "ocr"))
            qa = ASK[kind](scene, rng, canonical=True)
            if qa is not None:
                rows.append({"id": f"{kind}_{len(rows)}", "question": f"{caption_text(scene)}\n{qa.prompt}",
                             "answers": [qa.answer]})
        f = out / f"probe_{kind}.json"
        f.write_text(json.dumps({"name": f"probe_{kind}", "metric": "exact_match", "samples": rows}))
        files.append(f)
    return files


def colour_against_random_object(predictions: Path) -> dict[str, float]:
    """The probe's "colour of a shape" answers against the random-object answer: the colour of an object of the
    description drawn at random (expected accuracy), the share of answers naming a colour the description names, and
    accuracy on one-object and on several-object descriptions (all %). Printed, and returned."""
    import re

    from vlselect.world.vocab import COLOR_NAMES

    base, named, one, several = [], [], [], []
    for line in predictions.read_text().splitlines():
        r = json.loads(line)
        desc = r["question"].split("\n")[0].lower()
        cols = [w for w in re.findall(r"[a-z]+", desc) if w in COLOR_NAMES]
        base.append(sum(c == r["answers"][0] for c in cols) / len(cols))
        named.append(float(str(r["prediction"]).strip().lower() in cols))
        (one if len(cols) == 1 else several).append(float(r["score"]))
    mean = lambda v: 100 * sum(v) / len(v) if v else float("nan")  # noqa: E731
    out = {"random_object": mean(base), "names_one_there": mean(named), "one_object": mean(one),
           "several": mean(several)}
    print(f"\ncolour of a shape, from a description: random-object answer {out['random_object']:.1f}, answers naming a "
          f"colour of the description {out['names_one_there']:.0f}, right on one-object descriptions "
          f"{out['one_object']:.0f} ({len(one)}), on the others {out['several']:.0f} ({len(several)})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", help="pool task of the world to train on alone (exist, mc, ocr, grounding, ...)")
    what.add_argument("--reading", choices=("exist", "mc", "color"),
                      help="text only: the question about a description (color: the colour of the one object of a shape)")
    what.add_argument("--probe", action="store_true", help="train nothing: read every question kind off descriptions")
    what.add_argument("--objects-of", type=Path, default=None, metavar="RUN",
                      help="train nothing: a finished --task run's one-object kinds against the random-object answer")
    ap.add_argument("--size", type=int, default=10000, help="records of that task (default 10,000)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32,
                    help="32: the rows of 2026-12-03 (the bench's batch then); the bench fine-tunes at 8 since 2026-12-04")
    ap.add_argument("--adapter", choices=("lora", "full", "projector"), default=None,
                    help="lora (the bench's recipe; default for --task), full (default for --reading) or projector "
                         "(the projector alone, LLaVA-1.5 stage 1's: can the frozen language model's skill be reached "
                         "over pictures?)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base", default=None, help="model to fine-tune (default: the shipped foundation), e.g. the "
                    "final/ folder of a --reading run, to chain a text curriculum and a picture task")
    ap.add_argument("--out", type=Path, default=Path("learnability-out"))
    a = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from vlselect.bench.run import chance_levels
    from vlselect.evaluate import evaluate
    from vlselect.models.foundation import foundation_path
    from vlselect.train import train_lora
    from vlselect.world import make_world

    base = str(a.base or foundation_path())
    if a.objects_of:
        return print_objects(a.objects_of, a.seed)
    if a.probe:
        files = probe_sets(a.out / "probe")
        r = evaluate(base, [str(f) for f in files], str(a.out / "probe"), a.out / "probe" / "eval", progress=False,
                     max_new_tokens=32, batch_size=64, overwrite=True)
        print(f"\nreading probe of {base} (100 descriptions per kind, canonical questions; share right, %):")
        print("| kind | right % |")
        print("|---|---|")
        for name, v in r["sets"].items():
            print(f"| {name.removeprefix('probe_')} | {v['score']:.0f} |")
        colour_against_random_object(a.out / "probe" / "eval" / "predictions" / "probe_color_of_shape.jsonl")
        return
    adapter = a.adapter or ("full" if a.reading else "lora")
    tag = f"{a.task or 'read_' + a.reading}_{a.size}_e{a.epochs}_{adapter}" + ("_from_base" if a.base else "") + \
        (f"_b{a.batch_size}" if a.batch_size != 32 else "")
    run = a.out / tag
    shutil.rmtree(run, ignore_errors=True)
    if a.task:
        world = a.out / f"world_{a.task}_{a.size}_s{a.seed}"
        # made afresh every run (a few seconds to a minute): a folder of that name from older code or another
        # generator is never taken for this world
        make_world(world, size=a.size, seed=a.seed, image_size=24, composition={a.task: 1.0}, eval_size=200)
        pool, images = world / "pool.json", world / "images"
        files = sorted((world / "eval").glob("*.json"))
        if a.task == "exist":
            files += exist_variants(a.seed, 200, 24, run / "exist_kinds")
    else:
        pool, ev = reading_world(a.reading, a.size, a.out / f"reading_{a.reading}_{a.size}")
        images, files = ev.parent, [ev]
    kw = {"r": 16, "lora_alpha": 32, "projector_lr": a.lr} if adapter == "lora" else {}
    t0 = time.perf_counter()
    res = train_lora(base, str(pool), str(images) if a.task else None, run / "train", adapter=adapter, lr=a.lr,
                     epochs=a.epochs, batch_size=a.batch_size, seed=a.seed, gradient_checkpointing=False, progress=True,
                     **kw)
    seconds = time.perf_counter() - t0
    r = evaluate(res.final_dir, [str(f) for f in files], str(images), run / "eval", progress=False,
                 max_new_tokens=32, batch_size=64)
    if a.reading == "color":  # beside the random-object answer, as --probe does
        colour_against_random_object(run / "eval" / "predictions" / "read_color.jsonl")
    chance = chance_levels([str(f) for f in files])
    print(f"\n{tag}: {res.samples} samples seen, training {seconds:.0f} s (one thread)")
    print("| set | score | chance | learned (10+ above chance) |")
    print("|---|---|---|---|")
    for name, v in r["sets"].items():
        if name.startswith("exist_"):  # one answer per kind: accuracy, no chance level of its own
            print(f"| {name} (accuracy) | {v['score']:.1f} | - | - |")
            continue
        c = chance.get(name, 0.0)
        print(f"| {name} | {v['score']:.1f} | {c:.1f} | {'yes' if v['score'] >= c + 10 else 'no'} |")
    # the sets that alternate two kinds of question, kind by kind (scores_by_kind.py's split)
    from scores_by_kind import kind_of

    for f in sorted((run / "eval" / "predictions").glob("*.jsonl")):
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        kinds = sorted({kind_of(f.stem, p["id"]) for p in rows}) if f.stem in KIND_SETS else []
        for k in kinds if len(kinds) > 1 else []:
            got = [float(p["score"]) for p in rows if kind_of(f.stem, p["id"]) == k]
            print(f"| {f.stem}: {k} | {100 * sum(got) / len(got):.1f} | | |")
    if a.task:
        print_objects(run, a.seed)


def print_objects(run: Path, seed: int) -> None:
    """The one-object kinds of a ``--task`` run (colour of a shape, colour at a position, position of a shape,
    shape at a position) against the random-object answer (scores_by_kind.py's ``--objects``): a model that finds
    the object asked for beats it among several objects."""
    from scores_by_kind import object_stats
    from vlselect.world.build import WorldConfig, plan_eval

    if not (run / "eval" / "predictions").is_dir():
        raise SystemExit(f"{run}: no eval/predictions; give the folder of a finished --task run")
    sets, pics = plan_eval(WorldConfig(seed=seed, eval_size=200, image_size=24))
    print(f"\n{run.name}: one-object kinds (%)")
    print("| kind | model | random-object answer | names an object of the picture | one-object pictures | several |")
    print("|---|---|---|---|---|---|")
    for k, v in object_stats(run, sets, pics).items():
        print(f"| {k} | {v['model']:.1f} | {v['random_object']:.1f} | {v['names_an_object']:.1f} | {v['one']:.1f} "
              f"| {v['several']:.1f} |")


if __name__ == "__main__":
    from vlselect.errors import VlselectError

    try:
        main()
    except VlselectError as exc:  # a bad task name, a missing --base: the package's message, no traceback
        raise SystemExit(f"learnability: {exc}") from None
