"""The world's foundation: a small pretrained VLM the benchmark and the demo fine-tune, as real VIT starts from
a pretrained vision encoder, a pretrained language model and a projector aligned on captions (LLaVA-1.5 stage 1).

Real visual instruction tuning (LLaVA-1.5 stage 2) starts from CLIP/SigLIP, an instruction-following LLM such as
Vicuna, and a projector trained on 558K captions with both frozen; stage 2 then mostly teaches formats and skills
on top of features that exist. :func:`build_foundation` makes the analogue for the synthetic world, in up to four
stages after a warm-up (the shipped recipe, :data:`SHIPPED_RECIPE`, has them all), each a
:func:`vlselect.train.train_lora` run on a world pool that shares no scene with the benchmark's evaluation sets:

0. ``lookup``: the language model learns to find the object a question names in compact descriptions
   (:func:`vlselect.train.foundation.lookup_warmup`).

1. ``language``: the tiny LLaVA's language model is trained on a text-only pool
   (:func:`vlselect.world.make.make_text_pool`): scene descriptions, reading comprehension over descriptions
   (the world's questions answered from words, as a real LLM answers questions about a text) and chat.
2. ``vision``: the vision tower (random), the projector and the language model are trained together
   (``adapter="full"``) on the captions of a separate, large caption world mixed with text records of stage 1's
   kind, so that the language model keeps reading while the picture's tokens learn to say what a description
   says, in the language model's own input space.
3. ``align``: the projector alone is trained further on another caption world, vision tower and language model
   both frozen (LLaVA-1.5 stage 1), a share of its pictures asked the world's questions instead.
4. ``instruct``: the language model and the projector learn the world's questions over pictures, answered in
   sentences but for one kind of each evaluation set (a multi-task pre-training, as real VLMs have before
   visual instruction tuning), the vision tower frozen.

Measured while designing it (benchmarks/RESULTS.md, issue 12): a freshly initialised projector aligned with both
frozen (LLaVA's order, after a vision tower trained with its own decoder) reached a caption loss of only 0.57 on
20,000 captions and named 10% of the objects of a held-out picture right, against 85% for the captioning model
itself: a 2-layer MLP on 20,000 captions cannot join a vision tower and a language model trained apart at this
scale, which CLIP's contrastive alignment makes possible in real VLMs. Training the vision tower through the
frozen language model stalled too (caption loss flat at 0.58), and captioning alone made the language model
forget how to read; training the three together on captions mixed with text is what worked.

The result is a complete Hugging Face model directory (about 3.5 MB) that ships inside the package
(:func:`foundation_path`), with ``vlselect_foundation.json`` holding its recipe and fingerprint; the benchmark
and the demo start from it. ``vlselect models foundation DIR`` rebuilds it from the recipe
(:func:`vlselect.train.foundation.build_foundation`: building trains, so it lives with training; this module only
names, reads and checks a foundation).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlselect.errors import ModelError

#: Where the built foundation ships (package data).
SHIPPED = Path(__file__).with_name("foundation_b24")
MARKER = "vlselect_foundation.json"


@dataclass(frozen=True)
class FoundationRecipe:
    """The recipe of a foundation. Defaults: the recipe shipped from 2026-12-04 to 2026-12-06 (the one shipped now is
    :data:`SHIPPED_RECIPE`, which sets the fields below that say "shipped" to other values).

    ``avoid`` lists the worlds ``(seed, eval_size)`` whose evaluation scenes no foundation pool may contain (the
    benchmark's full and quick worlds). ``*_size`` are records, ``*_lr`` learning rates (AdamW, cosine schedule,
    3% warm-up), one epoch each but ``vision_epochs`` for stage 2, batch ``batch_size``. ``vision_lr`` is stage 2's
    rate for every part it trains (1e-3 in the defaults, 3e-4 shipped: at 1e-3 two vision epochs left the language
    model reading counting by colour off descriptions 19-27% right after stage 1's 98%, at 3e-4 85%, with a lower
    caption loss; benchmarks/RESULTS.md, issue 12).

    ``vision_epochs``: the defaults have 1, the shipped recipe 2. Two (measured, benchmarks/RESULTS.md, issue 12)
    make the vision tower read the world's words: a full-pool fine-tune then learns OCR (40.5 against 6.5; 25.5 with
    another seed of the stage) and counts and places better; without the later stages every subset fell further
    behind.

    ``counted_captions``: the captions of stages 2 and 3 start with the number of objects ("3 objects: a small
    red cross at the top, ..."; the same scenes and pictures), as real captions often say how many things a
    picture holds. A vision tower that has to say how many objects it sees makes counting cheap to fine-tune (a
    random 20% of the bench's pool then counts as well as the full pool) and the foundation answers the colour and
    position questions in the bench's format zero-shot (benchmarks/RESULTS.md, issue 12). The shipped foundation
    and the defaults have them (the first one, before 2026-12-04, had plain captions).

    ``answer_style``: how stage 1's reading records answer (:func:`vlselect.world.make.make_text_pool`): ``"short"``
    (the first foundation's recipe) in the evaluation sets' format, with its format prompt; ``"sentence"`` with no format
    prompt and a sentence ("The answer is red."), as a general LLM answers before LLaVA-1.5's stage 2 teaches the
    short format: the foundation then knows what a picture shows without answering the bench in format. Measured with
    counted captions and two vision epochs (benchmarks/RESULTS.md, issue 12): zero-shot 0 on every VQA set, five
    sets learned by the full pool, TIVE and COINCIDE above random at 20%, but random keeps only 69% of the full pool
    there (a subset has to teach each question kind its answer type). The shipped foundation answers in
    sentences but for ``short_kinds``.

    ``lookup_steps``: steps of a warm-up before stage 1 that teaches the language model to look a thing up
    (:func:`vlselect.train.foundation.lookup_warmup`: compact descriptions, the shape asked for right before the
    answer, at ``text_lr``). The bench's language model does not learn to find the object a question names from the
    world's descriptions and questions alone; after a few hundred such steps at lr 1e-4 it does (benchmarks/
    recall_lr.py, benchmarks/RESULTS.md, issue 12). The defaults have 0, the shipped recipe 4,000. ``lookup_plain_steps`` and
    ``lookup_chat_steps``: more warm-up steps on the world's colour-of-a-shape question asked plainly, then as the
    bench asks it (the curriculum on the query's distance that teaches the bench's prompt in text); 0 in the defaults,
    3,000 each shipped.

    ``lookup_kinds``: the question kinds of the warm-up's rows (:data:`vlselect.world.make.LOOKUP_KINDS`; the colour
    of a shape alone by default).

    ``align_lookup_share``: the share of stage 3's pictures asked the colour of the one object of a shape (the
    world's question, short-answer format) instead of their caption (:func:`vlselect.world.make.make_pretrain_pool`).
    The projector, trained alone with the language model frozen, then makes the pictures' tokens answerable by the
    lookup the warm-up taught in text: after the curriculum warm-up, 40,000 such questions took the colour of a
    shape over pictures from the random-object answer to 90% (benchmarks/RESULTS.md, issue 12). 0 in the defaults,
    0.67 shipped.
    ``align_lookup_kinds``: the question kinds those pictures are asked (of
    :data:`vlselect.world.make.ALIGN_KINDS`, one drawn per picture; the colour of a shape alone by default).

    ``align_word_share``: the share of stage 3's pictures with a sign (0.15, the world's); only those can be asked
    their word (``"ocr"`` in ``align_lookup_kinds``; 0.4 shipped). ``vision_word_share``: the same for stage 2's
    captions (0.15 in the defaults, 0.4 shipped): with 15%, two vision epochs taught the tower to read the sign on
    some builds and not on others (benchmarks/RESULTS.md, issue 12).

    ``instruct_size``: pictures of a fourth stage (0 in the defaults: none; 40,000 shipped) after the alignment, in which the language model
    and the projector (every weight, the vision tower frozen) learn the world's questions over pictures, as real
    VLMs' multi-task pre-training does before visual instruction tuning: a pool of its own
    (:func:`vlselect.world.make.make_pretrain_pool`, seed ``seed + 29``) in which a share ``instruct_share`` of the
    pictures is asked one of every question kind of the world but grounding and the others captioned, answered in
    sentences ("The answer is red.") but for ``instruct_short_kinds`` (the short format); one epoch at
    ``instruct_lr``. ``instruct_word_share``: the share of that pool's pictures with a sign (0.15, the world's, in
    the defaults and shipped); only those can be asked their word. The fine-tune then teaches mostly the format of the other kinds (benchmarks/RESULTS.md, issue
    12: on a screened foundation's stages, seven sets learned by the full pool in two worlds at the bench's lr 3e-4,
    random keeping 77-81% at 5% and 89-96% at 20%).

    ``format_share``: the share of stage 1's one-word chat facts (arithmetic, colour mixing, sides of a shape) asked
    with the short-answer format prompt and answered in one word (:func:`vlselect.world.make.make_text_pool`): the
    language model knows the instruction from questions the benchmark does not ask, as an instruction-tuned LLM
    does, while ``answer_style="sentence"`` keeps the benchmark's own kinds out of that format. The shipped
    foundation and the defaults have 0.

    ``short_kinds``: with ``answer_style="sentence"``, the reading kinds of stage 1
    (:data:`vlselect.world.make.TEXT_QA_KINDS`) that keep the short format and its prompt: the foundation then
    answers those kinds in the benchmark's format zero-shot and leaves the others' format to the fine-tune (a
    foundation between the short and the sentence one). The shipped foundation and the defaults keep one kind of
    each evaluation set short (colour of a shape, number of objects, position of an object, existence, multiple-choice colour)
    and answer the others (colour at a position, count of a shape or colour, shape at a position, OCR,
    multiple-choice shape) in sentences: on the defaults' foundation a random 5% of the bench's pool then learns the
    format of the sister kinds, random keeps 93% of the full pool at 20% (75% at 5%), and TIVE (10% and 20%) and
    COINCIDE (10%) beat random (benchmarks/RESULTS.md, issue 12).
    """

    family: str = "llava"
    size: str = "b"
    image_size: int = 24
    seed: int = 0
    avoid: tuple[tuple[int, int], ...] = ((0, 200), (0, 100))
    text_size: int = 60000
    text_lr: float = 1e-3
    vision_size: int = 40000
    vision_text_size: int = 20000
    vision_lr: float = 1e-3
    vision_epochs: int = 1
    counted_captions: bool = True
    answer_style: str = "sentence"
    format_share: float = 0.0
    short_kinds: tuple[str, ...] = ("color_of_shape", "count_all", "pos_of", "exist", "mc_color")
    align_size: int = 20000
    align_lr: float = 1e-3
    batch_size: int = 32
    lookup_steps: int = 0
    lookup_plain_steps: int = 0
    lookup_chat_steps: int = 0
    align_lookup_share: float = 0.0
    lookup_kinds: tuple[str, ...] = ("color_of_shape",)
    align_lookup_kinds: tuple[str, ...] = ("color_of_shape",)
    align_word_share: float = 0.15
    vision_word_share: float = 0.15
    instruct_size: int = 0
    instruct_share: float = 0.75
    instruct_lr: float = 1e-4
    instruct_short_kinds: tuple[str, ...] = ("color_of_shape", "count_all", "pos_of", "exist", "mc_color")
    instruct_word_share: float = 0.15

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["avoid"] = [list(a) for a in self.avoid]
        d["short_kinds"] = list(self.short_kinds)
        d["lookup_kinds"] = list(self.lookup_kinds)
        d["align_lookup_kinds"] = list(self.align_lookup_kinds)
        d["instruct_short_kinds"] = list(self.instruct_short_kinds)
        if not self.instruct_size:  # no stage 4: its settings say nothing (and name no work folder of their own)
            for k in ("instruct_share", "instruct_lr", "instruct_short_kinds", "instruct_word_share"):
                d[k] = ADDED_FIELDS[k]
        # fields added after the first recipe are written only when they differ from what that recipe did: its
        # JSON (and the work folders named by it) stay as before
        for k, v in ADDED_FIELDS.items():
            if d[k] == v:
                del d[k]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FoundationRecipe":
        # a field missing from the JSON was written by a recipe that did what the first recipe did
        d = {**ADDED_FIELDS, **d}
        d["avoid"] = tuple(tuple(a) for a in d.get("avoid", ()))
        d["short_kinds"] = tuple(d["short_kinds"])
        d["lookup_kinds"] = tuple(d["lookup_kinds"])
        d["align_lookup_kinds"] = tuple(d["align_lookup_kinds"])
        d["instruct_short_kinds"] = tuple(d["instruct_short_kinds"])
        return cls(**d)

    def scaled(self, factor: float) -> "FoundationRecipe":
        """The same recipe on ``factor`` times the data (a quick build for tests)."""
        from dataclasses import replace

        return replace(self, text_size=max(32, int(self.text_size * factor)),
                       vision_size=max(32, int(self.vision_size * factor)),
                       vision_text_size=max(16, int(self.vision_text_size * factor)),
                       align_size=max(32, int(self.align_size * factor)),
                       instruct_size=max(32, int(self.instruct_size * factor)) if self.instruct_size else 0,
                       lookup_steps=max(1, int(self.lookup_steps * factor)) if self.lookup_steps else 0,
                       lookup_plain_steps=max(1, int(self.lookup_plain_steps * factor)) if self.lookup_plain_steps else 0,
                       lookup_chat_steps=max(1, int(self.lookup_chat_steps * factor)) if self.lookup_chat_steps else 0)


#: Recipe fields added after the first foundation, with what that foundation did (omitted from the JSON when equal).
ADDED_FIELDS: dict[str, Any] = {"vision_epochs": 1, "counted_captions": False, "answer_style": "short",
                                "format_share": 0.0, "short_kinds": [], "lookup_steps": 0,
                                "lookup_plain_steps": 0, "lookup_chat_steps": 0,
                                "align_lookup_share": 0.0, "lookup_kinds": ["color_of_shape"],
                                "align_lookup_kinds": ["color_of_shape"], "align_word_share": 0.15,
                                "vision_word_share": 0.15, "instruct_size": 0, "instruct_share": 0.75, "instruct_lr": 1e-4,
                                "instruct_short_kinds": ["color_of_shape", "count_all", "pos_of", "exist", "mc_color"],
                                "instruct_word_share": 0.15}


#: The recipe of the shipped foundation (since 2026-12-06). The class's defaults are the recipe shipped before it
#: (2026-12-04 to 2026-12-06), on which the screened variants of ``benchmarks/foundation_screen.py`` are written.
#: Four stages after a lookup warm-up in text: the language model on 120,000 text records at lr 1e-4, two vision
#: epochs at lr 3e-4 (at 1e-3 the language model forgot counting by colour there) with 40% of the captions' pictures
#: holding a sign, a projector alignment on 60,000 pictures of which 67%
#: are asked one of five question kinds (the colour of a shape, existence, the count of a colour, the
#: multiple-choice colour, the word on a sign), and the fourth stage on 40,000 pictures asked every kind but
#: grounding; no pool holds an evaluation scene of the bench's worlds 0-3 or of the quick world
#: (benchmarks/RESULTS.md, issue 12).
SHIPPED_RECIPE = FoundationRecipe(
    avoid=((0, 200), (1, 200), (2, 200), (3, 200), (0, 100)), lookup_steps=4000, lookup_plain_steps=3000,
    lookup_chat_steps=3000, lookup_kinds=("color_of_shape", "exist", "count_color", "mc_color"), text_lr=1e-4,
    text_size=120000, vision_epochs=2, vision_word_share=0.4, vision_lr=3e-4, align_size=60000,
    align_lookup_share=0.67,
    align_lookup_kinds=("color_of_shape", "exist", "count_color", "mc_color", "ocr"), align_word_share=0.4,
    instruct_size=40000)


def foundation_path() -> Path:
    """The shipped foundation's directory (a Hugging Face model directory; ``load_vlm`` reads it)."""
    if not (SHIPPED / MARKER).exists():
        raise ModelError(f"{SHIPPED}: the shipped foundation is missing ({MARKER} not found); reinstall vlselect, or "
                         "build one with 'vlselect models foundation DIR'")
    return SHIPPED


