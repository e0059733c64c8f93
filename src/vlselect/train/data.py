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
from vlselect.models.encode_cache import EncodeCache, encode_cache  # noqa: F401 (re-exported)
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


#: The last pool read from a path in this process, reused while its files are unchanged (size and modification
#: time, :meth:`vlselect.pool.core.Pool.check_unchanged`): the bench trains some 70 subsets of one 20,000-record
#: pool per world in two worker processes, and reading it took 1.4 s a run.
_OPENED: dict[str, Any] = {}


def open_training_pool(pool: Any):
    """A pool path (LLaVA JSON / JSONL / anything ``vlselect.pool.open_pool`` reads), a ``Pool`` or a list of
    :class:`Sample` → an indexable sequence of samples. A path read last time in this process, with its files
    unchanged since, gives the same ``Pool`` again."""
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
        key = str(path.resolve())
        last = _OPENED.get(key)
        if last is not None:
            try:
                last.check_unchanged()
            except PoolError:  # rewritten since: read again
                last = None
            else:
                return last
        opened = open_pool(path)
        _OPENED.clear()
        _OPENED[key] = opened
        return opened
    if not hasattr(pool, "__getitem__") or not hasattr(pool, "__len__"):
        raise PoolError(f"cannot train on a {type(pool).__name__}; pass a pool path, a Pool or a list of Sample")
    return pool


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch (deterministic in ``seed`` and ``epoch``)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def global_schedule(n: int, *, epochs: int, batch_size: int, grad_accum: int, world_size: int, seed: int,
                    max_steps: int | None = None, lengths: Sequence[int] | None = None,
                    length_group: int = 0) -> list[list[int]]:
    """Positions (into the training indices) of every optimiser step: a list of ``batch_size × grad_accum ×
    world_size`` positions per step. The last partial step of an epoch is kept (smaller).

    With ``length_group = m > 0`` (and ``lengths``, the token count of each position), the epoch's shuffled order
    is cut into groups of ``m`` steps; each group is sorted by length (longest first, ties in shuffled order), cut
    into its ``m`` steps, and those steps are shuffled (seeded by ``seed`` and the epoch). Every step then holds
    samples of similar length, so less of each batch is padding (Hugging Face's ``group_by_length`` with a
    mega-batch of ``m`` steps instead of 50); each epoch still visits every position once, and a step draws its
    samples from ``m`` steps' worth of the shuffled order rather than one.
    """
    per_step = batch_size * grad_accum * world_size
    if length_group and (lengths is None or len(lengths) != n):
        raise ValueError(f"length_group={length_group} needs one length per position ({n}), got "
                         f"{None if lengths is None else len(lengths)}")
    lens = None if not length_group else np.asarray(lengths)
    steps: list[list[int]] = []
    for epoch in range(epochs):
        order = epoch_order(n, seed, epoch)
        if lens is None:
            epoch_steps = [order[start : start + per_step].tolist() for start in range(0, n, per_step)]
        else:
            rng = np.random.default_rng([int(seed), int(epoch), 1])
            group = per_step * int(length_group)
            epoch_steps = []
            for g0 in range(0, n, group):
                part = order[g0 : g0 + group]
                part = part[np.argsort(-lens[part], kind="stable")]
                cut = [part[i : i + per_step].tolist() for i in range(0, len(part), per_step)]
                epoch_steps += [cut[int(k)] for k in rng.permutation(len(cut))]
        for st in epoch_steps:
            steps.append(st)
            if max_steps is not None and len(steps) >= max_steps:
                return steps
    return steps


def micro_batches(step_positions: Sequence[int], *, batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """This rank's micro-batches of one optimiser step (rank r takes every world_size-th micro-batch)."""
    chunks = [list(step_positions[i : i + batch_size]) for i in range(0, len(step_positions), batch_size)]
    return [c for k, c in enumerate(chunks) if k % world_size == rank]


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
