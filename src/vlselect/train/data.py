"""Training data: opening a pool or subset, the deterministic sample order, and batches.

The order of an epoch is ``numpy.random.default_rng([seed, epoch]).permutation(n)``, so a run can resume at any
optimiser step: the position in the data is ``step × batch_size × grad_accum × world_size`` (DESIGN.md,
"Determinism").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlselect.errors import PoolError
from vlselect.pool.sample import Sample


def _fallback_read(path: Path) -> list[Sample]:
    """Minimal LLaVA JSON/JSONL reader, used only while ``vlselect.pool.open_pool`` is unavailable."""
    import orjson

    raw = path.read_bytes()
    try:
        records = orjson.loads(raw) if raw.lstrip()[:1] == b"[" else [orjson.loads(x) for x in raw.splitlines() if x.strip()]
    except orjson.JSONDecodeError as exc:
        raise PoolError(f"{path}: not valid LLaVA JSON/JSONL ({exc}); fix the file or re-export the subset") from None
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list):
            raise PoolError(f"{path}: record {i} has no 'conversations' list; fix the record or drop it")
        img = rec.get("image")
        images = [] if img is None else ([img] if isinstance(img, str) else list(img))
        out.append(Sample(id=str(rec.get("id", i)), images=images, conversations=rec["conversations"], record=rec))
    return out


def open_training_pool(pool: Any):
    """A pool path (LLaVA JSON / JSONL / anything ``vlselect.pool.open_pool`` reads), a ``Pool`` or a list of
    :class:`Sample` → an indexable sequence of samples."""
    if isinstance(pool, (str, Path)):
        path = Path(pool)
        if not path.exists():
            raise PoolError(f"pool file '{path}' does not exist; pass a LLaVA JSON pool or subset to --pool")
        try:
            from vlselect.pool import open_pool  # type: ignore[attr-defined]
        except ImportError:
            try:
                from vlselect.pool.core import open_pool  # type: ignore[no-redef]
            except ImportError:
                return _fallback_read(path)
        return open_pool(path)
    if not hasattr(pool, "__getitem__") or not hasattr(pool, "__len__"):
        raise PoolError(f"cannot train on a {type(pool).__name__}; pass a pool path, a Pool or a list of Sample")
    return pool


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch (deterministic in ``seed`` and ``epoch``)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def global_schedule(n: int, *, epochs: int, batch_size: int, grad_accum: int, world_size: int, seed: int,
                    max_steps: int | None = None) -> list[list[int]]:
    """Positions (into the training indices) of every optimiser step: a list of ``batch_size × grad_accum ×
    world_size`` positions per step. The last partial step of an epoch is kept (smaller)."""
    per_step = batch_size * grad_accum * world_size
    steps: list[list[int]] = []
    for epoch in range(epochs):
        order = epoch_order(n, seed, epoch).tolist()
        for start in range(0, n, per_step):
            steps.append(order[start : start + per_step])
            if max_steps is not None and len(steps) >= max_steps:
                return steps
    return steps


def micro_batches(step_positions: Sequence[int], *, batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """This rank's micro-batches of one optimiser step (rank r takes every world_size-th micro-batch)."""
    chunks = [list(step_positions[i : i + batch_size]) for i in range(0, len(step_positions), batch_size)]
    return [c for k, c in enumerate(chunks) if k % world_size == rank]


class EncodeCache:
    """Encoded samples (token ids, labels, masks, processed pixels), kept in this process so that a sample is
    tokenised and its image decoded and processed once per process, not once per epoch and run (the bench's
    worker processes train many subsets of one world).

    An entry is reused only for the same processor and template (a digest of the processor's files and the
    resolved template) and the same sample content (id, conversations, image paths under ``image_root`` with each
    file's size and modification time); anything else is encoded again. ``max_items`` bounds the memory (about
    10 KB per sample for the tiny world models); ``$VLSELECT_ENCODE_CACHE`` sets it for the default cache, ``0``
    turns it off.
    """

    def __init__(self, max_items: int = 200_000) -> None:
        from collections import OrderedDict

        self.max_items = int(max_items)
        self._items: "OrderedDict[tuple, dict]" = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _model_key(loaded) -> str:
        key = loaded.extra.get("encode_cache_key")
        if key is None:
            from vlselect.artifact import digest
            from vlselect.models import resolve_template

            files = {}
            d = Path(loaded.model_dir)
            for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json",
                         "preprocessor_config.json", "chat_template.jinja", "chat_template.json",
                         "special_tokens_map.json"):
                f = d / name
                if f.exists():
                    import hashlib

                    files[name] = hashlib.sha256(f.read_bytes()).hexdigest()
            key = digest({"files": files, "template": str(resolve_template(loaded)), "family": loaded.family})
            loaded.extra["encode_cache_key"] = key
        return key

    @staticmethod
    def _sample_key(sample: Sample, image_root, max_length) -> tuple:
        import json

        stats = []
        for rel in sample.images:
            p = Path(image_root) / rel if image_root is not None else Path(rel)
            try:
                st = p.stat()
                stats.append((str(p), st.st_size, st.st_mtime_ns))
            except OSError:
                stats.append((str(p), -1, -1))  # encode_sample reports the missing file
        return (sample.id, json.dumps(sample.conversations, sort_keys=True), tuple(stats), max_length)

    def encode(self, loaded, sample: Sample, image_root, *, max_length: int | None = None) -> dict:
        from vlselect.models import encode_sample

        if self.max_items <= 0:
            return encode_sample(loaded, sample, image_root, max_length=max_length)
        key = (self._model_key(loaded), self._sample_key(sample, image_root, max_length))
        hit = self._items.get(key)
        if hit is not None:
            self.hits += 1
            self._items.move_to_end(key)
            return dict(hit)
        self.misses += 1
        enc = encode_sample(loaded, sample, image_root, max_length=max_length)
        self._items[key] = enc
        if len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return dict(enc)


_CACHE: EncodeCache | None = None


def encode_cache() -> EncodeCache:
    """This process's :class:`EncodeCache` (size from ``$VLSELECT_ENCODE_CACHE``, default 200,000 samples)."""
    global _CACHE
    if _CACHE is None:
        import os

        _CACHE = EncodeCache(int(os.environ.get("VLSELECT_ENCODE_CACHE", "200000") or 0))
    return _CACHE


def encode_batch(loaded, samples: Sequence[Sample], image_root, *, max_length: int | None = None) -> dict:
    """Encode and collate samples for the forward pass (answer-only labels from ``vlselect.models``); encodings
    come from this process's :func:`encode_cache`."""
    from vlselect.models import collate

    cache = encode_cache()
    enc = [cache.encode(loaded, s, image_root, max_length=max_length) for s in samples]
    batch = collate(enc, loaded.pad_token_id)
    batch.pop("image_mask", None)
    batch.pop("text_mask", None)
    return {k: v.to(loaded.device) if hasattr(v, "to") else v for k, v in batch.items()}
