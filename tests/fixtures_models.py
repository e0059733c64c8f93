"""Shared fixtures for the model / feature tests: tiny models (built once per session) and a small pool with images.

Import the fixtures you need in a test module: ``from fixtures_models import tiny_llava, tiny_pool  # noqa: F401``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ANSWER_TEXTS = ["Red.", "There are three squares.", "Yes, it is.", "Hello there!", "Green and blue.", "Five."]


def make_samples(n: int = 6, text_only_every: int = 3):
    """``n`` samples: multi-turn image rows and text-only rows (every ``text_only_every``-th row)."""
    from vlselect.pool import Sample

    out = []
    for i in range(n):
        ans = ANSWER_TEXTS[i % len(ANSWER_TEXTS)]
        if i % text_only_every == text_only_every - 1:
            conv = [{"from": "human", "value": f"Tell me something short, number {i}."}, {"from": "gpt", "value": ans}]
            out.append(Sample(f"s{i}", [], conv, task="text"))
        else:
            conv = [{"from": "human", "value": f"<image>\nWhat do you see in picture {i}?"},
                    {"from": "gpt", "value": ans}]
            if i % 2 == 0:
                conv += [{"from": "human", "value": "Are you sure?"}, {"from": "gpt", "value": f"Yes, {ans.lower()}"}]
            out.append(Sample(f"s{i}", [f"img{i}.png"], conv, task="vqa"))
    return out


def write_pool(root: Path, n: int = 6, text_only_every: int = 3) -> tuple[Path, Path]:
    """Write images and a LLaVA JSON pool under ``root``; returns (pool_file, image_dir)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    images = root / "images"
    images.mkdir(exist_ok=True)
    samples = make_samples(n, text_only_every)
    records = []
    for i, s in enumerate(samples):
        rec = {"id": s.id, "conversations": s.conversations}
        if s.images:
            w, h = 24 + (i % 3) * 8, 32
            Image.new("RGB", (w, h), ((37 * i) % 256, (91 * i) % 256, (151 * i) % 256)).save(images / s.images[0])
            rec["image"] = s.images[0]
        records.append(rec)
    pool = root / "pool.json"
    pool.write_text(json.dumps(records))
    return pool, images


_BUILT: dict[str, Path] = {}


def _tiny(tmp_path_factory, family: str) -> Path:
    """Build each tiny model once per test session, even when several modules import these fixtures."""
    from vlselect.models.tiny import build_tiny

    if family not in _BUILT:
        _BUILT[family] = build_tiny(tmp_path_factory.mktemp(f"tiny-{family}"), family=family, seed=0)
    return _BUILT[family]


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    """A tiny LLaVA (CLIP 2 layers + Llama 4 layers, hidden 32, 16 image tokens) saved with save_pretrained."""
    return _tiny(tmp_path_factory, "llava")


@pytest.fixture(scope="session")
def tiny_qwen2vl(tmp_path_factory) -> Path:
    """A tiny Qwen2-VL (vision 2 blocks, Qwen2 4 layers, hidden 32, 4 image tokens per 32x32 image)."""
    return _tiny(tmp_path_factory, "qwen2-vl")


@pytest.fixture(scope="session")
def tiny_pool(tmp_path_factory) -> tuple[Path, Path]:
    """(pool JSON, image folder) with 6 rows: 4 with an image (2 multi-turn), 2 text-only."""
    return write_pool(tmp_path_factory.mktemp("pool"), n=6)
