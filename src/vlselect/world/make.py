"""Writing a world to disk: pictures, ``pool.json``, ``eval/<set>.json``, ``world.json`` and the world card."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlselect.artifact import replace_dir
from vlselect.errors import ConfigError
from vlselect.world.build import (
    EASY_KIND,
    EVAL_SETS,
    OFF_TARGET,
    SUPPORT,
    TASKS,
    Picture,
    PlannedRecord,
    WorldConfig,
    eval_answers,
    plan_eval,
    plan_pool,
)
from vlselect.world.scene import render

CARD_MARKER = "<!-- vlselect world card -->"


@dataclass
class WorldInfo:
    """What :func:`make_world` wrote.

    Attributes
    ----------
    out_dir : Path
        The world's folder.
    config : WorldConfig
        The recipe (seed, size, shares).
    task_counts : dict
        Pool records per task.
    task_stats : dict
        Per task: records, groups (distinct scenes), redundant (records beyond the first of their group),
        noisy (records from the noisy source), wrong (records with a wrong answer), easy, text_only.
    eval_sets : dict
        Evaluation set name -> number of samples.
    n_images : int
        Pool pictures written (eval pictures not included).
    n_eval_images : int
        Evaluation pictures written.
    """

    out_dir: Path
    config: WorldConfig
    task_counts: dict[str, int]
    task_stats: dict[str, dict[str, int]]
    eval_sets: dict[str, int]
    n_images: int
    n_eval_images: int

    @property
    def pool_path(self) -> Path:
        return self.out_dir / "pool.json"

    @property
    def images_dir(self) -> Path:
        return self.out_dir / "images"

    def eval_path(self, name: str) -> Path:
        return self.out_dir / "eval" / f"{name}.json"


def _save_png(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    # PIL writes no timestamp or text chunk unless asked: same pixels -> same bytes.
    Image.fromarray(arr).save(path, format="PNG", compress_level=6)


def _render_all(jobs: list[tuple[Picture, Path]], image_size: int, label: str) -> None:
    from vlselect.progress import progress_bar

    with progress_bar(label, unit="pictures", transient=True) as progress:
        bar = progress.add_task("", total=len(jobs))
        for i, (pic, path) in enumerate(jobs):
            _save_png(render(pic.scene, pic.variant, image_size, pic.style), path)
            if i % 256 == 255 or i == len(jobs) - 1:
                progress.update(bar, completed=i + 1)


def _dumps_records(records: list[dict]) -> str:
    """A JSON list with one record per line: plain ``json.load`` reads it, a human can grep it."""
    return "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n"


def _pool_records(plan: list[PlannedRecord], pictures: list[Picture], cfg: WorldConfig
                  ) -> tuple[list[dict], list[tuple[Picture, str]]]:
    """LLaVA records in pool order; pictures are named by order of first use, so names do not reveal tasks."""
    names: dict[int, str] = {}
    used: list[tuple[Picture, str]] = []
    per_task = Counter()
    out = []
    for r in plan:
        rid = f"{r.task}_{per_task[r.task]:06d}"
        per_task[r.task] += 1
        rec: dict[str, Any] = {"id": rid}
        convs = []
        for t, (q, a) in enumerate(r.turns):
            if t == 0 and r.picture is not None:
                q = "<image>\n" + q
            convs += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        meta: dict[str, Any] = {"source": r.source, "group": r.group, "easy": r.easy, "correct": r.correct,
                                "kind": r.kind}
        if r.picture is not None:
            if r.picture not in names:
                names[r.picture] = f"{len(names):06d}.png"
                used.append((pictures[r.picture], names[r.picture]))
            rec["image"] = names[r.picture]
            pic = pictures[r.picture]
            meta["scene"] = pic.scene.to_meta(pic.boxes(cfg.image_size))
            for key in ("options", "box"):
                if key in r.extra:
                    meta[key] = r.extra[key]
        rec["conversations"] = convs
        rec["task"] = r.task
        rec["meta"] = meta
        out.append(rec)
    return out, used


def task_stats(records: list[dict]) -> dict[str, dict[str, int]]:
    """Per-task counts of the structure (see :class:`WorldInfo`), computed from written records."""
    stats: dict[str, dict[str, int]] = {}
    groups: dict[str, set] = defaultdict(set)
    for r in records:
        s = stats.setdefault(r["task"], dict(records=0, groups=0, redundant=0, noisy=0, wrong=0, easy=0,
                                             text_only=0))
        m = r["meta"]
        s["records"] += 1
        groups[r["task"]].add(m["group"])
        s["noisy"] += m["source"] == "noisy"
        s["wrong"] += not m["correct"]
        s["easy"] += bool(m["easy"])
        s["text_only"] += "image" not in r
    for t, s in stats.items():
        s["groups"] = len(groups[t])
        s["redundant"] = s["records"] - s["groups"]
    return {t: stats[t] for t in TASKS if t in stats}


def _card(cfg: WorldConfig, stats: dict[str, dict[str, int]], eval_sizes: dict[str, int], n_images: int,
          majority: dict[str, float]) -> str:
    N = sum(s["records"] for s in stats.values())
    tot = {k: sum(s[k] for s in stats.values()) for k in ("records", "groups", "redundant", "noisy", "wrong",
                                                          "easy", "text_only")}
    L = [CARD_MARKER, f"# The vlselect world (seed {cfg.seed}, {N} records)", ""]
    L += [f"Made with `vlselect world make DIR --size {cfg.size} --seed {cfg.seed}` "
          f"(image size {cfg.image_size} px). Same seed, same bytes.", ""]
    L += ["## Pictures", "",
          f"{cfg.image_size}x{cfg.image_size} PNG on a dark noisy background; 1-4 objects on a 3x3 grid, one per "
          "cell, each a shape (circle, square, triangle, cross), a colour (red, green, blue, yellow, purple) and a "
          "size (small, large); (colour, shape) pairs are unique within a picture. Some pictures carry a white sign "
          "across the bottom row with a three-letter word in a 5x7 bitmap font, one letter per column. The grid is "
          "aligned so that at 24 px each cell, and each letter, is exactly one 8 px patch. Pictures from the noisy "
          "source have a grainier background.", ""]
    L += ["## Pool composition (`pool.json`)", "",
          "records = pool records; scenes = distinct scenes (near-duplicate groups); redundant = records beyond the "
          "first of their group; noisy = records from the noisy source; wrong = records with a wrong answer; "
          "easy = trivially easy records (one large object in the centre).", "",
          "| task | records | share | scenes | redundant | noisy | wrong | easy | text-only | role |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for t, s in stats.items():
        role = "off-target" if t in OFF_TARGET else ("support" if t in SUPPORT else "skill")
        L.append(f"| {t} | {s['records']} | {s['records'] / N:.1%} | {s['groups']} | {s['redundant']} | "
                 f"{s['noisy']} | {s['wrong']} | {s['easy']} | {s['text_only']} | {role} |")
    L.append(f"| **total** | {tot['records']} | 100.0% | {tot['groups']} | {tot['redundant']} | {tot['noisy']} | "
             f"{tot['wrong']} | {tot['easy']} | {tot['text_only']} | |")
    L += ["", f"Pictures in the pool: {n_images} (multiple-choice duplicates share one picture).", ""]
    L += ["## The structure that makes selection matter", "",
          f"- **Unequal tasks**: shares from {min(s['records'] for s in stats.values()) / N:.0%} to "
          f"{max(s['records'] for s in stats.values()) / N:.0%}; captions dominate as in LLaVA-665K.",
          f"- **Redundancy**: {tot['redundant']} records ({tot['redundant'] / N:.1%}) repeat a scene already in the "
          f"pool: near-duplicate pictures (pixel jitter, background, shade) with rephrased questions; mean group "
          f"size {', '.join(f'{t} {v:g}' for t, v in cfg.redundancy.items())}. For `mc` the duplicates are the same "
          "picture with the options shuffled (as LLaVA-1.5 does with A-OKVQA). `meta.group` names the group.",
          f"- **Noise**: {cfg.noisy_share:.0%} of image-task groups come from a noisy source (`meta.source`), which "
          f"answers wrongly on {cfg.noise_rate:.0%} of its records (exactly, per task): {tot['wrong']} wrong "
          f"records ({tot['wrong'] / N:.1%} of the pool), flagged `meta.correct = false`.",
          f"- **Easy**: {cfg.easy_share:.0%} of groups in {', '.join(EASY_KIND)} are one large object in the "
          f"centre, asked the obvious ({tot['easy']} records, `meta.easy`).",
          f"- **Off-target**: text-only chat ({stats.get('text', {}).get('records', 0)} records: arithmetic, "
          "colour mixing, spelling, greetings) helps no evaluation set; region description (`grounding` records "
          "of kind `reg`) and captions help only indirectly.",
          f"- **Two-skill questions are rare**: {cfg.compose_share:.0%} of `vqa_count` (count by colour) and of "
          "`vqa_color` (colour at a position); they feed the two-skill evaluation sets.", ""]
    L += ["## What a good selection keeps", "",
          "One or two records per near-duplicate group rather than all of them; clean-source records over noisy "
          "ones (the wrong answers teach the wrong thing); few easy and text-only records; every skill the "
          "evaluation asks for (colour, count, position, existence, OCR, multiple choice, grounding), including "
          "the rare two-skill questions; a task mix closer to the evaluation's than the pool's caption-heavy mix.",
          ""]
    L += ["## Evaluation sets (`eval/<set>.json`)", "",
          "Held out: separate pictures, and no evaluation scene occurs in the pool. Questions use the canonical "
          "phrasing (the first template) and the same response-format prompts as the pool.", "",
          "Answers are balanced (each colour, count, position, shape, yes/no and option letter equally often), so "
          "'majority' (the share of the most common answer: what always guessing it scores) stays low.", "",
          "| set | metric | samples | majority | what it asks |", "|---|---|---|---|---|"]
    for name, (metric, _kinds, desc) in EVAL_SETS.items():
        L.append(f"| {name} | {metric} | {eval_sizes[name]} | {majority[name]:.0%} | {desc} |")
    L += ["", "Answers: the first is canonical; counts accept the digit and the word. As `vlselect.evaluate` scores "
          "them: `exact_match` compares text after trimming, lower-casing and dropping a final period; `yes_no` "
          "reports F1 (and accuracy); `option_letter` parses the letter; `iou` counts a hit when the predicted "
          "box overlaps `box` with IoU >= 0.5.", ""]
    L += ["## Learnability (what a tiny model can be expected to learn)", "",
          "Measured once on this CPU (tiny LLaVA from `vlselect.models.tiny`, built at 24 px with 8 px patches so "
          "that each grid cell is one patch; AdamW, cosine, batch 32; greedy answers on 100 samples per balanced "
          "evaluation set of a 10,000-record world; one seed, so +-5 points is noise). Scores 0-100; exist is F1:",
          "",
          "| model, training | color | color_position | count | count_color | exist | mc | ocr | position | grounding |",
          "|---|---|---|---|---|---|---|---|---|---|",
          "| chance (most common answer) | 20 | 20 | 25 | 25 | 50 | 25 | 4 | ~18 | 0 |",
          "| `s` (hidden 64, 8 layers), LoRA r=64, 15k captions + 10k samples | 34 | 33 | 26 | 25 | 47 | 24 | 3 | 28 | 0 |",
          "| `s`, full fine-tuning lr 1e-3, 10k captions + 20k samples | 23 | 18 | 26 | 31 | 56 | 24 | 3 | 17 | 0 |",
          "| `s`, full fine-tuning, no captions, 30k samples | 20 | 23 | 60 | 25 | 63 | 24 | 3 | 17 | 0 |",
          "| `b` (hidden 128, 4 layers), full fine-tuning, no captions, 30k samples | 60 | 63 | 33 | 23 | 59 | 23 | 4 | 26 | 0 |",
          "| `b`, full fine-tuning, 10k captions + 30k samples | 48 | 45 | 61 | 25 | 63 | 19 | 4 | 28 | 0 |",
          "", "So with the wide-and-shallow `b` model and full fine-tuning (the vision tower included, since it is "
          "random), colour, colour at a position, counting and existence rise well above chance within 30k "
          "samples; position, counting by colour, OCR, multiple choice and grounding stay at chance at this scale "
          "(the feasibility notes saw position flat up to 80k samples). LoRA on a random model learns much less. "
          "`vlselect bench` uses this recipe and counts in its relative performance only the sets that its own "
          "full-pool run learns (at least 10 points above chance); the others are still reported.", "",
          "On the benchmark's own 20,000-record world (seed 0, 200 samples per set; `b`, full fine-tuning, 2 "
          "epochs, lr 1e-3, batch 32) what decides learning is the number of samples seen and the base model's "
          "pre-training:", "",
          "| base pre-training, training data | color | color_position | count | exist |",
          "|---|---|---|---|---|",
          "| 10k captions, full pool (40k samples), 3 seeds | 67-71 | 64 | 62 | 48-63 |",
          "| 10k captions, random 10%, 20% or 40% (up to 16k samples) | 18-22 | 20-25 | 25-26 | 0-67 |",
          "| 10k captions, random 20% x 8 epochs (32k samples) | 62 | 61 | 40 | 35 |",
          "| 10k captions, random 20%, batch 8 (1,000 steps, 8k samples) | 20 | 20 | 26 | 0 |",
          "| 10k captions, random 40%, lr 3e-3 | 22 | 21 | 25 | 57 |",
          "| 40k captions, random 5% (2k samples) | 11 | 27 | 24 | 67 |",
          "| 40k captions, random 20% (8k samples) | 68 | 63 | 25 | 2 |",
          "", "So with a base pre-trained on 40,000 captions (the benchmark's), the colour skills are learned from a "
          "random 20%, counting is not, and a random 5% learns nothing: the budget and the choice of rows decide "
          "what the model learns. (An exist F1 of 67 is always answering yes; 0-2 means no yes/no answers.)", "",
          "### With the world's foundation (the benchmark's base since issue 12)", "",
          "The shipped foundation (`vlselect models foundation`: a language model pre-trained on the world's text, "
          "answering one kind of question of each set in the short format and the others in sentences; a vision "
          "tower pre-trained on captions that count the objects; a projector aligned with both frozen) fine-tuned "
          "as in LLaVA-1.5's stage 2 (vision tower frozen, projector in full, LoRA r=16 on the language model, lr "
          "1e-3, batch 8, one epoch) on a 10,000-record world (seed 0, 200 samples per set; `vlselect bench`, "
          "2026-12-04):", "",
          "| training data | color | color_position | count | count_color | exist (F1) | mc | ocr | position | grounding |",
          "|---|---|---|---|---|---|---|---|---|---|",
          "| chance | 20 | 20 | 25 | 25 | 67 | 25 | 6 | 12 | 0 |",
          "| none (the foundation as shipped, zero-shot) | 25 | 4 | 30 | 38 | 51 | 21 | 0 | 27 | 0 |",
          "| random 5% (500 samples) | 55 | 40 | 38 | 24 | 61 | 25 | 0 | 30 | 0 |",
          "| random 10%, 3 seeds | 53 | 40 | 47 | 24 | 61 | 26 | 0 | 35 | 0 |",
          "| random 20%, 3 seeds | 62 | 58 | 48 | 27 | 62 | 24 | 2 | 37 | 1 |",
          "| the clean records (94.5% of the pool; an oracle) | 64 | 66 | 60 | 24 | 62 | 25 | 5 | 36 | 3 |",
          "| full pool (10,000 samples), 3 seeds | 64 | 62 | 59 | 25 | 55 | 24 | 4 | 36 | 2 |",
          "", "Zero-shot the foundation answers the kinds it was taught short in format and the others in "
          "sentences (colour at a position 4); 500 samples teach the other kinds' format from their sister kinds, "
          "and colour, colour at a position and counting grow with the data: a random 20% keeps about 93% of the "
          "full pool. Counting by colour, existence, multiple choice, OCR and grounding are not learned by one "
          "epoch of the full pool at this scale (exist F1 under the 67 of always answering yes). So four sets "
          "separate subsets; the other five are reported and not counted. (The first foundation, plain captions "
          "and every kind short, batch 32: zero-shot in the wrong format, random 20% about 81% of the full pool; "
          "benchmarks/RESULTS.md.)", "",
          "Short of data, or out of reach? The same recipe on 10,000 records of one task alone "
          "(`benchmarks/learnability.py --task T`; the set's score, its chance in brackets):", "",
          "| pool of one task (10,000 records), recipe | the set it trains | score (chance) | learned |",
          "|---|---|---|---|",
          "| ocr (2,500 scenes), one epoch | ocr | 92.0 (6.5) | yes |",
          "| ocr, 5,000 / 2,500 records | ocr | 38.5 / 7.5 (6.5) | 5,000: yes |",
          "| vqa_count (2,500 counting-by-colour questions) | count_color | 25.0 (25) | no (count: 62.5) |",
          "| exist, one epoch / three epochs / full fine-tuning | exist (F1) | 50.7 / 68.3 / 49.0 (66.7) | no |",
          "| mc | mc | 21.5 (25) | no |",
          "| grounding (5,000 boxes to give) | grounding | 5.5 (0) | no |",
          "", "OCR is short of data: it switches on between 2,500 and 5,000 records of its own, far more than a "
          "10,000-record pool holds (500; 952 at a 10% share with half the redundancy still scored 6.5). Counting "
          "by colour, existence, multiple choice and grounding are out of this model's reach at these sizes even "
          "with ten times the pool's data: existence answers do not depend on the picture even when neither the "
          "colour nor the shape asked for is in it. They need a stronger foundation (see benchmarks/RESULTS.md), "
          "not a redesign of the sets.", "",
          "Inside the sets, by kind of question (`benchmarks/scores_by_kind.py`, the full pool of two worlds, six "
          "runs): the number of objects 98, the position of a named object 47, the colour of a shape 62, the "
          "colour at a position 60 are learned; the number of objects of a shape (25, chance 25) and the shape at "
          "a position (29, chance 25) are not, so half of the counting and position questions stay at chance for "
          "every subset. The colour kinds are answered as often right as the colour of an object of the picture "
          "drawn at random would be (63 and 59; one-object pictures 99-100): the model names a colour that is there "
          "(95%) without finding the object asked for (`scores_by_kind.py --objects`). Pictures of 48 px, a "
          "language model of 8 layers, two vision epochs and three times the text learn the same four sets, and "
          "a linear "
          "probe reads every object's colour and most shapes (81%) off its cell's image token "
          "(`benchmarks/vision_probe.py`): what is missing is the language model finding the token a question "
          "names by an attribute; reading a description instead of a picture, it names the colour of a random "
          "object of it just the same (`benchmarks/learnability.py --probe`; benchmarks/RESULTS.md, issue 12). "
          "That is optimisation, not size: the same language model learns the lookup at lr 1e-4 or 3e-4 and never at "
          "the 1e-3 of every stage, and after a warm-up on compact lookup rows it answers the colour of a shape from "
          "descriptions 100% (`benchmarks/recall_lr.py`), and asked with the bench's prompt (the query some fifteen "
          "tokens before the answer) after a curriculum on that distance. A foundation with that curriculum "
          "(`lookup_steps` and the fields after it) keeps it through stage 1 but does not use it over pictures; "
          "a projector aligned on that question with the language model frozen (`align_lookup_share`) does, "
          "zero-shot 78%, and the bench's fine-tune loses most of it again; with a warm-up of four kinds "
          "(`lookup_kinds`) a full pool learns multiple choice, but existence and counting by colour stay "
          "unlearned over pictures. Asked of pictures in stage 3 too (`align_lookup_kinds`), counting by colour is "
          "answered zero-shot 54.5% and learned by a full pool at lr 3e-4; a fifth warm-up kind, the place of an "
          "object, gives position back and two vision epochs OCR: three such foundations learn six sets each, never "
          "the same six, and a kind a fine-tune cannot do is answered with the pool's majority (the count of a "
          "shape: \"1\"), which the balanced evaluation sets score at chance.", ""]
    L += ["## Files", "",
          "- `images/NNNNNN.png`: pool pictures; `images/eval_<set>_NNNN.png`: evaluation pictures.",
          "- `pool.json`: LLaVA JSON list (`id`, `image` relative to `images/` and absent for text-only, "
          "`conversations`, plus `task` and `meta` = source, group, easy, correct, kind, scene with normalised "
          "boxes, options or box where relevant).",
          "- `eval/<set>.json`: `{name, metric, description, samples: [{id, image, question, answers, options?, "
          "box?}]}`.",
          "- `world.json`: the recipe and the numbers of this card, for programs.", ""]
    return "\n".join(L)


def _write_text(path: Path, text: str) -> None:
    from vlselect.artifact import atomic_write_text

    atomic_write_text(path, text)


@contextmanager
def _staged(out: Path, *subdirs: str):
    """A fresh staging folder next to ``out``, moved onto ``out`` when the block succeeds and deleted when it
    fails (a world is never half written)."""
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for d in subdirs:
        (tmp / d).mkdir()
    try:
        yield tmp
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_out_dir(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"{out}: exists and is not a folder; choose another output folder")
        is_world = (out / "world.json").exists()
        if any(out.iterdir()) and not is_world:
            raise ConfigError(f"{out}: folder exists, is not empty and holds no world (no world.json); "
                              "choose an empty or new folder")
        if is_world and not overwrite:
            raise ConfigError(f"{out}: a world is already there; pass overwrite=True (CLI: --force) to replace it")
    return out


def make_world(out_dir: str | os.PathLike, *, size: int = 20000, seed: int = 0, image_size: int = 64,
               eval_size: int = 200, overwrite: bool = True, **config: Any) -> WorldInfo:
    """Make the synthetic VIT world in ``out_dir``.

    Writes ``images/*.png``, ``pool.json`` (LLaVA JSON, §11.1 of ``specs/dataoptim.md``), ``eval/<set>.json``,
    ``world.json`` and ``README.md`` (the world card). Boxes follow DataOptim's normalised convention (§6):
    ``[x1, y1, x2, y2]`` in [0, 1] with two decimals; pictures are square, so no padding is involved. The world
    is built in a temporary sibling folder and moved into place at the end, so an interrupted run leaves no
    half world.

    Parameters
    ----------
    out_dir : path
        Target folder. It may exist if it is empty or holds an earlier world (which is replaced when
        ``overwrite``).
    size : int
        Pool records (default 20,000).
    seed : int
        Seed of everything; the same seed gives byte-identical files.
    image_size : int
        Picture side in pixels (default 64).
    eval_size : int
        Samples per evaluation set (default 200).
    **config
        Any other :class:`~vlselect.world.build.WorldConfig` field (``composition``, ``redundancy``,
        ``noisy_share``, ``noise_rate``, ``easy_share``, ``compose_share``, ``word_share``).

    Returns
    -------
    WorldInfo

    Examples
    --------
    >>> info = make_world("world", size=2000, seed=0)   # doctest: +SKIP
    >>> info.task_counts["caption"]                     # doctest: +SKIP
    480
    """
    unknown = sorted(set(config) - set(WorldConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"make_world: unknown option(s) {unknown}; known: "
                          f"{sorted(WorldConfig.__dataclass_fields__)}")
    cfg = WorldConfig(size=size, seed=seed, image_size=image_size, eval_size=eval_size, **config)
    cfg.validate()
    out = _check_out_dir(out_dir, overwrite)

    eval_plan, eval_pictures = plan_eval(cfg)
    avoid = {eval_pictures[s["picture"]].scene.signature() for samples in eval_plan.values() for s in samples}
    plan, pictures = plan_pool(cfg, avoid)

    with _staged(out, "images", "eval") as tmp:
        records, used = _pool_records(plan, pictures, cfg)
        jobs = [(pic, tmp / "images" / name) for pic, name in used]
        eval_files: dict[str, dict] = {}
        for name, samples in eval_plan.items():
            metric, _kinds, desc = EVAL_SETS[name]
            out_samples = []
            for i, s in enumerate(samples):
                img = f"eval_{name}_{i:04d}.png"
                jobs.append((eval_pictures[s["picture"]], tmp / "images" / img))
                qa = s["qa"]
                d: dict[str, Any] = {"id": f"{name}_{i:04d}", "image": img, "question": qa.prompt,
                                     "answers": eval_answers(metric, qa)}
                if metric == "option_letter":
                    d["options"] = qa.extra["options"]
                if metric == "iou":
                    d["box"] = qa.extra["box"]
                out_samples.append(d)
            eval_files[name] = {"name": name, "metric": metric, "description": desc, "samples": out_samples}
        _render_all(jobs, cfg.image_size, f"world: {len(jobs)} pictures")
        _write_text(tmp / "pool.json", _dumps_records(records))
        for name, payload in eval_files.items():
            _write_text(tmp / "eval" / f"{name}.json", json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
        stats = task_stats(records)
        eval_sizes = {n: len(p["samples"]) for n, p in eval_files.items()}
        n_eval = sum(eval_sizes.values())
        world_json = {"format": "vlselect-world/1", "config": cfg.__dict__, "task_counts": cfg.task_counts(),
                      "task_stats": stats, "eval_sets": {n: {"metric": EVAL_SETS[n][0], "samples": eval_sizes[n]}
                                                          for n in eval_sizes},
                      "n_images": len(used), "n_eval_images": n_eval}
        _write_text(tmp / "world.json", json.dumps(world_json, indent=1) + "\n")
        majority = {n: Counter(str(x["answers"][0]) for x in p["samples"]).most_common(1)[0][1] / len(p["samples"])
                    for n, p in eval_files.items()}
        _write_text(tmp / "README.md", _card(cfg, stats, eval_sizes, len(used), majority))
    return WorldInfo(out, cfg, cfg.task_counts(), stats, eval_sizes, len(used), n_eval)


def make_pretrain_pool(out_dir: str | os.PathLike, *, size: int = 50000, seed: int = 0, image_size: int = 64,
                       eval_size: int = 200, word_share: float = 0.15, overwrite: bool = True,
                       avoid: tuple[tuple[int, int], ...] | None = None, counted: bool = False,
                       lookup_share: float = 0.0, lookup_kinds: tuple[str, ...] = ("color_of_shape",),
                       answer_style: str = "short", short_kinds: tuple[str, ...] = ()) -> WorldInfo:
    """A separate caption pool for pre-training the tiny base model (the analogue of LLaVA's stage-1 data).

    Every record is a clean caption of its own scene (no redundancy, noise or easy share): the caption names
    each object's size, colour, shape and position, and the word on the sign, which teaches the vocabulary and
    the binding of attributes to places before instruction tuning. Scenes avoid the evaluation scenes of the
    world with the same ``seed`` and ``eval_size``, so pre-training never sees a test picture's content. Written
    as a world folder (``images/``, ``pool.json``, ``world.json``, ``README.md``; no ``eval/``).

    Parameters
    ----------
    out_dir : path
        Target folder (new, empty, or an earlier world / pre-training pool, replaced when ``overwrite``).
    size : int
        Records (one picture each).
    seed : int
        The world's seed (the pool's own randomness is a separate stream of it).
    image_size, eval_size : int
        As in :func:`make_world`; ``eval_size`` must match the world's so that its evaluation scenes are avoided.
    word_share : float
        Share of pictures with a sign.
    avoid : tuple of (seed, eval_size), optional
        Worlds whose evaluation scenes never occur (default: the world of ``seed`` and ``eval_size``).
    counted : bool
        Every caption starts with the number of objects ("3 objects: a small red cross at the top, ...");
        the same scenes, pictures and prompts as without it. A vision tower trained on such captions has to see
        how many objects there are (benchmarks/RESULTS.md, issue 12).
    lookup_share : float
        Share of the pictures asked the colour of the one object of a shape (the world's ``color_of_shape``
        question, any phrasing, with the short-answer format line) instead of their caption: the same scenes and
        pictures, the choice drawn from a stream of its own. A projector aligned on such questions with the
        language model frozen lets a language model that looks things up in text find the object asked for in a
        picture (benchmarks/RESULTS.md, issue 12). A scene with no shape of exactly one object keeps its caption.
    lookup_kinds : tuple of str
        The question kinds those pictures are asked (of :data:`ALIGN_KINDS`: the colour of a shape, existence, the
        count of a colour, the option letter of a shape's colour, the place of an object, the word on the sign),
        each picture one kind drawn uniformly from the question stream; the world's own question of the kind, as
        its pool asks it. A picture drawn a kind it cannot answer (the word of a picture with no sign, a colour of
        no single object) keeps its caption. The default, the colour of a shape alone, draws no kind: its pool is
        that of before.
    answer_style, short_kinds :
        How the asked pictures answer, as the text pool's reading records (:func:`make_text_pool`): ``"short"``
        (the default) with the format prompt and the evaluation sets' answer; ``"sentence"`` with no format prompt
        and a sentence ("The answer is red."), but for the kinds named in ``short_kinds``, which keep the short
        format. A foundation trained on such a pool over pictures knows the world's questions without answering
        every kind in the bench's format (benchmarks/RESULTS.md, issue 12).

    Returns
    -------
    WorldInfo
        With ``task_counts == {"caption": size}`` (and ``"vqa_color"`` for the questions) and no evaluation sets.

    Examples
    --------
    >>> info = make_pretrain_pool("pretrain", size=50000, seed=0)   # doctest: +SKIP
    """
    from vlselect.world.build import _stream, _variant
    from vlselect.world.scene import sample_scene
    from vlselect.world.tasks import ASK, ask_caption, caption_text

    cfg = WorldConfig(size=size, seed=seed, image_size=image_size, eval_size=eval_size, word_share=word_share,
                      composition={"caption": 1.0})
    cfg.validate()
    if not 0.0 <= lookup_share <= 1.0:
        raise ConfigError(f"make_pretrain_pool: lookup_share={lookup_share}; give a share between 0 and 1")
    lookup_kinds = tuple(lookup_kinds)
    bad = [k for k in lookup_kinds if k not in ALIGN_KINDS]
    if bad or not lookup_kinds:
        raise ConfigError(f"make_pretrain_pool: lookup_kinds={lookup_kinds!r}; use one or more of "
                          f"{', '.join(ALIGN_KINDS)}")
    if answer_style not in ANSWER_STYLES:
        raise ConfigError(f"make_pretrain_pool: answer_style={answer_style!r}; use one of {', '.join(ANSWER_STYLES)}")
    short_kinds = tuple(short_kinds)
    if short_kinds and answer_style != "sentence":
        raise ConfigError("make_pretrain_pool: short_kinds names the kinds that keep the short format when the others "
                          f"answer in sentences; it needs answer_style='sentence' (got {answer_style!r})")
    if [k for k in short_kinds if k not in ALIGN_KINDS]:
        raise ConfigError(f"make_pretrain_pool: short_kinds={short_kinds!r}; use some of {', '.join(ALIGN_KINDS)}")
    several = lookup_kinds != ("color_of_shape",)
    out = _check_out_dir(out_dir, overwrite)
    avoid_sigs = _eval_signatures(((seed, eval_size),) if avoid is None else tuple(avoid), image_size)
    rng = _stream(seed, "pretrain")
    qrng = _stream(seed, "pretrain-lookup")  # its own stream: the scenes are those of the caption pool
    plan: list[PlannedRecord] = []
    pictures: list[Picture] = []
    while len(plan) < size:
        scene = sample_scene(rng, word=bool(rng.random() < word_share))
        if scene.signature() in avoid_sigs:
            continue
        pictures.append(Picture(scene, _variant(rng), "clean"))
        qa = ask_caption(scene, rng)  # called either way: it draws from rng, so both pools get the same scenes
        answer = caption_text(scene, counted=True) if counted else qa.answer
        ask = None
        if lookup_share > 0 and qrng.random() < lookup_share:
            kind = lookup_kinds[int(qrng.integers(0, len(lookup_kinds)))] if several else "color_of_shape"
            ask = ASK[kind](scene, qrng)
        if ask is not None:
            extra = {"options": ask.extra["options"]} if "options" in ask.extra else {}
            turn = (ask.prompt, ask.answer)
            if answer_style == "sentence" and ask.kind not in short_kinds:
                turn = (_without_format_prompt(ask.prompt), f"The answer is {ask.answer}.")
            plan.append(PlannedRecord(LOOKUP_TASK[ask.kind], f"pretrain-{len(plan):06d}", "clean", False, ask.kind,
                                      [turn], True, None, len(pictures) - 1, extra))
            continue
        plan.append(PlannedRecord("caption", f"pretrain-{len(plan):06d}", "clean", False, "caption",
                                  [(qa.prompt, answer)], True, None, len(pictures) - 1))
    with _staged(out, "images") as tmp:
        records, used = _pool_records(plan, pictures, cfg)
        for r in records:
            r["id"] = "pretrain" + r["id"].removeprefix("caption") if r["task"] == "caption" else \
                "pretrain-" + r["id"]
        _render_all([(pic, tmp / "images" / name) for pic, name in used], image_size,
                    f"pre-training pool: {len(used)} pictures")
        _write_text(tmp / "pool.json", _dumps_records(records))
        stats = task_stats(records)
        meta = {"format": "vlselect-world/1", "kind": "pretrain", "config": cfg.__dict__}
        if counted:  # written only when set: a plain pool's world.json as before
            meta["counted_captions"] = True
        counts = dict(Counter(r["task"] for r in records))
        if lookup_share > 0:
            meta["lookup_share"] = lookup_share
            if several:  # written only when set: the colour-only pool's world.json as before
                meta["lookup_kinds"] = list(lookup_kinds)
            if answer_style != "short":
                meta["answer_style"] = answer_style
                meta["short_kinds"] = list(short_kinds)
        _write_text(tmp / "world.json", json.dumps({**meta, "task_counts": counts,
                                                     "task_stats": stats, "eval_sets": {},
                                                     "n_images": len(used), "n_eval_images": 0}, indent=1) + "\n")
        _write_text(tmp / "README.md", "\n".join([
            CARD_MARKER, f"# Pre-training caption pool (seed {seed}, {size} records)", "",
            f"Made with `vlselect world pretrain DIR --size {size} --seed {seed}{' --counted' if counted else ''}` "
            f"(image size {image_size} px).", "",
            "One clean caption per picture, each picture its own scene (the pictures of the world, see its card)"
            + ("; each caption starts with the number of objects" if counted else "")
            + (f"; {counts.get('vqa_color', 0)} pictures are asked the colour of the one object of a shape "
               "instead (the world's colour-of-a-shape question, short-answer format)"
               if lookup_share > 0 and not several else "")
            + (f"; {size - counts.get('caption', 0)} pictures are asked a question instead (the world's own, "
               f"one of {', '.join(lookup_kinds)}: {', '.join(f'{t} {n}' for t, n in sorted(counts.items()))})"
               if lookup_share > 0 and several else "")
            + "; "
            "no near-duplicates, no noise, no easy share. Scenes of the world's evaluation sets (same seed, "
            f"eval size {eval_size}) never occur. Prompts: the six caption instructions of the world's pool. "
            "Use it to pre-train the base model before instruction tuning on `pool.json` of a world.", ""]))
    return WorldInfo(out, cfg, counts, stats, {}, len(used), 0)


#: Question kinds of the text-only reading pool (every image skill of the world that a caption can answer;
#: grounding is left out: a caption holds no coordinates).
#: How the reading records of the text pool answer (:func:`make_text_pool`).
ANSWER_STYLES: tuple[str, ...] = ("short", "sentence")

TEXT_QA_KINDS: tuple[str, ...] = (
    "color_of_shape", "color_at_pos", "count_all", "count_shape", "count_color", "shape_at_pos", "pos_of",
    "exist", "ocr", "mc_color", "mc_shape",
)


def make_text_pool(out_dir: str | os.PathLike, *, size: int = 40000, seed: int = 0, image_size: int = 24,
                   avoid: tuple[tuple[int, int], ...] = ((0, 200),), word_share: float = 0.15,
                   reading_share: float = 0.6, description_share: float = 0.25,
                   answer_style: str = "short", format_share: float = 0.0, short_kinds: tuple[str, ...] = (),
                   overwrite: bool = True) -> WorldInfo:
    """A text-only pool for pre-training the language model of the world's foundation (the analogue of the
    text a real LLM such as Vicuna is trained on before visual instruction tuning).

    Three kinds of records, none with a picture:

    * *reading* (``reading_share``): a scene described in words (the caption text), then a question about it in
      any of the world's phrasings, answered correctly: the language model learns to answer the world's questions
      from a description — what a pretrained LLM brings to VIT. ``answer_style="short"`` asks and answers in the
      evaluation sets' format (the format prompt "Answer the question using a single word or phrase.", answer
      "red"); ``"sentence"`` drops the format prompts and answers in a sentence ("The answer is red."), as a
      general LLM answers before LLaVA-1.5's stage 2 teaches it the short format (the same scenes and questions:
      no extra random draws). With ``"sentence"``, the reading kinds named in ``short_kinds`` (of
      :data:`TEXT_QA_KINDS`) keep the short format: the language model then answers those kinds in the bench's
      format zero-shot and the others in sentences (the same records otherwise);
    * *description* (``description_share``): the caption of a scene as text to continue (the language of the
      world's captions);
    * *chat*: the off-target text exchanges of the world (arithmetic, colour mixing, spelling, greetings). A share
      ``format_share`` of those with a one-word answer (arithmetic, colour mixing, sides of a shape) is asked with
      the short-answer format prompt and answered in one word ("5"): the language model then knows the instruction
      from questions the benchmark does not ask, as an instruction-tuned LLM does (the choice is drawn from a
      stream of its own: the records are the same as with ``format_share=0`` but for those answers).

    Scenes of the evaluation sets of every world in ``avoid`` (pairs ``(seed, eval_size)``) never occur.
    Written as a world folder (``pool.json``, ``world.json``, ``README.md``; no images).
    """
    from vlselect.world.build import _stream
    from vlselect.world.scene import sample_scene
    from vlselect.world.tasks import ASK, caption_text, text_turn_with_short
    from vlselect.world.vocab import SHORT_SUFFIX

    cfg = WorldConfig(size=size, seed=seed, image_size=image_size, word_share=word_share,
                      composition={"text": 1.0})
    cfg.validate()
    if not (0 <= reading_share and 0 <= description_share and reading_share + description_share <= 1):
        raise ConfigError(f"text pool: reading_share={reading_share} and description_share={description_share} "
                          "must be >= 0 and sum to at most 1")
    if not 0 <= format_share <= 1:
        raise ConfigError(f"text pool: format_share={format_share} must be between 0 and 1")
    if answer_style not in ANSWER_STYLES:
        raise ConfigError(f"text pool: answer_style={answer_style!r}; use one of {', '.join(ANSWER_STYLES)}")
    short_kinds = tuple(short_kinds)
    unknown = [k for k in short_kinds if k not in TEXT_QA_KINDS]
    if unknown:
        raise ConfigError(f"text pool: short_kinds {unknown} are not reading kinds; use some of "
                          f"{', '.join(TEXT_QA_KINDS)}")
    if short_kinds and answer_style != "sentence":
        raise ConfigError("text pool: short_kinds names the kinds that keep the short format when the others answer "
                          f"in sentences; it needs answer_style='sentence' (got {answer_style!r})")
    out = _check_out_dir(out_dir, overwrite)
    avoid_sigs = _eval_signatures(avoid, image_size)
    rng = _stream(seed, "text-pool")
    format_rng = _stream(seed, "text-pool-format")
    records: list[dict] = []
    counts: Counter = Counter()
    while len(records) < size:
        u = rng.random()
        if u < reading_share + description_share:
            scene = sample_scene(rng, word=bool(rng.random() < word_share))
            if scene.signature() in avoid_sigs:
                continue
            context = caption_text(scene)
            if u < reading_share:
                kind = TEXT_QA_KINDS[int(rng.integers(0, len(TEXT_QA_KINDS)))]
                qa = ASK[kind](scene, rng, canonical=False)
                if qa is None:
                    continue
                turns = [(f"{context}\n{qa.prompt}", qa.answer) if answer_style == "short" or kind in short_kinds
                         else (f"{context}\n{_without_format_prompt(qa.prompt)}", f"The answer is {qa.answer}.")]
                task = f"read_{kind}"
            else:
                turns = [("Continue the description of a picture.", context)]
                task = "describe"
        else:
            kind, q, a, short = text_turn_with_short(rng)
            if short is not None and format_share > 0 and format_rng.random() < format_share:
                q, a = f"{q}\n{SHORT_SUFFIX}", short
            turns = [(q, a)]
            task = f"chat_{kind}"
        rid = f"text_{len(records):06d}"
        convs = []
        for q, a in turns:
            convs += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        records.append({"id": rid, "conversations": convs, "task": task})
        counts[task] += 1
    with _staged(out) as tmp:
        _write_text(tmp / "pool.json", _dumps_records(records))
        _write_text(tmp / "world.json", json.dumps({"format": "vlselect-world/1", "kind": "text",
                                                     "config": cfg.__dict__, "task_counts": dict(counts),
                                                     **({} if answer_style == "short"
                                                        else {"answer_style": answer_style}),
                                                     **({"format_share": format_share} if format_share else {}),
                                                     **({"short_kinds": list(short_kinds)} if short_kinds else {}),
                                                     "avoid": [list(a) for a in avoid], "task_stats": {},
                                                     "eval_sets": {}, "n_images": 0, "n_eval_images": 0},
                                                    indent=1) + "\n")
        _write_text(tmp / "README.md", "\n".join([
            CARD_MARKER, f"# Text-only pre-training pool (seed {seed}, {size} records)", "",
            "Reading comprehension over scene descriptions (every question kind of the world except grounding, "
            "all phrasings, correct answers"
            + ("" if answer_style == "short" else ", answered in a sentence with no format prompt"
               + (f" but for {', '.join(short_kinds)}, answered in the short format" if short_kinds else ""))
            + "), plain scene descriptions, and the off-target chat"
            + (f" ({format_share:.0%} of its one-word facts asked with the short-answer format prompt)"
               if format_share else "") + ". No pictures. "
            f"Scenes of the evaluation sets of the worlds {list(avoid)} (seed, eval size) never occur. "
            "It pre-trains the language model of the world's foundation (`vlselect models foundation`).", ""]))
    return WorldInfo(out, cfg, dict(counts), {}, {}, 0, 0)


#: Question kinds that :func:`lookup_rows` can teach (the colour of a shape first; the others ask the same lookup in
#: another form: a pair present or not, how many of a colour, the option letter of the colour of a shape, the
#: place of a colour and shape).
LOOKUP_KINDS: tuple[str, ...] = ("color_of_shape", "exist", "count_color", "mc_color", "pos_of")
#: Question kinds a pre-training pool over pictures (:func:`make_pretrain_pool`) can ask: every kind the world
#: asks of a picture but grounding (the text pool's reading kinds), the lookup kinds among them.
ALIGN_KINDS: tuple[str, ...] = LOOKUP_KINDS + tuple(k for k in TEXT_QA_KINDS if k not in LOOKUP_KINDS)
#: The pool task each of those kinds belongs to (:func:`vlselect.world.build.task_kinds`).
LOOKUP_TASK: dict[str, str] = {"color_of_shape": "vqa_color", "exist": "exist", "count_color": "vqa_count",
                               "mc_color": "mc", "pos_of": "vqa_position", "ocr": "ocr", "color_at_pos": "vqa_color",
                               "count_all": "vqa_count", "count_shape": "vqa_count", "shape_at_pos": "vqa_position",
                               "mc_shape": "mc"}


def lookup_rows(n: int, *, seed: int = 0, image_size: int = 24, avoid: tuple[tuple[int, int], ...] = ((0, 200),),
                style: str = "lookup", kinds: tuple[str, ...] = ("color_of_shape",)) -> list[tuple[str, str]]:
    """``n`` raw-text rows ``(prompt, answer)`` that teach a language model to look a thing up: a compact
    description of a scene (:func:`vlselect.world.tasks.compact_caption`), a new line, a shape of exactly one of
    its objects; the answer is that object's colour ("Red square, blue circle.\\ncircle" -> "blue"). The query is
    the last token before the answer, as in the smallest associative-recall task: a tiny transformer learns this
    in a few hundred steps at lr 1e-4 and then finds the object a full description and question name
    (benchmarks/recall_lr.py; benchmarks/RESULTS.md, issue 12). Scenes of the evaluation sets of the worlds in
    ``avoid`` never occur. Deterministic in ``seed``.

    ``style="plain"``: the scene's caption and the world's colour-of-a-shape question in any phrasing, then
    " Answer:" (the query three tokens before the answer); ``"chat"``: that question as the pool asks it, with its
    format line (the user turn; :func:`vlselect.train.foundation.lookup_warmup` puts it in the model's chat
    template, "USER: <caption>\\n<question>\\n<format line> ASSISTANT:": the query some fifteen tokens before the
    answer). Lookup rows, then plain, then chat rows teach the bench's own
    question (benchmarks/recall_lr.py's curriculum on the query's distance).

    ``kinds`` (of :data:`LOOKUP_KINDS`): each row asks one of them, drawn uniformly from a stream of its own (the
    default, the colour of a shape alone, draws nothing: its rows are those of before). Their compact forms, the
    query last: existence "Red square, blue circle.\\nis blue circle" -> "yes" (the world's negatives: the colour or
    the shape present, the pair not); count of a colour "...\\ncount red" -> "1"; the option letter of a shape's
    colour "...\\nA. green B. blue C. red D. yellow\\ncircle" -> "B"; the place of an object, from a description
    with places, "Red square at top left, blue circle at center.\\nwhere blue circle" -> "center" (a pair that two
    objects share is never asked). Plain and chat rows ask the world's own question of the kind
    (:mod:`vlselect.world.tasks`)."""
    if style not in ("lookup", "plain", "chat"):
        raise ConfigError(f"lookup_rows: style={style!r}; use lookup, plain or chat")
    bad = [k for k in kinds if k not in LOOKUP_KINDS]
    if bad or not kinds:
        raise ConfigError(f"lookup_rows: kinds={kinds!r}; use one or more of {', '.join(LOOKUP_KINDS)}")
    from vlselect.world.build import _stream
    from vlselect.world.scene import sample_scene
    from vlselect.world.tasks import ASK, caption_text, compact_caption

    avoid_sigs = _eval_signatures(avoid, image_size)
    rng = _stream(seed, "lookup-rows" if style == "lookup" else f"lookup-rows-{style}")
    krng = _stream(seed, f"lookup-kinds-{style}") if tuple(kinds) != ("color_of_shape",) else None
    rows: list[tuple[str, str]] = []
    kind = "color_of_shape"
    while len(rows) < n:
        scene = sample_scene(rng)
        if krng is not None:
            kind = kinds[int(krng.integers(0, len(kinds)))]
        if style != "lookup":
            qa = ASK[kind](scene, rng, canonical=False)
            if qa is None or scene.signature() in avoid_sigs:
                continue
            if style == "plain":
                q = qa.prompt.split(chr(10))[0] if kind == "color_of_shape" else _without_format_prompt(qa.prompt)
                rows.append((f"{caption_text(scene)}\n{q} Answer:", qa.answer))
            else:  # the user turn; the warm-up renders it with the model's own chat template
                rows.append((f"{caption_text(scene)}\n{qa.prompt}", qa.answer))
            continue
        if scene.signature() in avoid_sigs:
            continue
        if kind == "color_of_shape":
            shapes = [o.shape for o in scene.objects]
            unique = [s for s in sorted(set(shapes)) if shapes.count(s) == 1]
            if not unique:
                continue
            shape = unique[int(rng.integers(0, len(unique)))]
            rows.append((f"{compact_caption(scene)}\n{shape}",
                         next(o.color for o in scene.objects if o.shape == shape)))
            continue
        qa = ASK[kind](scene, rng)
        if qa is None:  # nothing to ask (no shape of exactly one object for the option letter; no object)
            continue
        if kind == "exist":
            color, shape = qa.extra["query"]
            rows.append((f"{compact_caption(scene)}\nis {color} {shape}", qa.answer))
        elif kind == "count_color":
            rows.append((f"{compact_caption(scene)}\ncount {qa.extra['query']}", qa.answer))
        elif kind == "pos_of":
            o = scene.at(qa.extra["target"])
            if sum(x.color == o.color and x.shape == o.shape for x in scene.objects) > 1:
                continue
            rows.append((f"{compact_caption(scene, positions=True)}\nwhere {o.color} {o.shape}", qa.answer))
        else:  # mc_color
            opts = " ".join(f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(qa.extra["options"]))
            rows.append((f"{compact_caption(scene)}\n{opts}\n{qa.extra['shape']}", qa.answer))
    return rows


def _without_format_prompt(prompt: str) -> str:
    """A question prompt without its last line when that is one of the world's format prompts (short answer,
    option letter)."""
    from vlselect.world.vocab import OPTION_SUFFIX, SHORT_SUFFIX

    head, _, last = prompt.rpartition("\n")
    return head if head and last in (SHORT_SUFFIX, OPTION_SUFFIX) else prompt


def _eval_signatures(avoid: tuple[tuple[int, int], ...], image_size: int) -> set:
    """Scene signatures of the evaluation sets of the worlds ``(seed, eval_size)`` in ``avoid``."""
    sigs: set = set()
    for s, e in avoid:
        plan, pictures = plan_eval(WorldConfig(seed=int(s), eval_size=int(e), image_size=image_size))
        sigs |= {pictures[x["picture"]].scene.signature() for samples in plan.values() for x in samples}
    return sigs
