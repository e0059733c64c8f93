"""Questions and answers about a scene, one function per question kind, plus the off-target text-only chat.

Every function returns an :class:`QA`: the prompt (without ``<image>``), the correct answer, and one wrong
answer of the same type (what the noisy source writes when it is wrong). Templates: ``vocab.QUESTIONS`` (index 0
is the canonical phrasing the evaluation sets use).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vlselect.world.scene import Obj, Scene, format_box
from vlselect.world.vocab import (
    CAPTION_PROMPTS,
    COLOR_NAMES,
    GREETINGS,
    MC_PROMPT,
    MIX,
    PLURALS,
    POSITIONS,
    QUESTIONS,
    REC_PROMPT,
    REG_PROMPT,
    SHAPES,
    SHORT_SUFFIX,
    SIDES,
    WORDS,
)

LETTERS = "ABCD"


@dataclass
class QA:
    prompt: str
    answer: str
    wrong: str
    kind: str
    extra: dict = field(default_factory=dict)  # options, box, target


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(0, len(seq)))]


def _other(rng: np.random.Generator, seq, value):
    rest = [v for v in seq if v != value]
    return _pick(rng, rest)


def _template(rng: np.random.Generator, kind: str, canonical: bool) -> str:
    t = QUESTIONS[kind]
    return t[0] if canonical else _pick(rng, t)


def short(question: str) -> str:
    """A short-answer VQA prompt, LLaVA-1.5 style (§11.3): the question, a newline, the format prompt."""
    return f"{question}\n{SHORT_SUFFIX}"


def compact_caption(scene: Scene, positions: bool = False) -> str:
    """Each object's colour and shape and nothing else: "Red square, blue circle." (the foundation's lookup
    warm-up, :func:`vlselect.world.make.lookup_rows`); with ``positions`` each object's place too: "Red square at
    top left, blue circle at center."."""
    body = ", ".join(f"{o.color} {o.shape}" + (f" at {o.pos}" if positions else "") for o in scene.objects) or "nothing"
    return body[0].upper() + body[1:] + "."


def caption_text(scene: Scene, counted: bool = False) -> str:
    """The caption: every object with its size, colour, shape and position, then the word if any.

    ``counted`` puts the number of objects first ("3 objects: a small red cross at the top, ..."), as real
    captions often say how many things a picture holds (the foundation's caption pools, issue 12)."""
    parts = [f"a {o.phrase()} at the {o.pos}" for o in scene.objects]
    if not parts:
        body = "An empty picture"
    elif len(parts) == 1:
        body = parts[0]
    else:
        body = ", ".join(parts[:-1]) + " and " + parts[-1]
    body = body[0].upper() + body[1:] + "."
    if scene.word is not None:
        body += f" A sign at the bottom says {scene.word}."
    if counted:
        n = len(scene.objects)
        body = f"{n} object{'' if n == 1 else 's'}: " + body[0].lower() + body[1:]
    return body


def unique_shapes(scene: Scene) -> list[str]:
    return [s for s in SHAPES if len(scene.with_shape(s)) == 1]


# --- one function per question kind ------------------------------------------------------------------------


def ask_caption(scene: Scene, rng, canonical=False, trng=None, **_) -> QA:
    prompt = CAPTION_PROMPTS[0] if canonical else _pick(trng or rng, CAPTION_PROMPTS)
    right = caption_text(scene)
    # wrong: one object's colour changed
    if scene.objects:
        i = int(rng.integers(0, len(scene.objects)))
        o = scene.objects[i]
        taken = {(p.color, p.shape) for p in scene.objects}
        choices = [c for c in COLOR_NAMES if (c, o.shape) not in taken]
        objs = list(scene.objects)
        objs[i] = Obj(o.shape, _pick(rng, choices), o.size, o.cell)
        wrong = caption_text(Scene(tuple(objs), scene.word))
    else:  # pragma: no cover - captions always have objects
        wrong = right
    return QA(prompt, right, wrong, "caption")


def ask_color_of_shape(scene: Scene, rng, canonical=False, trng=None, **_) -> QA | None:
    shapes = unique_shapes(scene)
    if not shapes:
        return None
    shape = _pick(rng, shapes)
    o = scene.with_shape(shape)[0]
    q = _template(trng or rng, "color_of_shape", canonical).format(shape=shape)
    return QA(short(q), o.color, _other(rng, COLOR_NAMES, o.color), "color_of_shape", {"target": o.cell})


