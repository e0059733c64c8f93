"""ICONS: specialist influence per target task, then a generalist vote (specs/icons.md §4, §5, §10).

* **Specialist** (spec §4): every training row is L2-normalised; a regular task's score is the mean inner
  product with the task's (normalised) validation rows; a task given as sub-tasks (``val/<task>/<sub>``, how
  the official code treats MME) scores the max over sub-tasks of the mean inner product with *raw* validation
  rows. Computed in row blocks from a memmap (665K × 5120 float16 needs one block at a time).
* **Generalist** (spec §5): each task votes for the rows at or above its percentile; the rows with most votes
  are kept.

The row-block helper :func:`iter_row_blocks` is shared with TIVE.
"""

from __future__ import annotations

import contextlib
import mmap
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from vlselect.errors import SelectionError
from vlselect.select.base import Budget, Param, Role, Selection, register_method

# ------------------------------------------------------------------------------------------- row blocks

_BLOCK_BYTES = 96 * 2**20  # float32 bytes per row block: big enough for BLAS, small next to the 8 GB budget
_CHUNK_BYTES = 5 * 2**20  # converted bytes per chunk of a streaming pass: stays in cache from conversion to use
_IO_BYTES = 32 * 2**20  # stored bytes per read-ahead / release group of a memmap


