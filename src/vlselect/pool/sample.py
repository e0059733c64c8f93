"""The :class:`Sample`: one record of an instruction pool, as every later stage sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    """One instruction-tuning record.

    Attributes
    ----------
    id:
        The record's id (unique within a pool).
    images:
        Image paths relative to the pool's image folder; empty for a text-only record.
    conversations:
        The turns, LLaVA style: ``[{"from": "human" | "gpt" | "system", "value": str}, ...]``; the aliases
        ``user``/``assistant`` are normalised to ``human``/``gpt`` here (the record keeps what the file says).
        ``<image>`` marks where the image goes in the first human turn.
    task:
        The task / source label, or ``None`` if unknown. :func:`vlselect.pool.open_pool` always sets it, by the
        rules of :mod:`vlselect.pool.tasks`: a ``--task-field``, a ``task`` or ``task_name`` field, the DataOptim
        file, or LLaVA-665K inference (``llava``, ``sharegpt`` for text-only, ``vqav2``, ``gqa``, ``ocrvqa``,
        ``aokvqa``, ``textcaps``, ``refcoco``, ``vg``).
    record:
        The original record, exactly as read (parsed, key order kept). Subsets are written from the file's bytes
        (:func:`vlselect.pool.write_llava_subset`), so no field is lost or changed.
    """

    id: str
    images: list[str]
    conversations: list[dict[str, str]]
    task: str | None = None
    record: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def has_image(self) -> bool:
        return bool(self.images)
