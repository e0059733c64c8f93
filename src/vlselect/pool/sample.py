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
        The turns, LLaVA style: ``[{"from": "human" | "gpt", "value": str}, ...]``. ``<image>`` marks where the
        image goes in the first human turn.
    task:
        The task / source label (e.g. ``"coco"``, ``"gqa"``, ``"ocr_vqa"``, ``"text"``), or ``None`` if unknown.
    record:
        The original record, exactly as read (parsed, key order kept), so that a subset can be written back
        without losing or changing a field.
    """

    id: str
    images: list[str]
    conversations: list[dict[str, str]]
    task: str | None = None
    record: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def has_image(self) -> bool:
        return bool(self.images)