def block_rows_for(d: int, itemsize: int = 4, target_bytes: int = _BLOCK_BYTES) -> int:
    """Rows per block so that one ``(rows, d)`` block of ``itemsize``-byte floats is about ``target_bytes``."""
    return int(max(256, target_bytes // max(1, d * itemsize)))


def chunk_rows_for(d: int, itemsize: int = 4) -> int:
    """Rows per chunk of a streaming pass (:func:`iter_row_blocks` into a reused buffer): about ``_CHUNK_BYTES``
    of converted values, so a chunk is still in the CPU cache (L2/L3) when it is multiplied right after its
    conversion. Measured at 5,120 columns on this project's 2-core box: 256-row chunks convert at the speed of a
    plain NumPy read, where 96 MB blocks (fresh memory each) took 9x as long (benchmarks/RESULTS.md)."""
    return int(max(64, _CHUNK_BYTES // max(1, d * itemsize)))


def pad_columns(m: np.ndarray) -> np.ndarray:
    """``m`` (k, d) with zero rows appended up to a multiple of 16 when k > 8: a (rows × d) @ (d × k) product
    with k = 9-15 takes MKL's slow skinny path (10 columns: 1.7x the time of 16 on this AVX2 CPU); the extra
    zero columns are discarded, so only the last float32 bit of the real ones may move."""
    k = int(m.shape[0])
    if k <= 8 or k % 16 == 0:
        return m
    out = np.zeros((-(-k // 16) * 16,) + tuple(m.shape[1:]), dtype=m.dtype)
    out[:k] = m
    return out


class torch_threads:
    """``with torch_threads(n):`` runs torch on ``n`` intra-op threads, restoring the previous count after.

    The streaming passes of TIVE and ICONS run many small (cache-sized) products: on one thread they are
    fastest, and with a second thread that another process keeps busy, every product waits at an OpenMP
    barrier (measured 10-60x slower under load)."""

    def __init__(self, n: int):
        self.n = int(n)
        self.prev: int | None = None

    def __enter__(self) -> "torch_threads":
        import torch

        self.prev = torch.get_num_threads()
        if self.prev != self.n:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.prev is not None and torch.get_num_threads() != self.prev:
            torch.set_num_threads(self.prev)


def _release(arr: np.ndarray, a: int, b: int) -> None:
    """Drop the pages of rows ``[a, b)`` of a memmap from this process (they stay in the page cache).

    Without this a pass over a 6.8 GB memmap leaves every page mapped and counted in the resident set.
    """
    _advise(arr, a, b, "MADV_DONTNEED")


def _advise(arr: np.ndarray, a: int, b: int, advice: str) -> None:
    """``madvise(advice)`` on the pages of rows ``[a, b)`` of a memmap; a no-op for other arrays or platforms."""
    mm = getattr(arr, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, advice) or b <= a:
        return
    try:
        view = np.frombuffer(mm, dtype=np.uint8)
        base = view.ctypes.data
        del view
        row_bytes = int(arr.strides[0])
        start = arr.ctypes.data - base + a * row_bytes
        stop = arr.ctypes.data - base + b * row_bytes
        start = (start // mmap.PAGESIZE) * mmap.PAGESIZE
        if stop > start:
            mm.madvise(getattr(mmap, advice), start, min(stop - start, len(mm) - start))
    except (ValueError, OSError, BufferError):  # best effort: never fail a selection over page hygiene
        pass


_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _convert_into(out: np.ndarray, view: np.ndarray) -> None:
    """``out[...] = view`` with a dtype cast; float -> float casts go through torch's vectorised ``copy_``
    (NumPy's float16 conversion is scalar: about 1 GB/s here, torch's 5-12 GB/s; both exact for widening)."""
    if view.dtype in _FLOATS and out.dtype in _FLOATS and all(st >= 0 for st in view.strides):
        import warnings

        import torch

        with warnings.catch_warnings():  # read-only memmap blocks: torch only reads them
            warnings.simplefilter("ignore", UserWarning)
            torch.from_numpy(out).copy_(torch.from_numpy(np.asarray(view)))
    else:
        np.copyto(out, view, casting="unsafe")


def tensor_view(a: np.ndarray):
    """``torch.from_numpy(a)`` without torch's warning about read-only arrays (a memmap opened read-only): the
    selection code only reads such blocks, never writes them."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        return torch.from_numpy(a)


def _willneed(arr: np.ndarray, a: int, b: int) -> None:
    """Ask the kernel to read rows ``[a, b)`` of a memmap ahead (``MADV_WILLNEED``): the disk works on the next
    block while the current one is computed. Best effort, like :func:`_release`."""
    _advise(arr, a, b, "MADV_WILLNEED")


def iter_row_blocks(
    arr: np.ndarray,
    block_rows: int,
    dtype: np.dtype | type = np.float32,
    *,
    desc: str | None = None,
    reverse: bool = False,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(start, stop, block)`` over the rows of ``arr`` with ``block`` of ``dtype``: a read-only view
    when ``arr`` already has that dtype and is C-contiguous, otherwise the rows converted into one buffer that
    is **reused for every block** (a block is valid until the next one is asked for; copy it to keep it).

    Reusing the buffer matters: a fresh 96 MB block costs a page fault per 4 KB written, which made the
    float16 -> float32 conversion 9x a plain read; into a reused cache-sized buffer (:func:`chunk_rows_for`)
    it runs at the speed of the read.

    Works on in-memory arrays and on ``numpy.memmap``: rows are read ahead (by the kernel forward, by
    ``MADV_WILLNEED`` of the next group backward) and their pages released after use in groups of about
    ``_IO_BYTES`` stored bytes, so peak memory is one group plus one block, never the whole matrix, and the
    disk reads ahead while the current rows are computed. Each
    row is read exactly once per call. ``reverse`` walks the blocks last to first (a second pass then starts
    with the rows the page cache most likely still holds). Progress (:mod:`vlselect.progress`) is shown when
    there are many blocks and ``desc`` is given.
    """
    n = int(arr.shape[0])
    step = max(1, int(block_rows))
    dtype = np.dtype(dtype)
    row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize)
    group = max(1, _IO_BYTES // row_bytes // step) * step  # rows per read-ahead / release group
    groups = list(range(0, n, group))
    if reverse:
        groups.reverse()
    progress = None
    if desc is not None and n >= 16 * step:
        from vlselect.progress import progress_bar

        progress = progress_bar(desc, unit="rows", transient=True).__enter__()
        task = progress.add_task("", total=n)
    buf: np.ndarray | None = None
    try:
        # read-ahead, measured cold in fresh processes (100,000 x 5,120 float16, ICONS's per-chunk work): forward,
        # the kernel's own fault read-ahead alone ran as fast as a plain NumPy read (0.9-1.2 s vs 0.7-1.2 s);
        # MADV_WILLNEED of the next group made it slower (1.1-1.4 s: the compute thread waits while the reads are
        # queued), MADV_SEQUENTIAL slower still (1.8-2.2 s). Backward the kernel reads nothing ahead, and asking
        # for the next group helps (1.5-1.9 s against 2.1-2.5 s without).
        if reverse and groups:
            _willneed(arr, groups[0], min(n, groups[0] + group))
        for gi, ga in enumerate(groups):
            gb = min(n, ga + group)
            if reverse and gi + 1 < len(groups):
                _willneed(arr, groups[gi + 1], min(n, groups[gi + 1] + group))
            starts = list(range(ga, gb, step))
            if reverse:
                starts.reverse()
            for a in starts:
                b = min(gb, a + step)
                view = arr[a:b]
                if view.dtype == dtype and view.flags.c_contiguous:
                    yield a, b, np.asarray(view)
                else:
                    if buf is None:
                        buf = np.empty((min(step, n),) + tuple(arr.shape[1:]), dtype=dtype)
                    block = buf[: b - a]
                    _convert_into(block, view)
                    yield a, b, block
                del view
            _release(arr, ga, gb)
            if progress is not None:
                progress.update(task, advance=gb - ga)
    finally:
        if progress is not None:
            progress.stop()


def fused_half(train: np.ndarray, precision: np.dtype | type = np.float32) -> bool:
    """Whether a streaming pass over ``train`` in ``precision`` arithmetic runs the fused float16 kernels
    (:mod:`vlselect.select.kernels`): float16 rows and float32 arithmetic, unless ``$VLSELECT_FUSED=0``
    (then the torch convert-and-multiply path; both give the same values to float32 rounding)."""
    import os

    raw = os.environ.get("VLSELECT_FUSED", "1").strip()
    if raw not in ("0", "1"):
        raise SelectionError(f"$VLSELECT_FUSED={raw!r}; set it to 1 (fused float16 kernels, the default) or 0")
    return (raw == "1" and np.dtype(train.dtype) == np.float16 and np.dtype(precision) == np.float32
            and train.ndim == 2)


#: parts a streaming pass splits its rows into, whatever the number of workers: results that are summed over rows
#: (TIVE's task sums) add the parts' sums in this fixed order, so they do not depend on how many workers ran
ROW_PARTS = 4


def row_workers(workers: int | None = None) -> int:
    """Threads a streaming pass uses: ``workers`` if given, else ``$VLSELECT_ROW_WORKERS``, else the CPUs this
    process may run on, at most :data:`ROW_PARTS`. Measured at 100,000 x 5,120 float16 on this project's 2-core
    box (benchmarks/RESULTS.md): ICONS's pass took 1.4-1.5x a one-thread NumPy read with two workers against
    1.7-2.5x with one, on an idle machine; with the other core busy a second worker does not help (set 1)."""
    import os

    if workers is None:
        raw = os.environ.get("VLSELECT_ROW_WORKERS", "").strip()
        if raw:
            try:
                workers = int(raw)
            except ValueError:
                raise SelectionError(f"$VLSELECT_ROW_WORKERS={raw!r} is not a whole number; fix: set it to 1 or 2"
                                     ) from None
        else:
            workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers < 1:
        raise SelectionError(f"row workers {workers} must be at least 1")
    return int(min(workers, ROW_PARTS))


def row_parts(n: int, block_rows: int, parts: int = ROW_PARTS) -> list[tuple[int, int]]:
    """``[lo, hi)`` of the fixed row parts of a streaming pass over ``n`` rows in blocks of ``block_rows``: whole
    blocks (so every block is the block a single pass would read, and a row's value cannot depend on the split),
    at most ``parts`` of them, and one part when there are fewer than 16 blocks per part."""
    step = max(1, int(block_rows))
    blocks = -(-n // step)
    k = max(1, min(parts, blocks // 16))
    cuts = [min(n, (blocks * i // k) * step) for i in range(k + 1)]
    return [(lo, hi) for lo, hi in zip(cuts, cuts[1:]) if hi > lo]


def stream_parts(arr: np.ndarray, block_rows: int, dtype, fn, *, workers: int | None = None,
                 desc: str | None = None, reverse: bool = False) -> None:
    """Call ``fn(part, start, stop, block)`` for every block of every fixed row part of ``arr``
    (:func:`row_parts`: whole blocks, the blocks of a single pass; from :func:`iter_row_blocks`, converted to
    ``dtype``), the parts spread over
    :func:`row_workers` threads, each with its own conversion buffer. ``fn`` of different parts runs
    concurrently: it must write to disjoint rows, or to per-part accumulators. torch and the conversion release
    the GIL, so the threads use separate cores. ``reverse`` walks each part last block first."""
    import threading

    n = int(arr.shape[0])
    parts = row_parts(n, block_rows)
    k = min(row_workers(workers), max(1, len(parts)))
    progress = task = None
    lock = threading.Lock()
    if desc is not None and n >= 16 * max(1, int(block_rows)):
        from vlselect.progress import progress_bar

        progress = progress_bar(desc, unit="rows", transient=True).__enter__()
        task = progress.add_task("", total=n)

    def run(my_parts: list[int]) -> None:
        for pi in (list(reversed(my_parts)) if reverse else my_parts):
            lo, hi = parts[pi]
            for a, b, block in iter_row_blocks(arr[lo:hi], block_rows, dtype, reverse=reverse):
                fn(pi, lo + a, lo + b, block)
                if progress is not None:
                    with lock:
                        progress.update(task, advance=b - a)

    errors: list[BaseException] = []

    def guarded(my_parts: list[int]) -> None:
        try:
            run(my_parts)
        except BaseException as exc:  # re-raised in the caller's thread below
            errors.append(exc)

    try:
        if k <= 1:
            run(list(range(len(parts))))
            return
        threads = [threading.Thread(target=guarded, args=(list(range(w, len(parts), k)),), daemon=True)
                   for w in range(k)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    finally:
        if progress is not None:
            progress.stop()


# ------------------------------------------------------------------------------------------- ICONS

NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default (spec §2.5, §10 step 1)


@dataclass
class IconsTarget:
    """One voting task: a regular task (one validation matrix, rows L2-normalised before use) or a task given as
    sub-tasks (validation rows used raw; the task's score is the max over sub-tasks), as the official code
    treats MME (spec §3, §4)."""

    name: str
    subtasks: list[str]
    vals: list[np.ndarray]

    @property
    def is_split(self) -> bool:
        return bool(self.subtasks)


def icons_targets(inputs: Mapping[str, np.ndarray]) -> list[IconsTarget]:
    """Group ``val/<task>`` and ``val/<task>/<sub>`` inputs into voting tasks, sorted by task name.

    Raises
    ------
    SelectionError
        A task given both whole and as sub-tasks, a deeper role, an empty or misshapen validation matrix.
    """
    whole: dict[str, np.ndarray] = {}
    split: dict[str, dict[str, np.ndarray]] = {}
    for role, arr in inputs.items():
        if not role.startswith("val/"):
            continue
        parts = role.split("/")[1:]
        if len(parts) not in (1, 2) or not all(parts):
            raise SelectionError(
                f"icons: input role {role!r} is neither val/<task> nor val/<task>/<subtask>; e.g. --input val/gqa=… "
                "or --input val/mme/color=…"
            )
        a = np.asarray(arr)
        if a.ndim != 2 or a.shape[0] == 0:
            raise SelectionError(
                f"icons: validation input {role!r} has shape {a.shape}; it needs at least one row of gradient features"
            )
        if len(parts) == 1:
            whole[parts[0]] = a
        else:
            split.setdefault(parts[0], {})[parts[1]] = a
    both = sorted(set(whole) & set(split))
    if both:
        raise SelectionError(
            f"icons: task {both[0]!r} is given both as val/{both[0]} and as sub-tasks val/{both[0]}/<sub>; "
            "give one or the other"
        )
    targets = [IconsTarget(t, [], [whole[t]]) for t in whole]
    targets += [IconsTarget(t, sorted(subs), [subs[u] for u in sorted(subs)]) for t, subs in split.items()]
    if not targets:
        raise SelectionError("icons needs at least one validation input; pass --input val/<task>=PATH")
    return sorted(targets, key=lambda t: t.name)


def _torch_normalize(x: np.ndarray) -> np.ndarray:
    """``torch.nn.functional.normalize(x, dim=1)`` in float32 (the official ``merge_info``)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return torch.nn.functional.normalize(t, dim=1).numpy()


def _numpy_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` divided by ``max(‖row‖, 1e-12)``, in float32 (F.normalize's definition, NumPy's rounding)."""
    a = np.asarray(x, dtype=np.float32)
    nrm = np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float32))
    return a / np.maximum(nrm, np.float32(NORMALIZE_EPS))[:, None]


def icons_task_scores(
    train: np.ndarray,
    targets: Sequence[IconsTarget],
    *,
    form: str = "matvec",
    block_rows: int | None = None,
    precision: str = "float32",
    workers: int | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Specialist stage: one influence score per training row and voting task (spec §4, §10 steps 1–2).

    ``s_t[i] = mean_j <ĝ_i, v̂_tj>`` for a regular task (validation rows normalised); for a split task
    ``max_u mean_j <ĝ_i, v_uj>`` with raw sub-task rows. ``ĝ_i`` is the L2-normalised training row.

    Parameters
    ----------
    train:
        (n, d) raw training gradients; a memmap is read in row blocks (float16 welcome), never copied whole.
    targets:
        From :func:`icons_targets`.
    form:
        ``"matvec"`` (default): ``<g_i, mean_j v_j> / ‖g_i‖``, one (rows × d) @ (d × columns) product and one
        row norm per cache-sized chunk, O(n·d), in ``precision``, the division in float64.
        ``"gemm"``: the official op sequence, a float32 GEMM with every validation row then a float32 mean
        (torch), bit-identical to the official scores, O(n·m·d).
    block_rows:
        Rows per block (default: a cache-sized chunk for matvec, about 96 MB of float32 for gemm).
    precision:
        ``"float32"`` (default) or ``"float64"``: the arithmetic of the matvec products and norms. float32
        differs from float64 by float32 rounding (≤ 5e-8 absolute on 100K × 5120 synthetic features, about
        1e-6 of the largest score) at a third of the time; strict mode's hybrid uses float64 for its margin.
    workers:
        Threads of the matvec pass (default :func:`row_workers`); the scores do not depend on it.

    Returns
    -------
    scores:
        (n, T) float32 (gemm) or float64 (matvec), columns in ``targets`` order; NaN rows stay NaN.
    subtask_scores:
        For each split task, its (n, U) per-sub-task scores (columns in ``subtasks`` order).
    """
    n, d = int(train.shape[0]), int(train.shape[1])
    for t in targets:
        for u, v in zip(t.subtasks or [t.name], t.vals):
            if v.shape[1] != d:
                raise SelectionError(
                    f"icons: validation features of {t.name}{'/' + u if t.subtasks else ''} are {v.shape[1]}-wide but "
                    f"the training features are {d}-wide; both must come from the same projection"
                )
    if precision not in ("float32", "float64"):
        raise SelectionError(f"icons: precision={precision!r}; choose float32 or float64")
    fused = form == "matvec" and fused_half(train, np.dtype(precision))
    # one column per validation matrix: regular tasks normalised, sub-tasks raw. The fused path needs no torch
    # at all (its import is 1.5 s of a 665K-row run's whole command): NumPy's float32 normalisation, which
    # differs from torch's F.normalize by float32 rounding; the strict forms keep torch's, bit for bit.
    if fused:
        mats = [(_numpy_normalize(t.vals[0]) if not t.is_split else np.asarray(v, dtype=np.float32))
                for t in targets for v in t.vals]
    else:
        with torch_threads(1) if form == "matvec" else contextlib.nullcontext():  # small ops: see torch_threads
            mats = [(_torch_normalize(t.vals[0]) if not t.is_split else np.asarray(v, dtype=np.float32))
                    for t in targets for v in t.vals]
    owners = [ti for ti, t in enumerate(targets) for _ in t.vals]
    if form == "gemm":
        block_rows = block_rows or block_rows_for(d)
        import torch

        cols = np.empty((n, len(mats)), dtype=np.float32)
        tv = [torch.from_numpy(np.ascontiguousarray(m)) for m in mats]
        for a, b, block in iter_row_blocks(train, block_rows, np.float32, desc="ICONS: influence"):
            g = torch.from_numpy(_torch_normalize(block))
            for j, v in enumerate(tv):
                cols[a:b, j] = torch.mean(g @ v.T, dim=1).numpy()
    elif form == "matvec":
        prec = np.dtype(np.float64 if precision == "float64" else np.float32)
        means = np.stack([m.astype(np.float64).mean(axis=0) for m in mats], axis=0)  # (cols, d) in float64
        rows_step = block_rows or chunk_rows_for(d, prec.itemsize)
        if fused:
            # float16 rows, float32 arithmetic: one fused kernel per chunk reads each half once (kernels.py)
            from vlselect.select import kernels

            kernels.warm("half_rows_dots_norms")
            m32 = kernels.pad4(means)
            dots_np = np.empty((n, m32.shape[0]), dtype=np.float32)
            nrm_np = np.empty(n, dtype=np.float32)

            def fused(part: int, a: int, b: int, block: np.ndarray) -> None:
                kernels.half_rows_dots_norms(kernels.half_view(block), m32, dots_np[a:b], nrm_np[a:b])

            stream_parts(train, rows_step, np.float16, fused, workers=workers, desc="ICONS: influence")
            cols = dots_np[:, : len(mats)].astype(np.float64)
            cols /= np.maximum(nrm_np.astype(np.float64), NORMALIZE_EPS)[:, None]
        else:
            import torch

            tprec = getattr(torch, prec.name)
            mt = torch.from_numpy(np.ascontiguousarray(pad_columns(means.astype(prec))))
            dots = torch.empty((n, mt.shape[0]), dtype=tprec)
            nrm = torch.empty(n, dtype=tprec)

            def chunk(part: int, a: int, b: int, block: np.ndarray) -> None:
                x = tensor_view(block)
                torch.mm(x, mt.T, out=dots[a:b])
                torch.linalg.vector_norm(x, 2, dim=1, out=nrm[a:b])

            # one streaming pass in cache-sized chunks: convert, multiply and take the norm while the chunk is
            # in cache, one torch thread per worker (a row's values do not depend on the chunking or the workers)
            with torch_threads(1):
                stream_parts(train, rows_step, prec, chunk, workers=workers, desc="ICONS: influence")
            cols = dots.numpy()[:, : len(mats)].astype(np.float64)
            cols /= np.maximum(nrm.numpy().astype(np.float64), NORMALIZE_EPS)[:, None]
    else:
        raise SelectionError(f"icons: score_form={form!r}; choose matvec or gemm")
    scores = np.empty((n, len(targets)), dtype=cols.dtype)
    subs: dict[str, np.ndarray] = {}
    for ti, t in enumerate(targets):
        js = [j for j, o in enumerate(owners) if o == ti]
        if t.is_split:
            sub = cols[:, js]
            subs[t.name] = sub
            # official: torch elementwise max over the sub-task row means (NaN propagates)
            scores[:, ti] = np.max(sub, axis=1)
        else:
            scores[:, ti] = cols[:, js[0]]
    return scores, subs


HYBRID_DELTA = 2e-6  # margin (× the task's largest validation row norm) around each threshold; see icons_strict_votes
_MIN_GEMM_ROWS = 256  # MKL takes another (differently rounded) path for very short GEMMs: pad to at least this


def _gemm_rows(train: np.ndarray, rows: np.ndarray, targets: Sequence[IconsTarget]) -> np.ndarray:
    """The official float32 scores (GEMM + mean, then max over sub-tasks) of the given rows only."""
    rows = np.asarray(rows, dtype=np.int64)
    srt = np.sort(rows)
    out = np.empty((srt.size, len(targets)), dtype=np.float32)
    step = max(_MIN_GEMM_ROWS, block_rows_for(int(train.shape[1])) // 4)
    for a in range(0, srt.size, step):
        x = np.asarray(train[srt[a : a + step]], dtype=np.float32)
        m = x.shape[0]
        if m < _MIN_GEMM_ROWS:
            x = np.concatenate([x, np.zeros((_MIN_GEMM_ROWS - m, x.shape[1]), dtype=np.float32)])
        sc, _ = icons_task_scores(x, targets, form="gemm", block_rows=x.shape[0])
        out[a : a + m] = sc[:m]
    return out[np.searchsorted(srt, rows)]


def icons_strict_votes(
    train: np.ndarray,
    targets: Sequence[IconsTarget],
    approx: np.ndarray,
    percentile: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """The official votes at ``percentile`` without the official O(n·m·d) work (spec §10 steps 2–3).

    ``approx`` are the float64 mean-vector scores (:func:`icons_task_scores`, ``form="matvec"``), within
    ``δ_t = HYBRID_DELTA`` (× the largest raw row norm for a split task) of the official float32 scores (they
    differ by float32 rounding: ~1e-9 relative on 665K × 5120 synthetic features, so δ/4 leaves a margin of ~100). Let ``a_lo ≤ a_hi`` be the approximate order statistics that ``numpy.percentile``
    interpolates (widened by one position either side). Every row with an approximate score in
    ``[a_lo - 2δ, a_hi + 2δ]`` is recomputed with the
    official op sequence (float32 GEMM with every validation row, float32 mean, max over sub-tasks); every other
    row is at least δ away from both the approximate and the official threshold, so its mark cannot differ,
    and the rows the official percentile interpolates are among the recomputed ones. Hence the thresholds, marks
    and votes equal the official ones bit for bit, at the cost of a mat-vec plus a GEMM on ~0.1–1 % of the rows.
    The recomputed rows also check the margin: if any differs from its approximation by more than δ/4, or a
    score is not finite (the official NaN behaviour, Q15), every row is recomputed officially instead.

    Returns
    -------
    thresholds (T,) float32, mark (n, T), votes (n,) int64, scores (n, T) float32 (official values on the
    recomputed rows, rounded approximations elsewhere), info (rows recomputed, fallback used).
    """
    n, T = approx.shape
    # a regular task's validation rows are unit length; a split task's are raw: scale by its largest row norm
    deltas = np.asarray(
        [
            HYBRID_DELTA
            * (max(1.0, max(float(np.sqrt((np.asarray(v, np.float64) ** 2).sum(1)).max()) for v in t.vals)) if t.is_split else 1.0)
            for t in targets
        ]
    )
    fallback = not np.isfinite(approx).all() or n < 2
    near = np.zeros(n, dtype=bool)
    if not fallback:
        pos = (n - 1) * percentile / 100.0
        # one position of slack either side, in case NumPy rounds the interpolation position the other way
        lo, hi = max(0, int(np.floor(pos)) - 1), min(n - 1, int(np.floor(pos)) + 2)
        for t in range(T):
            part = np.partition(approx[:, t], [lo, hi])
            near |= (approx[:, t] >= part[lo] - 2 * deltas[t]) & (approx[:, t] <= part[hi] + 2 * deltas[t])
        rows = np.flatnonzero(near)
        if rows.size > n // 4:
            fallback = True
    if fallback:
        scores, _ = icons_task_scores(train, targets, form="gemm")
        rows = np.arange(n)
    else:
        exact = _gemm_rows(train, rows, targets)
        if np.any(np.abs(exact.astype(np.float64) - approx[rows]) > deltas[None, :] / 4):
            scores, _ = icons_task_scores(train, targets, form="gemm")
            rows, fallback = np.arange(n), True
        else:
            scores = approx.astype(np.float32)
            scores[rows] = exact
    thr, mark, votes = icons_votes(scores, percentile)
    return thr, mark, votes, scores, {"rows_recomputed": int(rows.size), "full_gemm": bool(fallback)}


def icons_votes(scores: np.ndarray, percentile: float, *, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generalist vote: per task ``thr = numpy.percentile(s_t, percentile)`` (linear), ``mark = s_t >= thr``,
    ``votes = Σ_t mark`` (spec §5, §10 step 3).

    With ``valid`` (default mode) the percentiles are taken over the valid rows only and invalid rows get no
    vote; without it a NaN row makes every threshold NaN and every vote zero, as in the official code (Q15).

    Returns
    -------
    thresholds (T,), mark (n, T) bool, votes (n,) int64
    """
    s = np.asarray(scores)
    if valid is None:
        thr = np.asarray([np.percentile(s[:, t], percentile) for t in range(s.shape[1])])
        mark = s >= thr[None, :].astype(s.dtype)
    else:
        thr = np.asarray([np.percentile(s[valid, t], percentile) for t in range(s.shape[1])])
        with np.errstate(invalid="ignore"):
            mark = (s >= thr[None, :]) & valid[:, None]
    votes = mark.sum(axis=1, dtype=np.int64)
    return thr, mark, votes


def icons_mean_rank(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mean over tasks of each valid row's percentile rank in [0, 1) (average rank for equal scores; NaN for
    invalid rows): the default tie-break key among rows with the same vote count (spec §10)."""
    n, T = scores.shape
    out = np.full(n, np.nan, dtype=np.float64)
    idx = np.flatnonzero(valid)
    m = idx.size
    if m == 0:
        return out
    acc = np.zeros(m, dtype=np.float64)
    rank = np.empty(m, dtype=np.float64)
    for t in range(T):
        col = np.asarray(scores[idx, t], dtype=np.float64)
        # average 0-based rank of each tie group [lo, hi) of the sorted column: (lo + hi - 1) / 2 (one sort,
        # no binary searches: those cost 2 random accesses per row; equal scores share one value, so the sort
        # need not be stable)
        order = np.argsort(col)
        srt = col[order]
        new = np.empty(m, dtype=bool)
        new[0] = True
        np.not_equal(srt[1:], srt[:-1], out=new[1:])
        lo = np.flatnonzero(new)
        hi = np.append(lo[1:], m)
        rank[order] = ((lo + hi - 1) / 2.0)[np.cumsum(new) - 1]
        acc += rank / m
    out[idx] = acc / T
    return out


def _vote_summary(votes: np.ndarray, sel: np.ndarray, n_tasks: int) -> dict[str, Any]:
    k = int(sel.size)
    if k == 0:
        return {"k": 0}
    v_sel = votes[sel]
    boundary = int(v_sel.min())
    return {
        "k": k,
        "boundary_vote": boundary,
        "n_rows_vote_above_boundary": int((votes > boundary).sum()),
        "n_rows_with_boundary_vote": int((votes == boundary).sum()),
        "n_selected_from_boundary_group": int((v_sel == boundary).sum()),
        "vote_histogram": np.bincount(votes[votes >= 0], minlength=n_tasks + 1).astype(int).tolist(),
    }


@register_method(
    "icons",
    roles=[
        Role("train", "projected training gradients, one row per pool row (official: 5120-d, fast_jl)",
             checks_finite=True),
        Role(
            "val/*",
            "validation gradients of a target task: val/<task> (rows normalised), or val/<task>/<sub> for a task "
            "split into sub-tasks (rows raw, task score = max over sub-tasks; how the official code treats MME)",
            aligned=False,
        ),
    ],
    params=[
        Param(
            "top_percent",
            None,
            float,
            "each task votes for its top top_percent % of rows (threshold percentile 100 - top_percent); "
            "default: tied to the budget, 100 × budget fraction (the official rule; 20 at budget 0.2)",
            gt=0,
            le=100,
        ),
        Param(
            "percentile",
            None,
            float,
            "the threshold percentile itself (= 100 - top_percent); give this or top_percent, not both",
            ge=0,
            lt=100,
        ),
        Param(
            "score_form",
            None,
            str,
            "matvec (O(n·d), float32 products and a float64 division; the default), gemm (the official float32 GEMM + mean for every row) or hybrid "
            "(matvec, plus the official GEMM for the rows near each threshold: official votes at matvec cost; the "
            "strict default)",
            choices=(None, "matvec", "gemm", "hybrid"),
        ),
    ],
    summary="ICONS: per-task influence (specialist), then a consensus vote over tasks' top percentiles (generalist)",
    reference="Wu et al., ICONS: Influence Consensus for Vision-Language Data Selection (arXiv 2501.00654)",
)
def select_icons(
    inputs: dict[str, np.ndarray],
    tasks: np.ndarray | None,
    budgets: list[Budget],
    *,
    seed: int = 0,
    strict_official: bool = False,
    top_percent: float | None = None,
    percentile: float | None = None,
    score_form: str | None = None,
) -> list[Selection]:
    """Select with ICONS at one or more budgets (spec §4, §5, §10; one specialist pass for every budget).

    The threshold percentile and the budget. The official generalist ties them: ``--top_percent p`` makes
    every task vote for its top p % *and* keeps ``k = int(p/100 · N)`` rows. Here the budget gives k, and the
    percentile is ``100 - top_percent`` (or ``percentile``) when given, else ``100 - 100 × budget fraction``
    for each budget — the official rule. ``top_percent=20`` and ``percentile=80`` are the same setting.

    Order and tie-break. Strict: ``numpy.argsort(votes)[-k:]`` with NumPy's default (unstable) sort, exactly
    the official list (ascending votes; which rows of the boundary vote are taken depends on the NumPy build
    and CPU, spec §5, Q20). Default: deterministic priority order — more votes first; among equal votes the
    higher mean percentile rank of the row's task scores (:func:`icons_mean_rank`), then the lower index.
    ``Selection.scores`` is ``votes + mean rank`` (so sorting it descending gives that order; NaN for excluded
    rows); in strict mode it is the vote count.

    Default fixes (spec §8): NaN/inf training rows are excluded (no vote, not selected; percentiles over the
    rest) instead of zeroing every task's vote (Q15); a budget larger than the rows with any vote is filled
    down the same priority order (the official argsort does too, arbitrarily); the tie-break is deterministic
    (Q20); scores use the exact O(n·d) mean-vector form (float32 products, float64 division; spec §4 notes).

    Parameters
    ----------
    inputs:
        ``train`` (n, d) and one or more ``val/<task>`` / ``val/<task>/<sub>`` (m, d) arrays.
    budgets:
        Resolved budgets (k = ``budget.count``).
    strict_official:
        Reproduce the official generalist (see above).
    top_percent, percentile, score_form:
        See above and ``vlselect select --list``.

    Returns
    -------
    list of Selection. ``info`` holds the task order, thresholds, marks per task, the vote histogram, the
    boundary vote and the number of tie-decided rows.

    References
    ----------
    specs/icons.md §4 (specialist), §5 (generalist), §8 (quirks), §10 (checklist).

    Examples
    --------
    >>> sel = run_method("icons", {"train": G, "val/gqa": V1, "val/mme/color": V2}, 0.2)  # doctest: +SKIP
    """
    train = inputs["train"]
    if train.ndim != 2:
        raise SelectionError(f"icons: the train input must be 2-D (rows × features), got shape {train.shape}")
    n = int(train.shape[0])
    if top_percent is not None and not (0 < top_percent <= 100):
        raise SelectionError(f"icons: top_percent={top_percent} is outside (0, 100]; the paper uses 20")
    if percentile is not None and not (0 <= percentile < 100):
        raise SelectionError(f"icons: percentile={percentile} is outside [0, 100); the paper uses 80")
    if top_percent is not None and percentile is not None and abs((100 - top_percent) - percentile) > 1e-9:
        raise SelectionError(
            f"icons: top_percent={top_percent} and percentile={percentile} disagree (percentile = 100 - top_percent); "
            "give only one"
        )
    targets = icons_targets(inputs)
    form = score_form or ("hybrid" if strict_official else "matvec")
    # hybrid: float64 mat-vec so its margin against the official float32 scores stays ~100x (icons_strict_votes)
    scores, subs = icons_task_scores(train, targets, form="matvec" if form == "hybrid" else form,
                                     precision="float64" if form == "hybrid" else "float32")
    names = [t.name for t in targets]
    valid = None if strict_official else np.isfinite(scores).all(axis=1)
    mean_rank = None if strict_official else icons_mean_rank(scores, valid)
    # NaN/inf training rows: found in the one pass above (run_method does not scan this input first)
    bad_rows = np.flatnonzero(~np.isfinite(scores).all(axis=1))
    excluded_info = None
    if bad_rows.size:
        import warnings

        first = ", ".join(str(int(r)) for r in bad_rows[:10]) + (", ..." if bad_rows.size > 10 else "")
        if strict_official:
            warnings.warn(f"icons: {bad_rows.size} train row(s) with NaN or inf passed through as the official code "
                          f"would (strict_official); first {first}", RuntimeWarning, stacklevel=2)
        else:
            warnings.warn(f"icons: {bad_rows.size} pool row(s) with NaN or inf in the train input excluded; first "
                          f"{first}", RuntimeWarning, stacklevel=2)
        excluded_info = {"count": 0 if strict_official else int(bad_rows.size), "rows": bad_rows[:20].tolist(),
                         "by_role": {"train": int(bad_rows.size)}, "first_by_role": {"train": bad_rows[:10].tolist()},
                         "passed_through": bool(strict_official)}
    out: list[Selection] = []
    for budget in budgets:
        if percentile is not None:
            pct = float(percentile)
        elif top_percent is not None:
            pct = 100 - top_percent
        else:
            pct = 100 - round(100 * budget.fraction, 10)
        k = int(budget.count)
        if bad_rows.size and not strict_official and budget.given_as_fraction:
            # as run_method's rule: a fraction counts only the selectable rows (those found NaN/inf here are not)
            k = int(budget.fraction * (train.shape[0] - bad_rows.size))
            budget = Budget(count=k, fraction=budget.fraction, n=budget.n, given=budget.given)
        extra: dict[str, Any] = {}
        if strict_official and form == "hybrid":
            thr, mark, votes, _, extra = icons_strict_votes(train, targets, scores, pct)
            sel = np.argsort(votes)[-k:] if k > 0 else np.zeros(0, dtype=np.int64)
            sel_scores = votes.astype(np.float64)
        elif strict_official:
            thr, mark, votes = icons_votes(scores, pct)
            sel = np.argsort(votes)[-k:] if k > 0 else np.zeros(0, dtype=np.int64)
            sel_scores = votes.astype(np.float64)
        else:
            if not valid.any():
                raise SelectionError("icons: every training row holds NaN or inf; nothing to select from")
            thr, mark, votes = icons_votes(scores, pct, valid=valid)
            votes = np.where(valid, votes, -1)
            order = np.lexsort((np.arange(n), -np.nan_to_num(mean_rank, nan=-1.0), -votes))
            order = order[valid[order]]
            sel = order[:k]
            sel_scores = np.where(valid, votes + mean_rank, np.nan)
        info: dict[str, Any] = {
            "voting_tasks": names,
            "subtasks": {t.name: t.subtasks for t in targets if t.is_split},
            "percentile": pct,
            "top_percent": 100 - pct,
            "thresholds": [float(x) for x in thr],
            "marks_per_task": {nm: int(mark[:, j].sum()) for j, nm in enumerate(names)},
            "score_form": form,
            "tie_break": "numpy argsort (unstable, official)" if strict_official else "votes, then mean percentile rank, then lower index",
        }
        info.update(_vote_summary(votes, np.asarray(sel, dtype=np.int64), len(names)))
        info.update(extra)
        if not strict_official:
            info["invalid_rows"] = {"count": int((~valid).sum()), "first": np.flatnonzero(~valid)[:20].tolist()}
        if excluded_info is not None:
            info["excluded_rows"] = excluded_info
        if abs((100 - pct) / 100 - budget.fraction) > 1e-9:
            info["note"] = (
                f"threshold percentile {pct:g} is not tied to the budget ({budget.count} rows = "
                f"{100 * budget.fraction:.4g} %); the official code uses 100 - 100 × budget fraction"
            )
        out.append(
            Selection(
                indices=np.asarray(sel, dtype=np.int64),
                scores=sel_scores,
                method="icons",
                budget=budget,
                params={"top_percent": top_percent, "percentile": percentile, "score_form": form},
                seed=seed,
                strict_official=strict_official,
                info=info,
            )
        )
    return out
