"""The synthetic VIT world: pictures of coloured shapes on a 3x3 grid (some with a word), a LLaVA-format training
pool with the structure that makes data selection matter, held-out evaluation sets, and the world card.

Public API: :func:`make_world` (writes a world), :func:`make_pretrain_pool` (a separate caption pool for
pre-training the base model), :class:`WorldInfo`, :class:`WorldConfig`, :func:`corpus`
(texts for the tokenizer), :data:`TASKS`, :data:`EVAL_SETS`, :data:`SUPPORT` (the support tasks).
"""

from __future__ import annotations

from vlselect.world.build import EVAL_SETS, SUPPORT, TASKS, WorldConfig
from vlselect.world.corpus import corpus

__all__ = ["EVAL_SETS", "SUPPORT", "TASKS", "WorldConfig", "WorldInfo", "corpus", "make_pretrain_pool", "make_world"]


def __getattr__(name: str):
    if name in ("make_world", "make_pretrain_pool", "WorldInfo"):
        from vlselect.world import make

        return getattr(make, name)
    raise AttributeError(name)
