"""Shared test fixtures. Tests run on CPU with tiny models and synthetic data; nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "tests" / "data" / "vectors"


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The official-behaviour test vectors, copied from shared/vectors into the repository."""
    return VECTORS


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op torch thread for every test module: tiny matrices on a shared 2-core machine run 3-5x faster
    without threads spinning against each other (values do not depend on it)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
