"""Generating the world: pool records, evaluation sets, pictures, the world card.

Generation is two-phase: :func:`plan_pool` and :func:`plan_eval` decide every record and picture from the seed
without drawing a pixel (the corpus uses only this phase); :func:`make_world` then renders the pictures and
writes the files. Every random choice comes from a generator seeded by ``(seed, stream)``, so the result does not
depend on the order in which pictures are rendered.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlselect.errors import ConfigError
from vlselect.world.scene import Scene, easy_scene, is_easy, layout, normalise_box, sample_scene
from vlselect.world.tasks import ASK, LETTERS, QA, text_turn
from vlselect.world.vocab import COLOR_NAMES, NUMBER_WORDS, POSITIONS, SHAPES

#: The pool's tasks, in the order of the card.
TASKS: tuple[str, ...] = (
    "caption", "vqa_color", "vqa_count", "vqa_position", "exist", "ocr", "mc", "grounding", "text",
)
#: Default task shares of the pool: unequal on purpose (captions dominate, as in real pools).
DEFAULT_COMPOSITION: dict[str, float] = {
    "caption": 0.24, "vqa_color": 0.12, "vqa_count": 0.10, "vqa_position": 0.08, "exist": 0.10,
    "ocr": 0.05, "mc": 0.09, "grounding": 0.08, "text": 0.14,
}
#: Mean near-duplicate group size per task (1 = every record has its own scene).
DEFAULT_REDUNDANCY: dict[str, float] = {"caption": 6, "vqa_color": 3, "ocr": 4, "mc": 3}
#: Tasks that get trivially easy groups, and the question kind they ask there.
EASY_KIND: dict[str, str] = {
    "caption": "caption", "vqa_color": "color_of_shape", "vqa_count": "count_all",
    "vqa_position": "pos_of", "exist": "exist", "grounding": "rec",
}
#: The two default tables as the package ships them (a script may change the module's tables for a screen, e.g.
#: ``benchmarks/world_screen.py``; :func:`changed_defaults` tells a cache which world it is).
_SHIPPED_DEFAULTS = {"composition": dict(DEFAULT_COMPOSITION), "redundancy": dict(DEFAULT_REDUNDANCY)}


def changed_defaults() -> dict[str, dict[str, float]]:
    """The default tables (:data:`DEFAULT_COMPOSITION`, :data:`DEFAULT_REDUNDANCY`) that differ from the shipped
    ones, whole; empty for the shipped world. A cache keyed by a world's size and seed adds this to its key, so a
    world built with changed defaults is never reused for the shipped one, nor the other way round."""
    now = {"composition": DEFAULT_COMPOSITION, "redundancy": DEFAULT_REDUNDANCY}
    return {k: dict(v) for k, v in now.items() if v != _SHIPPED_DEFAULTS[k]}


OFF_TARGET: tuple[str, ...] = ("text",)
#: Support tasks: no evaluation set asks about them, but every caption names each object's colour, shape and
#: position, so they teach what the skill sets build on (the card's "support" role; ``less_support``'s default in
#: the bench).
SUPPORT: tuple[str, ...] = ("caption",)


def task_kinds(task: str, compose_share: float) -> list[tuple[str, float]]:
    """Question kinds of a task with their weights; ``compose_share`` is the weight of the two-skill kinds."""
    c = compose_share
    return {
        "caption": [("caption", 1.0)],
        "vqa_color": [("color_of_shape", 1 - c), ("color_at_pos", c)],
        "vqa_count": [("count_all", (1 - c) * 0.6), ("count_shape", (1 - c) * 0.4), ("count_color", c)],
        "vqa_position": [("pos_of", 0.5), ("shape_at_pos", 0.5)],
        "exist": [("exist", 1.0)],
        "ocr": [("ocr", 1.0)],
        "mc": [("mc_color", 0.5), ("mc_shape", 0.5)],
        "grounding": [("rec", 0.5), ("reg", 0.5)],
    }[task]


#: The evaluation sets: name -> (metric, question kinds, description). Skills first, then two-skill sets.
EVAL_SETS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "color": ("exact_match", ("color_of_shape",), "Colour of the one object of a named shape."),
    "count": ("exact_match", ("count_all", "count_shape"), "Number of objects, or of objects of a shape."),
    "position": ("exact_match", ("pos_of", "shape_at_pos"),
                 "Grid position (3x3 names) of a named object, or the shape at a named position."),
    "exist": ("yes_no", ("exist",), "Is there a [colour] [shape]? Half yes; a no shares the colour or the shape with an object."),
    "ocr": ("exact_match", ("ocr",), "The three-letter word on the sign in the bottom row."),
    "mc": ("option_letter", ("mc_color", "mc_shape"),
           "Four-option multiple choice (colour of a shape, shape at a position); answer the letter."),
    "grounding": ("iou", ("rec",), "Box of a named object ([x1, y1, x2, y2] normalised); scored by IoU."),
    "count_color": ("exact_match", ("count_color",), "Two skills: how many objects of a colour (0-4)."),
    "color_position": ("exact_match", ("color_at_pos",), "Two skills: colour of the object at a position."),
}


@dataclass
class WorldConfig:
    """The recipe of a world. Defaults are the documented world (see the card).

    Parameters
    ----------
    size : int
        Number of pool records.
    seed : int
        Seed of everything.
    image_size : int
        Picture side in pixels (a multiple of 3 is not needed; the grid rounds).
    composition : dict
        Task -> share of the pool (normalised to sum to 1).
    redundancy : dict
        Task -> mean near-duplicate group size (near-duplicate pictures of one scene, rephrased questions; for
        ``mc`` the same picture with the options shuffled, as LLaVA-1.5 does with A-OKVQA).
    noisy_share : float
        Share of image-task groups that come from the noisy source.
    noise_rate : float
        Share of the noisy source's records whose answer is wrong (exact per task).
    easy_share : float
        Share of groups that are trivially easy (one large object in the centre) in the tasks of ``EASY_KIND``.
    compose_share : float
        Share of two-skill questions (count by colour, colour at a position) in ``vqa_count`` / ``vqa_color``.
    word_share : float
        Share of non-OCR, non-easy pictures that also carry a sign (a distractor for those tasks).
    eval_size : int
        Samples per evaluation set.
    """

    size: int = 20000
    seed: int = 0
    image_size: int = 64
    composition: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_COMPOSITION))
    redundancy: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_REDUNDANCY))
    noisy_share: float = 0.3
    noise_rate: float = 0.25
    easy_share: float = 0.15
    compose_share: float = 0.25
    word_share: float = 0.15
    eval_size: int = 200

    def validate(self) -> None:
        def bad(name: str, value: Any, fix: str) -> ConfigError:
            return ConfigError(f"world: {name}={value!r} is invalid; {fix}")

        if not isinstance(self.size, int) or self.size < 1:
            raise bad("size", self.size, "give a positive number of pool records, e.g. --size 20000")
        if not isinstance(self.image_size, int) or self.image_size < 24:
            raise bad("image_size", self.image_size, "use at least 24 pixels (64 is the default)")
        if not isinstance(self.eval_size, int) or self.eval_size < 1:
            raise bad("eval_size", self.eval_size, "give a positive number of samples per evaluation set")
        unknown = sorted(set(self.composition) - set(TASKS))
        if unknown:
            raise bad("composition", unknown, f"use task names from {list(TASKS)}")
        if any(v < 0 for v in self.composition.values()) or sum(self.composition.values()) <= 0:
            raise bad("composition", self.composition, "shares must be >= 0 with a positive sum")
        for name in ("noisy_share", "noise_rate", "easy_share", "compose_share", "word_share"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise bad(name, v, "use a fraction between 0 and 1")
        if any(v < 1 for v in self.redundancy.values()):
            raise bad("redundancy", self.redundancy, "mean group sizes must be >= 1")

    def task_counts(self) -> dict[str, int]:
        """Records per task: shares times size, rounded by largest remainder so the counts sum to ``size``."""
        total = sum(self.composition.get(t, 0.0) for t in TASKS)
        raw = {t: self.size * self.composition.get(t, 0.0) / total for t in TASKS}
        counts = {t: int(np.floor(v)) for t, v in raw.items()}
        rest = self.size - sum(counts.values())
        order = sorted(TASKS, key=lambda t: (-(raw[t] - counts[t]), TASKS.index(t)))
        for t in order[:rest]:
            counts[t] += 1
        return counts


@dataclass
class Picture:
    scene: Scene
    variant: int
    style: str  # "clean" | "noisy"

    def boxes(self, image_size: int) -> list[list[float]]:
        return [normalise_box(b, image_size) for b in layout(self.scene, self.variant, image_size)]


@dataclass
class PlannedRecord:
    task: str
    group: str
    source: str  # "clean" | "noisy"
    easy: bool
    kind: str
    turns: list[tuple[str, str]]  # (human prompt without <image>, gpt answer)
    correct: bool = True
    wrong: str | None = None
    picture: int | None = None  # index into the picture list; None for text-only
    extra: dict = field(default_factory=dict)


def _stream(seed: int, *names: int | str) -> np.random.Generator:
    """A generator for one named stream of randomness (independent of every other stream)."""
    key = [seed] + [n if isinstance(n, int) else int.from_bytes(hashlib.sha256(n.encode()).digest()[:8], "little")
                    for n in names]
    return np.random.default_rng(key)


def _choose_kind(rng: np.random.Generator, kinds: list[tuple[str, float]]) -> str:
    w = np.array([k[1] for k in kinds], dtype=np.float64)
    return kinds[int(rng.choice(len(kinds), p=w / w.sum()))][0]


def _variant(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**62))


#: Answer values the evaluation sets cycle through, so that no answer dominates a set (majority guessing stays
#: near chance). Kinds not listed keep their natural distribution (grounding boxes; OCR words are uniform already).
BALANCED_ANSWERS: dict[str, tuple[str, ...]] = {
    "color_of_shape": COLOR_NAMES, "color_at_pos": COLOR_NAMES,
    "count_all": ("1", "2", "3", "4"), "count_shape": ("0", "1", "2", "3"), "count_color": ("0", "1", "2", "3"),
    "pos_of": POSITIONS, "shape_at_pos": SHAPES, "exist": ("yes", "no"),
    "mc_color": LETTERS, "mc_shape": LETTERS,
}


def plan_eval(cfg: WorldConfig) -> tuple[dict[str, list[dict]], list[Picture]]:
    """Plan the evaluation sets: per set, samples with a picture index. Depends only on (seed, eval_size,
    image_size), never on the pool, so a benchmark can compare worlds of different sizes on the same sets.
    Answers are balanced over :data:`BALANCED_ANSWERS` (rejection sampling from the set's own stream)."""
    pictures: list[Picture] = []
    sets: dict[str, list[dict]] = {}
    for name, (metric, kinds, _desc) in EVAL_SETS.items():
        rng = _stream(cfg.seed, "eval", name)
        samples = []
        tries = 0
        while len(samples) < cfg.eval_size:
            i = len(samples)
            kind = kinds[i % len(kinds)]
            values = BALANCED_ANSWERS.get(kind)
            target = values[(i // len(kinds)) % len(values)] if values else None
            scene = sample_scene(rng, word=(kind == "ocr"), n_objects=(None if kind != "ocr" else
                                                                        int(rng.integers(0, 4))))
            if is_easy(scene):
                continue
            pic = Picture(scene, _variant(rng), "clean")
            boxes = pic.boxes(cfg.image_size)
            qa = ASK[kind](scene, rng, canonical=True, boxes=boxes)
            if qa is None:
                continue
            tries += 1
            if target is not None and qa.answer != target and tries < 2000:
                continue
            tries = 0
            pictures.append(pic)
            samples.append({"kind": kind, "qa": qa, "picture": len(pictures) - 1, "metric": metric})
        sets[name] = samples
    return sets, pictures


def eval_answers(metric: str, qa: QA) -> list[str]:
    if qa.kind.startswith("count"):
        return [qa.answer, NUMBER_WORDS[int(qa.answer)]]
    return [qa.answer]


def plan_pool(cfg: WorldConfig, avoid: set | None = None) -> tuple[list[PlannedRecord], list[Picture]]:
    """Plan the pool: every record and picture, decided from the seed without drawing a pixel.

    Per task (``cfg.task_counts()``), groups are drawn until the task is full: a group is one scene asked one
    question kind, ``k`` times (near-duplicate pictures with rephrased prompts; for ``mc`` one picture with the
    options shuffled, as the LLaVA-1.5 mix duplicates A-OKVQA, ``specs/dataoptim.md`` §11.3); it is easy with
    probability ``easy_share`` (tasks of :data:`EASY_KIND`) and otherwise from the noisy source with probability
    ``noisy_share``. Then exactly ``round(noise_rate * n_noisy)`` of the task's noisy records get their wrong
    answer. Finally all records are shuffled with the ``order`` stream.

    Parameters
    ----------
    cfg : WorldConfig
    avoid : set, optional
        Scene signatures that must not occur (the evaluation scenes).

    Returns
    -------
    records : list of PlannedRecord
        In pool order.
    pictures : list of Picture
        Indexed by ``PlannedRecord.picture``.
    """
    avoid = avoid or set()
    counts = cfg.task_counts()
    records: list[PlannedRecord] = []
    pictures: list[Picture] = []
    for task in TASKS:
        n = counts[task]
        rng = _stream(cfg.seed, "pool", task)
        task_records: list[PlannedRecord] = []
        if task == "text":
            while len(task_records) < n:
                n_turns = 2 if rng.random() < 0.3 else 1
                turns = [text_turn(rng) for _ in range(n_turns)]
                task_records.append(PlannedRecord(
                    task, f"text-{len(task_records):05d}", "clean", False, turns[0][0],
                    [(q, a) for _, q, a in turns]))
            records.extend(task_records)
            continue
        kinds = task_kinds(task, cfg.compose_share)
        mean = float(cfg.redundancy.get(task, 1))
        g = 0
        while len(task_records) < n:
            gid = f"{task}-{g:05d}"
            g += 1
            easy = task in EASY_KIND and rng.random() < cfg.easy_share
            source = "noisy" if (not easy and rng.random() < cfg.noisy_share) else "clean"
            k = 1 if mean <= 1 else int(rng.integers(1, int(round(2 * mean))))
            k = min(k, n - len(task_records))
            kind = EASY_KIND[task] if easy else _choose_kind(rng, kinds)
            while True:
                if easy:
                    scene = easy_scene(rng)
                else:
                    word = task == "ocr" or rng.random() < cfg.word_share
                    n_obj = int(rng.integers(0, 4)) if task == "ocr" else None
                    scene = sample_scene(rng, n_objects=n_obj, word=word)
                    if is_easy(scene):
                        continue
                if scene.signature() in avoid:
                    continue
                probe = ASK[kind](scene, np.random.default_rng(0), boxes=[[0.0] * 4] * len(scene.objects),
                                  easy=easy)
                if probe is not None:
                    break
            group_seed = _variant(rng)
            shared_picture = None
            base_qa = None
            for j in range(k):
                if task == "mc" and shared_picture is not None:
                    pic_index = shared_picture
                else:
                    pictures.append(Picture(scene, _variant(rng), source))
                    pic_index = len(pictures) - 1
                    if task == "mc":
                        shared_picture = pic_index
                boxes = pictures[pic_index].boxes(cfg.image_size)
                grng = np.random.default_rng([group_seed, 3])  # same target for the whole group
                trng = np.random.default_rng([group_seed, 4, j])  # its own phrasing
                if task == "mc" and base_qa is not None:
                    opts = list(base_qa.extra["options"])
                    perm = [opts[int(i)] for i in trng.permutation(4)]
                    qa = ASK[kind](scene, grng, options=perm, shape=base_qa.extra.get("shape"),
                                   cell=base_qa.extra.get("cell"))
                else:
                    qa = ASK[kind](scene, grng, trng=trng, boxes=boxes, easy=easy)
                    base_qa = qa
                task_records.append(PlannedRecord(
                    task, gid, source, easy, kind, [(qa.prompt, qa.answer)], True, qa.wrong, pic_index,
                    dict(qa.extra)))
        # the noisy source is wrong on exactly round(noise_rate * its records) of this task
        noisy = [i for i, r in enumerate(task_records) if r.source == "noisy"]
        m = int(round(cfg.noise_rate * len(noisy)))
        if m:
            for i in sorted(int(x) for x in rng.choice(noisy, size=m, replace=False)):
                r = task_records[i]
                r.turns = [(r.turns[0][0], r.wrong)]
                r.correct = False
        records.extend(task_records)
    order = _stream(cfg.seed, "order").permutation(len(records))
    return [records[int(i)] for i in order], pictures


__all__ = [
    "DEFAULT_COMPOSITION", "DEFAULT_REDUNDANCY", "EASY_KIND", "EVAL_SETS", "LETTERS", "OFF_TARGET", "SUPPORT", "TASKS",
    "Picture", "PlannedRecord", "WorldConfig", "plan_eval", "plan_pool", "task_kinds",
]
