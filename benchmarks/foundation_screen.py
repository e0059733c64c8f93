#!/usr/bin/env python
"""Screen foundation recipes side by side (issue 12): build each, then run the bench on it.

A foundation build takes about 40 minutes on one CPU core and the bench about 28 on two, so trying recipes one at
a time on this machine costs an hour each. This script builds several recipes at once, one process each, and runs
on each foundation the bench with random selection (the full pool, zero-shot, random at 5/10/20%; one seed), then
with COINCIDE, ICONS and TIVE added (same cache, one seed). On a machine with a GPU every training run goes to it
(in float32: ``bf16=False``, as on the CPU); its numbers are then *screening* figures, to choose which recipe to
build and bench on the CPU, not figures to report as the bench's.

    python benchmarks/foundation_screen.py --out /tmp/screen --report /tmp/screen-report \
        --variants short,sentence,colour_short
    python benchmarks/foundation_screen.py --out /tmp/s --quick --scale 0.003 --variants short   # a smoke test

``--report`` receives one ``NAME.tgz`` per variant (the foundation, ``results-random.json``, ``results.json``
and the log), rewritten after each step, so a run stopped at a deadline still returns what it finished. The
variants are named recipes of :data:`VARIANTS` (``vlselect models foundation`` flags in brackets).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

# one kind of each evaluation set answered short, the others in sentences
HALF = ("color_of_shape", "count_all", "pos_of", "exist", "mc_color")

#: the four-kind foundation (two vision epochs) with stage 3 asking the sign's word too (40% of its pictures with a
#: sign), then stage 4: the language model and projector on every question kind over 40,000 pictures, answered in
#: sentences but for the shipped foundation's short kinds (realign.py + instruct_pretrain.py on
#: half_short_lookup4_align4_read_v2's stages: seven sets learned in world 0); the evaluation scenes of worlds 0-3
#: avoided by every pool (stage 4 asks the bench's own kinds). The variants after it change a field or two.
_INSTRUCT_V2 = dict(counted_captions=True, answer_style="sentence", short_kinds=HALF,
                    avoid=((0, 200), (1, 200), (2, 200), (3, 200), (0, 100)), lookup_steps=4000,
                    lookup_plain_steps=3000, lookup_chat_steps=3000, lookup_kinds=("color_of_shape", "exist", "count_color", "mc_color"),
                    text_lr=1e-4, text_size=120000, vision_epochs=2, align_size=60000, align_lookup_share=0.67,
                    align_lookup_kinds=("color_of_shape", "exist", "count_color", "mc_color", "ocr"),
                    align_word_share=0.4, instruct_size=40000)

#: name: FoundationRecipe fields (every one with counted captions: the lever that makes counting cheap). Each
#: names answer_style and short_kinds, so that a variant stays the same recipe when the defaults change
#: (half_short is the shipped recipe since 2026-12-04).
VARIANTS: dict[str, dict] = {
    # --counted-captions: zero-shot 84% of the full pool on the CPU (benchmarks/RESULTS.md)
    "short": dict(counted_captions=True, answer_style="short", short_kinds=()),
    # --counted-captions --sentence-answers (A)
    "sentence": dict(counted_captions=True, answer_style="sentence", short_kinds=()),
    # --counted-captions --sentence-answers --vision-epochs 2 (B: the CPU bench's 2026-12-04 sentence run)
    "sentence_v2": dict(counted_captions=True, answer_style="sentence", short_kinds=(), vision_epochs=2),
    # --short-kinds color_of_shape,color_at_pos,mc_color: the colour kinds short, the rest in sentences
    "colour_short": dict(counted_captions=True, answer_style="sentence",
                         short_kinds=("color_of_shape", "color_at_pos", "mc_color")),
    # --short-kinds color_of_shape,count_all,pos_of,exist,mc_color: one kind of each set short
    "half_short": dict(counted_captions=True, answer_style="sentence", short_kinds=HALF),
    "half_short_v2": dict(counted_captions=True, answer_style="sentence", short_kinds=HALF, vision_epochs=2),
    # every kind short but counting and OCR: the fine-tune teaches the number and word answers
    "count_ocr_sentence": dict(counted_captions=True, answer_style="sentence",
                               short_kinds=("color_of_shape", "color_at_pos", "shape_at_pos", "pos_of", "exist",
                                            "mc_color", "mc_shape")),
    # capacity probes of the shipped recipe (issue 12's seven sets): pictures of 48 px (each grid cell on 2x2
    # patches, 36 image tokens: shapes drawn on four times the pixels) ...
    "half_short_48": dict(counted_captions=True, answer_style="sentence", short_kinds=HALF, image_size=48),
    # ... and a language model of 8 layers instead of 4 (matching a question against the picture's tokens)
    "half_short_deep": dict(counted_captions=True, answer_style="sentence", short_kinds=HALF, size="b8"),
    # ... and a language stage that reads better: three times the text records at the rate that read shape at a
    # position 68% instead of 30% (benchmarks/RESULTS.md, "Short of data, or out of reach?")
    "half_short_read": dict(counted_captions=True, answer_style="sentence", short_kinds=HALF, text_size=180000,
                            text_lr=3e-4),
    # a language model that looks things up (benchmarks/recall_lr.py): 1,500 steps of compact lookup rows before
    # stage 1, the language stages at lr 1e-4 (1e-3 never forms the lookup) ...
    "half_short_lookup": dict(counted_captions=True, answer_style="sentence", short_kinds=HALF, lookup_steps=1500,
                              text_lr=1e-4, vision_lr=3e-4),
    # ... and with the vision stage (which trains the language model too) at the shipped lr 1e-3
    "half_short_lookup_v1e3": dict(counted_captions=True, answer_style="sentence", short_kinds=HALF,
                                   lookup_steps=1500, text_lr=1e-4),
    # ... and the whole curriculum on the query's distance (lookup rows, the plain question, the bench's prompt:
    # 100% in text, benchmarks/recall_lr.py), the vision stage at the shipped 1e-3
    "half_short_curriculum": dict(counted_captions=True, answer_style="sentence", short_kinds=HALF,
                                  lookup_steps=1500, lookup_plain_steps=1500, lookup_chat_steps=1000, text_lr=1e-4),
    # ... and stage 3 on 60,000 pictures, two thirds of them asked the colour of a shape instead of their caption
    # (the projector alone makes the pictures' tokens answerable by the text lookup: learnability.py --adapter
    # projector took that question from 70 to 90% after this foundation, not after the shipped one)
    "half_short_curriculum_align": dict(counted_captions=True, answer_style="sentence", short_kinds=HALF,
                                        lookup_steps=1500, lookup_plain_steps=1500, lookup_chat_steps=1000,
                                        text_lr=1e-4, align_size=60000, align_lookup_share=0.67),
    # ... with a warm-up of four kinds, twice as long (colour of a shape, existence, count of a colour, option
    # letter: benchmarks/warmup_probe.py reads them 100 / 86 / 100 / 74% from descriptions after it)
    "half_short_lookup4_align": dict(counted_captions=True, answer_style="sentence", short_kinds=HALF,
                                     lookup_steps=4000, lookup_plain_steps=3000, lookup_chat_steps=3000,
                                     lookup_kinds=("color_of_shape", "exist", "count_color", "mc_color"),
                                     text_lr=1e-4, align_size=60000, align_lookup_share=0.67),
    # ... with stage 3 asking all four kinds of pictures (realign.py on the foundation above: counting by colour
    # 54.5 and multiple choice 43 zero-shot over pictures), and twice the text of stage 1 (the four-kind warm-up
    # reads the position of an object 15% from descriptions, the colour-only one 31, the shipped one 34)
    "half_short_lookup4_align4_read": dict(counted_captions=True, answer_style="sentence", short_kinds=HALF,
                                           lookup_steps=4000, lookup_plain_steps=3000, lookup_chat_steps=3000,
                                           lookup_kinds=("color_of_shape", "exist", "count_color", "mc_color"),
                                           text_lr=1e-4, text_size=120000, align_size=60000,
                                           align_lookup_share=0.67,
                                           align_lookup_kinds=("color_of_shape", "exist", "count_color", "mc_color")),
    # ... and two epochs of captioning (OCR learnable: "A stronger vision stage", benchmarks/RESULTS.md)
    "half_short_lookup4_align4_read_v2": dict(counted_captions=True, answer_style="sentence", short_kinds=HALF,
                                              lookup_steps=4000, lookup_plain_steps=3000, lookup_chat_steps=3000,
                                              lookup_kinds=("color_of_shape", "exist", "count_color", "mc_color"),
                                              text_lr=1e-4, text_size=120000, vision_epochs=2, align_size=60000,
                                              align_lookup_share=0.67,
                                              align_lookup_kinds=("color_of_shape", "exist", "count_color",
                                                                  "mc_color")),
    # ... a fifth kind, the place of an object (after the four-kind warm-up the language model answers "top" to 64%
    # of "where is the [colour] [shape]?" about descriptions, and the bench's full pool answers the pool's "center"),
    # warm-up steps in proportion (5,000 + 3,750 + 3,750), stage 3 asking all five, two vision epochs (OCR)
    "half_short_lookup5_align5_v2": dict(counted_captions=True, answer_style="sentence", short_kinds=HALF,
                                         lookup_steps=5000, lookup_plain_steps=3750, lookup_chat_steps=3750,
                                         lookup_kinds=("color_of_shape", "exist", "count_color", "mc_color", "pos_of"),
                                         text_lr=1e-4, vision_epochs=2, align_size=60000, align_lookup_share=0.67,
                                         align_lookup_kinds=("color_of_shape", "exist", "count_color", "mc_color",
                                                             "pos_of")),
    # the four-kind foundation (two vision epochs) with stage 3 asking the sign's word too (40% of its pictures with
    # a sign), then stage 4: the language model and projector on every question kind over 40,000 pictures, answered in
    # sentences but for the shipped foundation's short kinds (realign.py + instruct_pretrain.py on
    # half_short_lookup4_align4_read_v2's stages: seven sets learned in world 0); the evaluation scenes of worlds 0-3
    # avoided by every pool (stage 4 asks the bench's own kinds)
    "half_short_lookup4_align5_instruct_v2": _INSTRUCT_V2,
    # ... whose own build did not read signs after its vision stage (OCR 2-4.5; its caption loss 0.104 against 0.075
    # in the foundations that read them): 40% of stage 2's captions with a sign instead of 15%
    "half_short_lookup4_align5_instruct_v2_signs": {**_INSTRUCT_V2, "vision_word_share": 0.4},
    # ... which read the signs (OCR 54 after a full-pool fine-tune, two worlds' bench 2026-12-06) but lost counting by
    # colour in its vision stage (read off descriptions: 98 after stage 1, 19 after stage 2; 58 in the screened
    # foundation whose stages learned seven sets) and the multiple choice over pictures (zero-shot 31.5 against 50):
    # twice the text records beside the captions of stage 2, so that the language model keeps reading
    "half_short_lookup4_align5_instruct_v2_signs_text": {**_INSTRUCT_V2, "vision_word_share": 0.4,
                                                         "vision_text_size": 40000},
    # ... and twice the alignment pictures (the projector alone; the multiple choice over pictures is its to carry)
    "half_short_lookup4_align5_instruct_v2_signs_text_align": {**_INSTRUCT_V2, "vision_word_share": 0.4,
                                                               "vision_text_size": 40000, "align_size": 120000},
    # ... the build with signs, its stage 2 at lr 3e-4 instead of 1e-3 (every part: the recipe has one rate for the
    # stage), so that the language model keeps what stage 1 taught (it loses a lookup at 1e-3: the fifth stop)
    "half_short_lookup4_align5_instruct_v2_signs_v3e4": {**_INSTRUCT_V2, "vision_word_share": 0.4, "vision_lr": 3e-4},
}


def _pack(work: Path, name: str, report: Path) -> None:
    """``report/NAME.tgz`` from what the variant has so far (written beside, then moved: never half a file)."""
    tmp = work / f".{name}.tgz"
    with tarfile.open(tmp, "w:gz") as tar:
        for rel in ("foundation", "results-random.json", "results.json", "log.txt"):
            p = work / rel
            if p.exists():
                tar.add(p, arcname=f"{name}/{rel}")
    shutil.move(str(tmp), str(report / f"{name}.tgz"))


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    import vlselect.bench.run as bench_run
    import vlselect.train as vtrain

    bench_run._set_threads_all = lambda: torch.set_num_threads(args.threads)  # a share of the cores, not all
    if torch.cuda.is_available():  # float32 training on the GPU as on the CPU (train_lora's auto is bf16 there)
        orig = vtrain.train_lora

        def train_fp32(*a, **kw):
            kw.setdefault("bf16", False)
            return orig(*a, **kw)

        vtrain.train_lora = train_fp32
    from vlselect.bench.run import BenchConfig, run_bench
    from vlselect.models.foundation import FoundationRecipe
    from vlselect.train.foundation import build_foundation

    name, work, report = args.child, Path(args.out) / args.child, Path(args.report)
    recipe = FoundationRecipe(**VARIANTS[name])
    if args.scale != 1.0:
        recipe = recipe.scaled(args.scale)
    t0 = time.time()
    found = work / "foundation"
    marker = found / "vlselect_foundation.json"
    if marker.exists() and json.loads(marker.read_text())["recipe"] != recipe.to_json():
        # a foundation of another recipe (the variant or --scale changed): never benched as this one
        sys.exit(f"[{name}] {found} holds a foundation of another recipe; use another --out or delete it")
    if not marker.exists():
        build_foundation(found, recipe, progress=False)
    print(f"[{name}] built in {time.time() - t0:.0f} s", flush=True)
    _pack(work, name, report)
    cfg_kw = dict(base=str(found), batch_size=8, seeds=(0,), clean_reference=False, jobs=1,
                  image_size=recipe.image_size)
    cfg = (BenchConfig.quick(**cfg_kw) if args.quick else BenchConfig(**cfg_kw))
    from dataclasses import replace

    bench = work / "bench"
    # run again every time: the bench's stages are cached by recipe (base fingerprint included), so this is cheap
    # when nothing changed and recomputed when anything did
    run_bench(bench, replace(cfg, methods=("random",)), log=lambda m: print(f"[{name}] {m}", flush=True))
    shutil.copy(bench / "results.json", work / "results-random.json")
    print(f"[{name}] random bench at {time.time() - t0:.0f} s", flush=True)
    _pack(work, name, report)
    methods = tuple(m for m in args.methods.split(",") if m)
    if not methods:
        return
    run_bench(bench, replace(cfg, methods=("random", *methods)),
              log=lambda m: print(f"[{name}] {m}", flush=True))
    shutil.copy(bench / "results.json", work / "results.json")
    print(f"[{name}] methods bench at {time.time() - t0:.0f} s", flush=True)
    _pack(work, name, report)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="work folder (foundations, bench caches)")
    ap.add_argument("--report", default=None, help="where each variant's NAME.tgz goes (default OUT/report)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per variant process")
    ap.add_argument("--scale", type=float, default=1.0, help="foundation data scale (smoke tests)")
    ap.add_argument("--quick", action="store_true", help="the quick bench's world and sizes (smoke tests)")
    ap.add_argument("--methods", default="coincide,icons,tive",
                    help="methods of the second bench (beside random); empty: the random bench only")
    ap.add_argument("--deadline", type=float, default=0, help="seconds after which unfinished variants are stopped")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.report = args.report or str(Path(args.out) / "report")
    Path(args.report).mkdir(parents=True, exist_ok=True)
    if args.child:
        return _child(args)

    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    started = time.time()
    # the bench's worlds once, copied into every variant's bench cache (the same recipe: reused there)
    from vlselect.bench.run import BenchConfig, make_worlds
    from vlselect.bench.stages import StageCache

    from vlselect.models.foundation import FoundationRecipe

    sides = {n: FoundationRecipe(**VARIANTS[n]).image_size for n in names}
    for side in sorted(set(sides.values())):  # one world per picture size (the world is drawn at the model's)
        cfg = (BenchConfig.quick if args.quick else BenchConfig)(batch_size=8, image_size=side)
        make_worlds(StageCache(Path(args.out) / f"shared-cache-{side}", log=print), cfg)
    print(f"worlds ready at {time.time() - started:.0f} s", flush=True)
    procs = {}
    for name in names:
        work = Path(args.out) / name
        (work / "bench").mkdir(parents=True, exist_ok=True)
        if not (work / "bench" / "cache").exists():
            shutil.copytree(Path(args.out) / f"shared-cache-{sides[name]}", work / "bench" / "cache")
        cmd = [sys.executable, __file__, "--out", args.out, "--report", args.report, "--threads", str(args.threads),
               "--scale", str(args.scale), "--methods", args.methods, "--child", name] + (["--quick"] if args.quick else [])
        log = open(work / "log.txt", "w")
        procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    while any(p.poll() is None for p in procs.values()):
        if args.deadline and time.time() - started > args.deadline:
            for p in procs.values():
                if p.poll() is None:
                    p.terminate()
            break
        time.sleep(5)
    finished = []
    for name, p in procs.items():
        p.wait()
        print(f"{name}: exit {p.returncode}", flush=True)
        if p.returncode == 0:
            _pack(Path(args.out) / name, name, Path(args.report))
            finished.append(name)
        else:  # its folder may hold an earlier run's results: never summarised or packed as this run's
            print(f"{name}: not summarised (see {Path(args.out) / name / 'log.txt'})", flush=True)
    summary = {n: _summary(Path(args.out) / n) for n in finished}
    print(json.dumps(summary, indent=1))
    print(f"done in {time.time() - started:.0f} s")


def _summary(work: Path) -> dict:
    out = {}
    for f in ("results-random.json", "results.json"):
        p = work / f
        if not p.exists():
            continue
        r = json.loads(p.read_text())
        out[f] = {"learned": r.get("learned_sets"), "zero_shot": (r.get("zero_shot") or {}).get("relative"),
                  "reference": {k: round(v, 1) for k, v in r["reference"]["scores"].items()},
                  "relative": {f"{row['method']}@{row['budget']}": round(row["relative_mean"], 1)
                               for row in r["rows"] if row.get("relative_mean") is not None}}
    return out


if __name__ == "__main__":
    main()