def ask_color_at_pos(scene: Scene, rng, canonical=False, trng=None, **_) -> QA | None:
    if not scene.objects:
        return None
    o = _pick(rng, scene.objects)
    q = _template(trng or rng, "color_at_pos", canonical).format(pos=o.pos)
    return QA(short(q), o.color, _other(rng, COLOR_NAMES, o.color), "color_at_pos", {"target": o.cell})


def ask_count_all(scene: Scene, rng, canonical=False, trng=None, **_) -> QA:
    n = len(scene.objects)
    q = _template(trng or rng, "count_all", canonical)
    return QA(short(q), str(n), str(_other(rng, range(1, 5), n)), "count_all")


def ask_count_shape(scene: Scene, rng, canonical=False, trng=None, **_) -> QA:
    present = sorted({o.shape for o in scene.objects})
    shape = _pick(rng, present) if present and rng.random() < 0.8 else _pick(rng, SHAPES)
    n = len(scene.with_shape(shape))
    q = _template(trng or rng, "count_shape", canonical).format(shapes=PLURALS[shape])
    return QA(short(q), str(n), str(_other(rng, range(0, 5), n)), "count_shape")


def ask_count_color(scene: Scene, rng, canonical=False, trng=None, **_) -> QA:
    present = sorted({o.color for o in scene.objects})
    color = _pick(rng, present) if present and rng.random() < 0.8 else _pick(rng, COLOR_NAMES)
    n = len(scene.with_color(color))
    q = _template(trng or rng, "count_color", canonical).format(color=color)
    return QA(short(q), str(n), str(_other(rng, range(0, 5), n)), "count_color", {"query": color})


def ask_shape_at_pos(scene: Scene, rng, canonical=False, trng=None, **_) -> QA | None:
    if not scene.objects:
        return None
    o = _pick(rng, scene.objects)
    q = _template(trng or rng, "shape_at_pos", canonical).format(pos=o.pos)
    return QA(short(q), o.shape, _other(rng, SHAPES, o.shape), "shape_at_pos", {"target": o.cell})


def ask_pos_of(scene: Scene, rng, canonical=False, trng=None, **_) -> QA | None:
    if not scene.objects:
        return None
    o = _pick(rng, scene.objects)
    q = _template(trng or rng, "pos_of", canonical).format(color=o.color, shape=o.shape)
    return QA(short(q), o.pos, _other(rng, POSITIONS, o.pos), "pos_of", {"target": o.cell})


def ask_exist(scene: Scene, rng, canonical=False, easy=False, trng=None, **_) -> QA:
    taken = {(o.color, o.shape) for o in scene.objects}
    if scene.objects and rng.random() < 0.5:
        o = _pick(rng, scene.objects)
        color, shape, ans = o.color, o.shape, "yes"
    else:
        ans = "no"
        if easy or not scene.objects:  # an easy negative: nothing in the picture shares colour or shape
            colors = [c for c in COLOR_NAMES if c not in {o.color for o in scene.objects}]
            shapes = [s for s in SHAPES if s not in {o.shape for o in scene.objects}]
            color, shape = _pick(rng, colors), _pick(rng, shapes)
        else:  # a hard negative: the colour or the shape is in the picture, the pair is not
            o = _pick(rng, scene.objects)
            other_shapes = [s for s in SHAPES if (o.color, s) not in taken]
            other_colors = [c for c in COLOR_NAMES if (c, o.shape) not in taken]
            # (every shape can be taken in the object's colour: four objects of one colour; then vary the colour)
            if (rng.random() < 0.5 and other_shapes) or not other_colors:
                color, shape = o.color, _pick(rng, other_shapes)
            else:
                shape, color = o.shape, _pick(rng, other_colors)
    q = _template(trng or rng, "exist", canonical).format(color=color, shape=shape)
    return QA(short(q), ans, "no" if ans == "yes" else "yes", "exist", {"query": [color, shape]})


def ask_ocr(scene: Scene, rng, canonical=False, trng=None, **_) -> QA | None:
    if scene.word is None:
        return None
    q = _template(trng or rng, "ocr", canonical)
    return QA(short(q), scene.word, _other(rng, WORDS, scene.word), "ocr")


def _mc(rng, question: str, answer: str, pool: tuple[str, ...], kind: str, options: list[str] | None) -> QA:
    if options is None:
        distract = [v for v in pool if v != answer]
        idx = rng.permutation(len(distract))[:3]
        options = [answer] + [distract[int(i)] for i in idx]
        options = [options[int(i)] for i in rng.permutation(4)]
    letter = LETTERS[options.index(answer)]
    text = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    prompt = MC_PROMPT.format(question=question, options=text)
    return QA(prompt, letter, _other(rng, LETTERS, letter), kind, {"options": options})


