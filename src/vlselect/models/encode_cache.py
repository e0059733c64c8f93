"""A per-process cache of encoded samples, so that a sample is tokenised and its image decoded and processed once
per process, not once per stage, epoch and run (the bench featurises and trains many subsets of one world in few
processes).

An entry is reused only for the same processor and template (a digest of the processor's files and the resolved
template) and the same sample content (id, conversations, image paths with each file's size and modification
time) and ``max_length``; anything else is encoded again. The evaluation keeps its prompt batches here too
(:func:`vlselect.evaluate.run.generate_answers`: keyed by the processor, the prompts and the image files), through
:meth:`EncodeCache.lookup`. The cache is bounded in bytes (the tensors it holds), not
in samples: a LLaVA-1.5 sample at 336 px carries 1.4 MB of pixels, a tiny world sample 10 KB.
``$VLSELECT_ENCODE_CACHE_MB`` sets the bound of the process's cache (default 1024; ``0`` turns it off).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path

DEFAULT_MB = 1024


def _nbytes(enc: dict) -> int:
    return sum(int(v.numel()) * int(v.element_size()) for v in enc.values() if hasattr(v, "element_size"))


class EncodeCache:
    """Encoded samples (token ids, labels, masks, processed pixels) kept in this process, least recently used
    dropped first once the tensors held pass ``max_bytes`` (``0``: off, every call encodes)."""

    def __init__(self, max_bytes: int = DEFAULT_MB * 2**20) -> None:
        self.max_bytes = int(max_bytes)
        self._items: "OrderedDict[tuple, tuple[dict, int]]" = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @staticmethod
    def _model_key(loaded) -> str:
        key = loaded.extra.get("encode_cache_key")
        if key is None:
            from vlselect.artifact import digest
            from vlselect.models.encode import _wants_mm_token_type_ids, resolve_template

            files = {}
            d = Path(loaded.model_dir)
            for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json",
                         "preprocessor_config.json", "chat_template.jinja", "chat_template.json",
                         "special_tokens_map.json"):
                f = d / name
                if f.exists():
                    files[name] = hashlib.sha256(f.read_bytes()).hexdigest()
            mm = _wants_mm_token_type_ids(loaded) if loaded.model is not None else loaded.extra.get("mm_token_type_ids")
            key = digest({"files": files, "template": str(resolve_template(loaded)), "family": loaded.family,
                          "mm_token_type_ids": mm})
            loaded.extra["encode_cache_key"] = key
        return key

    @staticmethod
    def _sample_key(sample, image_root, max_length) -> tuple:
        paths = [Path(image_root) / rel if image_root is not None else Path(rel) for rel in sample.images]
        return (sample.id, json.dumps(sample.conversations, sort_keys=True), file_stats(paths), max_length)

    def encode(self, loaded, sample, image_root, *, max_length: int | None = None) -> dict:
        """:func:`vlselect.models.encode_sample` of ``sample``, from the cache when the inputs are identical (a
        fresh dict each call; the tensors are shared, callers must not modify them in place)."""
        from vlselect.models.encode import encode_sample

        if self.max_bytes <= 0:
            return encode_sample(loaded, sample, image_root, max_length=max_length)
        key = (self._model_key(loaded), self._sample_key(sample, image_root, max_length))
        return self.lookup(key, lambda: encode_sample(loaded, sample, image_root, max_length=max_length))

    def lookup(self, key: tuple, make) -> dict:
        """``make()`` (a dict of tensors) once per ``key`` while the entry stays in the cache; a fresh dict each
        call, the tensors shared (callers must not modify them in place). ``key`` must name every input of
        ``make``: the model's key (:meth:`model_key`), the text, and the image files with :func:`file_stats`."""
        if self.max_bytes <= 0:
            return dict(make())
        hit = self._items.get(key)
        if hit is not None:
            self.hits += 1
            self._items.move_to_end(key)
            return dict(hit[0])
        self.misses += 1
        enc = dict(make())
        size = _nbytes(enc)
        if size <= self.max_bytes:
            self._items[key] = (enc, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self.bytes -= dropped
        return dict(enc)

    model_key = _model_key


def file_stats(paths) -> tuple:
    """``(path, size, modification time)`` of each file (``-1`` for a missing one, which the encoder then reports):
    the part of a cache key that changes when an image file is replaced."""
    out = []
    for p in paths:
        try:
            st = Path(p).stat()
            out.append((str(p), st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((str(p), -1, -1))
    return tuple(out)


_CACHE: EncodeCache | None = None


def encode_cache() -> EncodeCache:
    """This process's :class:`EncodeCache` (bound from ``$VLSELECT_ENCODE_CACHE_MB``, default 1024 MB)."""
    global _CACHE
    if _CACHE is None:
        raw = os.environ.get("VLSELECT_ENCODE_CACHE_MB", str(DEFAULT_MB)).strip() or "0"
        try:
            mb = float(raw)
        except ValueError:
            from vlselect.errors import ConfigError

            raise ConfigError(f"$VLSELECT_ENCODE_CACHE_MB={raw!r} is not a number of megabytes; fix: set it to e.g. "
                              f"{DEFAULT_MB}, or 0 to turn the encode cache off") from None
        _CACHE = EncodeCache(int(mb * 2**20))
    return _CACHE
