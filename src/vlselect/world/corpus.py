"""The world's text corpus, for training the tiny tokenizer."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from vlselect.world.build import WorldConfig, eval_answers, plan_eval, plan_pool
from vlselect.world.scene import Obj, Scene
from vlselect.world.tasks import LETTERS, caption_text, number_strings, text_turn
from vlselect.world.vocab import (
    CAPTION_PROMPTS,
    COLOR_NAMES,
    GREETINGS,
    MIX,
    NUMBER_WORDS,
    OPTION_SUFFIX,
    PLURALS,
    POSITIONS,
    QUESTIONS,
    SHAPES,
    SHORT_SUFFIX,
    SIDES,
    SIZES,
    WORDS,
)


def corpus(seed: int = 0, n: int = 5000) -> list[str]:
    """Texts covering the world's whole vocabulary, for training a tokenizer.

    The list holds, in a fixed order: every vocabulary item and template on its own line (so no word is missed
    however small ``n`` is), then the human prompts and answers of ``n`` planned pool records (every task,
    correct and wrong answers), then the questions and answers of a small planned evaluation set. The image
    placeholder ``<image>`` is not included: it is a special token of the model, not a word of the world.

    Parameters
    ----------
    seed : int
        Seed of the planned records (the same planning as :func:`vlselect.world.make_world`; nothing rendered).
    n : int
        Number of pool records whose texts are included.

    Returns
    -------
    list of str
        Deterministic in ``(seed, n)``.

    Examples
    --------
    >>> from vlselect.world import corpus
    >>> texts = corpus(seed=0, n=500)
    >>> any("triangle" in t for t in texts)
    True
    """
    return list(_corpus(int(seed), int(n)))


@lru_cache(maxsize=8)
def _corpus(seed: int, n: int) -> tuple[str, ...]:
    """The texts of :func:`corpus`, cached (tiny-model builds ask for them often)."""
    texts: list[str] = []
    texts += [" ".join(SHAPES), " ".join(PLURALS[s] for s in SHAPES), " ".join(COLOR_NAMES), " ".join(SIZES)]
    texts += list(POSITIONS) + [" ".join(NUMBER_WORDS), " ".join(WORDS), " ".join(w.upper() for w in WORDS)]
    texts += [" ".join(LETTERS), " ".join(sorted({c.upper() for w in WORDS for c in w})),
              " ".join(number_strings()), " ".join(sorted(set(MIX.values()))), " ".join(sorted(set(SIDES.values())))]
    texts += list(CAPTION_PROMPTS) + [SHORT_SUFFIX, OPTION_SUFFIX]
    for templates in QUESTIONS.values():
        for t in templates:
            texts += [t.format(shape=SHAPES[i % 4], shapes=PLURALS[SHAPES[i % 4]], color=COLOR_NAMES[i % 5],
                               pos=POSITIONS[i]) for i in range(len(POSITIONS))]
    objs = tuple(Obj(SHAPES[i], COLOR_NAMES[i], SIZES[i % 2], cell) for i, cell in enumerate((0, 2, 4, 5)))
    texts += [caption_text(Scene(objs, WORDS[0])), caption_text(Scene((), WORDS[1]))]
    rng, kinds = np.random.default_rng(0), set()
    while len(kinds) < 5:  # one exchange of every text-only kind
        kind, q, a = text_turn(rng)
        if kind not in kinds:
            kinds.add(kind)
            texts += [q, a]
    for q, a in GREETINGS:
        texts += [q, a]
    cfg = WorldConfig(size=max(1, n), seed=seed, eval_size=20)
    records, _ = plan_pool(cfg)
    for r in records:
        for q, a in r.turns:
            texts += [q, a]
        if r.wrong is not None and r.correct:
            texts.append(r.wrong)
    sets, _ = plan_eval(cfg)
    for samples in sets.values():
        for s in samples:
            texts.append(s["qa"].prompt)
            texts += eval_answers(s["metric"], s["qa"])
    return tuple(texts)
