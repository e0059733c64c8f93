"""Training dynamics: the area under the margin (AUM) of every training row, recorded during a training run.

AUM (Pleiss et al., 2020) as D2-Pruning's importance score (coincide.md §7.3 names it; the COINCIDE scripts use a
one-checkpoint probability margin instead, which ``vlselect features activations --embeddings`` writes as
``margin``). Definitions, per row i:

- at a supervised answer token t (``labels[t+1] != -100``, the causal shift) with target y and logits z:
  ``M_t = z_y - max_{k != y} z_k`` (logits, full vocabulary);
- each time the row is in a training micro-batch (optimiser step s), its margin ``m_i(s)`` is the mean of
  ``M_t`` over its answer tokens, from the logits of that training forward pass (train mode, as AUM records it);
- ``aum_i`` = the mean of ``m_i(s)`` over the steps in which the row was seen (one per epoch when it is seen once
  an epoch); ``aum_count_i`` = how many. Higher = easier.

A row never trained on (outside ``--indices``) or without answer tokens is recorded missing (``aum`` NaN).

Files, under the training ``--out``::

    aum-steps/step-<s>-rank<r>.npz   rows and margins of optimiser step s on rank r, written before the step's
                                     update (atomic), so a resumed run rewrites exactly the steps it redoes
    aum/                             a FeatureStore with ``aum`` (float32) and ``aum_count`` (int32), written
                                     when training finishes

Deterministic from the training seed (data order, dropout), like the training run itself.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import numpy as np

from vlselect.errors import FeatureError

__all__ = ["MarginRecorder", "aggregate_aum", "train_with_dynamics"]

STEPS_DIR = "aum-steps"
STORE_DIR = "aum"
_STEP_FILE = re.compile(r"^step-(\d+)-rank(\d+)\.npz$")


class MarginRecorder:
    """The ``on_batch`` callback of :func:`vlselect.train.train_lora` that records per-row logit margins.

    Called as ``recorder(step, rows, logits, labels, last)`` after each micro-batch's forward pass; ``step`` is
    the 1-based optimiser step, ``rows`` the pool positions of the micro-batch, ``last`` True for this rank's last
    micro-batch of the step (the step's file is then written).
    """

    def __init__(self, folder, rank: int = 0):
        self.folder = Path(folder)
        self.rank = int(rank)
        self._rows: list[int] = []
        self._margins: list[np.ndarray] = []

    def __call__(self, step: int, rows, logits, labels, last: bool) -> None:
        import torch

        from vlselect.features.embeddings import margins_per_sample

        with torch.no_grad():
            m = margins_per_sample(logits.detach(), labels, probabilities=False)
        self._rows.extend(int(r) for r in rows)
        self._margins.append(m.numpy().astype(np.float64))
        if last:
            self._flush(step)

    def _flush(self, step: int) -> None:
        from vlselect.features.store import _atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, rows=np.asarray(self._rows, dtype=np.int64), margins=np.concatenate(self._margins))
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(self.folder / f"step-{int(step):07d}-rank{self.rank}.npz", buf.getvalue())
        self._rows, self._margins = [], []


def aggregate_aum(steps_folder, n_rows: int, total_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(aum, count)`` per row from the step files of a finished run (see the module docstring).

    Raises
    ------
    FeatureError
        A step in ``1..total_steps`` has no file of rank 0 (the run was not recorded from its start), or a file
        names a row outside the pool.
    """
    folder = Path(steps_folder)
    files: dict[int, list[Path]] = {}
    for f in sorted(folder.glob("step-*.npz")) if folder.is_dir() else []:
        m = _STEP_FILE.match(f.name)
        if m:
            files.setdefault(int(m.group(1)), []).append(f)
    lacking = [s for s in range(1, total_steps + 1) if not any(f.name.endswith("-rank0.npz") for f in files.get(s, []))]
    if lacking:
        raise FeatureError(
            f"{folder}: training dynamics of {len(lacking)} of {total_steps} steps were not recorded (first: step "
            f"{lacking[0]}); the run in this folder was (partly) trained without --record-dynamics. Fix: train again "
            "with --record-dynamics --no-resume, or into a new --out")
    sums = np.zeros(n_rows, dtype=np.float64)
    counts = np.zeros(n_rows, dtype=np.int64)
    for s in range(1, total_steps + 1):
        for f in files[s]:
            with np.load(f) as z:
                rows, margins = z["rows"], z["margins"]
            if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
                raise FeatureError(f"{f}: row {int(rows.max())} is outside the pool of {n_rows} rows; this folder "
                                   "was trained on another pool: train again with --no-resume or a new --out")
            ok = np.isfinite(margins)
            np.add.at(sums, rows[ok], margins[ok])
            np.add.at(counts, rows[ok], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        aum = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return aum, counts


def _pool_identity(pool) -> tuple[list[str], str | None, str | None]:
    from vlselect.train.data import open_training_pool

    p = open_training_pool(pool)
    ids = list(p.ids) if hasattr(p, "ids") else [str(getattr(s, "id", i)) for i, s in enumerate(p)]
    src = pool if isinstance(pool, (str, os.PathLike)) else getattr(p, "path", None)
    path = str(Path(src).resolve()) if src else None
    return ids, getattr(p, "fingerprint", None) or None, path


def train_with_dynamics(model_dir, pool, image_root, out_dir, **train_kwargs):
    """:func:`vlselect.train.train_lora` that also records every training row's AUM into ``out_dir/aum``.

    Parameters
    ----------
    model_dir, pool, image_root, out_dir, **train_kwargs
        As :func:`~vlselect.train.train_lora` (``resume=False`` also clears the recorded steps).

    Returns
    -------
    (TrainResult, Path or None)
        The training result and the finished AUM store (``None`` when the run stopped early:
        ``stop_after_steps``; run again to continue).

    Examples
    --------
    >>> res, aum = train_with_dynamics("tiny", "pool.json", "images", "runs/dyn", epochs=2)  # doctest: +SKIP
    >>> FeatureStore.open(aum).array("aum")  # doctest: +SKIP
    """
    from vlselect.features.store import FeatureStore
    from vlselect.train import train_lora

    out = Path(out_dir)
    steps, store_dir = out / STEPS_DIR, out / STORE_DIR
    from vlselect.executor import current

    rank = current().rank
    if not train_kwargs.get("resume", True) and rank == 0:
        shutil.rmtree(steps, ignore_errors=True)
        shutil.rmtree(store_dir, ignore_errors=True)
    res = train_lora(model_dir, pool, image_root, out_dir, on_batch=MarginRecorder(steps, rank), **train_kwargs)
    if res.steps < res.total_steps:
        return res, None
    if rank != 0:
        return res, store_dir
    if (store_dir / "manifest.json").exists():
        return res, store_dir
    ids, fingerprint, pool_path = _pool_identity(pool)
    aum, counts = aggregate_aum(steps, len(ids), res.total_steps)
    meta = {
        "kind": "training-dynamics",
        "score": "aum: mean over the training steps that saw the row of its mean answer-token logit margin "
                 "z_y - max_{k!=y} z_k (Pleiss et al. 2020); aum_count: those steps",
        "model": str(Path(model_dir).resolve()),
        "pool": pool_path,
        "pool_fingerprint": fingerprint,
        "train": {k: v for k, v in train_kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))},
        "total_steps": res.total_steps,
    }
    n = len(ids)
    st = FeatureStore.create(store_dir, arrays={"aum": (None, "float32"), "aum_count": (None, "int32")}, n_rows=n,
                             shard_size=max(1, n), meta=meta, sample_ids=ids)
    st.write_shard(0, {"aum": aum.astype(np.float32), "aum_count": counts.astype(np.int32)},
                   missing=np.flatnonzero(counts == 0).tolist())
    st.finalise()
    return res, store_dir