def ask_mc_color(scene: Scene, rng, canonical=False, options=None, shape=None, **_) -> QA | None:
    shapes = unique_shapes(scene)
    if not shapes:
        return None
    shape = shape if shape in shapes else _pick(rng, shapes)
    o = scene.with_shape(shape)[0]
    q = QUESTIONS["color_of_shape"][0].format(shape=shape)
    qa = _mc(rng, q, o.color, COLOR_NAMES, "mc_color", options)
    qa.extra.update(target=o.cell, shape=shape)
    return qa


def ask_mc_shape(scene: Scene, rng, canonical=False, options=None, cell=None, **_) -> QA | None:
    if not scene.objects:
        return None
    o = scene.at(cell) if cell is not None else None
    o = o or _pick(rng, scene.objects)
    q = QUESTIONS["shape_at_pos"][0].format(pos=o.pos)
    qa = _mc(rng, q, o.shape, SHAPES, "mc_shape", options)
    qa.extra.update(target=o.cell, cell=o.cell)
    return qa


def ask_rec(scene: Scene, rng, canonical=False, boxes=None, **_) -> QA | None:
    if not scene.objects:
        return None
    i = int(rng.integers(0, len(scene.objects)))
    o = scene.objects[i]
    right = boxes[i]
    # wrong: the box of another object, or the same box moved by one cell
    if len(scene.objects) > 1:
        wrong = boxes[_other(rng, list(range(len(scene.objects))), i)]
    else:
        shift = 1 / 3 if right[0] < 0.5 else -1 / 3
        wrong = [round(right[0] + shift, 2), right[1], round(right[2] + shift, 2), right[3]]
    prompt = REC_PROMPT.format(expr=f"the {o.color} {o.shape}")
    return QA(prompt, format_box(right), format_box(wrong), "rec", {"box": right, "target": o.cell})


def ask_reg(scene: Scene, rng, canonical=False, boxes=None, **_) -> QA | None:
    if not scene.objects:
        return None
    i = int(rng.integers(0, len(scene.objects)))
    o = scene.objects[i]
    prompt = REG_PROMPT.format(box=format_box(boxes[i]))
    taken = {(p.color, p.shape) for p in scene.objects}
    wc = _pick(rng, [c for c in COLOR_NAMES if (c, o.shape) not in taken])
    return QA(prompt, f"a {o.phrase()}", f"a {o.size} {wc} {o.shape}", "reg", {"box": boxes[i], "target": o.cell})


ASK = {
    "caption": ask_caption,
    "color_of_shape": ask_color_of_shape,
    "color_at_pos": ask_color_at_pos,
    "count_all": ask_count_all,
    "count_shape": ask_count_shape,
    "count_color": ask_count_color,
    "shape_at_pos": ask_shape_at_pos,
    "pos_of": ask_pos_of,
    "exist": ask_exist,
    "ocr": ask_ocr,
    "mc_color": ask_mc_color,
    "mc_shape": ask_mc_shape,
    "rec": ask_rec,
    "reg": ask_reg,
}


# --- text-only chat (off-target) ------------------------------------------------------------------------------


def text_turn(rng: np.random.Generator) -> tuple[str, str, str]:
    """One off-target text-only exchange: ``(kind, question, answer)``."""
    kind, q, a, _ = text_turn_with_short(rng)
    return kind, q, a


def text_turn_with_short(rng: np.random.Generator) -> tuple[str, str, str, str | None]:
    """:func:`text_turn` (the same draws) with the exchange's answer as a single word or phrase, or ``None`` where
    the answer is not a fact (spelling, greetings): ``(kind, question, answer, short)``."""
    k = int(rng.integers(0, 5))
    if k == 0:
        a, b = int(rng.integers(0, 5)), int(rng.integers(0, 5))
        return "add", f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", str(a + b)
    if k == 1:
        (c1, c2), mixed = _pick(rng, list(MIX.items()))
        return ("mix", f"What color do you get when you mix {c1} and {c2}?", f"Mixing {c1} and {c2} gives {mixed}.",
                mixed)
    if k == 2:
        shape = _pick(rng, SHAPES)
        return "sides", f"How many sides does a {shape} have?", f"A {shape} has {SIDES[shape]} sides.", SIDES[shape]
    if k == 3:
        w = _pick(rng, WORDS)
        return "spell", f"Spell the word {w}.", " ".join(w.upper()), None
    q, a = _pick(rng, GREETINGS)
    return "greet", q, a, None


def number_strings() -> list[str]:
    """Every box coordinate as written (``0.00`` … ``1.00``) and every digit 0-9."""
    return [f"{i / 100:.2f}" for i in range(101)] + [str(i) for i in range(10)]