def foundation_info(model_dir: str | os.PathLike) -> dict[str, Any]:
    """``vlselect_foundation.json`` of a foundation directory: its recipe, fingerprint and stage losses."""
    p = Path(model_dir) / MARKER
    if not p.exists():
        raise ModelError(f"{model_dir}: not a vlselect foundation ({MARKER} missing); build one with "
                         "'vlselect models foundation DIR'")
    try:
        return json.loads(p.read_text())
    except ValueError as exc:
        raise ModelError(f"{p}: unreadable ({exc}); rebuild the foundation with 'vlselect models foundation DIR'") \
            from None


def verify_foundation(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Check that a foundation's weights are the ones its marker records (the fingerprint is
    :func:`vlselect.models.load.model_hash`); return its info. A mismatch is a :class:`ModelError`."""
    from vlselect.models.load import model_hash

    info = foundation_info(model_dir)
    actual = model_hash(model_dir)
    if info.get("fingerprint") != actual:
        raise ModelError(f"{model_dir}: weights ({actual}) differ from the recorded fingerprint "
                         f"({info.get('fingerprint')}); rebuild it with 'vlselect models foundation DIR'")
    return info


def explain_fingerprint_difference(built_dir: str | os.PathLike, shipped_dir: str | os.PathLike) -> str:
    """Why two foundations of the same recipe have different fingerprints, from their files.

    A fingerprint hashes ``config.json`` and the weights. ``config.json`` records the transformers version that
    saved it, so a build under another transformers version differs even when every weight is the same byte; the
    weights then differ only through floating-point differences between machines (or library versions).
    """
    import hashlib

    a, b = Path(built_dir), Path(shipped_dir)

    def weights(p: Path) -> dict[str, str]:
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted(p.iterdir()) if f.suffix in (".safetensors", ".bin")}

    ca, cb = (json.loads((p / "config.json").read_text()) for p in (a, b))
    keys = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
    version = ""
    if "transformers_version" in keys:
        version = (f"saved by transformers {ca.get('transformers_version')}, the shipped one by "
                   f"{cb.get('transformers_version')}")
    if weights(a) == weights(b):
        others = [k for k in keys if k != "transformers_version"]
        cause = "; ".join(filter(None, [version, others and f"{'also ' if version else ''}in {', '.join(others)}"]))
        return (f"the weights are identical to the shipped foundation's; only config.json differs ({cause}), and "
                "the fingerprint hashes it")
    why = "floating-point differences between machines (or library versions) changed the weights' bytes"
    return f"the recipe is the same, so {why}" + (f"; it was also {version}" if version else "")
