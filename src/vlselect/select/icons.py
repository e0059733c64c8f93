"""ICONS: specialist influence per target task, then a generalist vote (specs/icons.md §4, §5, §10).

Placeholder while the method is written; the row-block helper below is shared with TIVE.
"""

from __future__ import annotations

import mmap
from typing import Iterator

import numpy as np

# ------------------------------------------------------------------------------------------- row blocks

_BLOCK_BYTES = 96 * 2**20  # float32 bytes per row block: big enough for BLAS, small next to the 8 GB budget


def block_rows_for(d: int, itemsize: int = 4, target_bytes: int = _BLOCK_BYTES) -> int:
    """Rows per block so that one ``(rows, d)`` block of ``itemsize``-byte floats is about ``target_bytes``."""
    return int(max(256, target_bytes // max(1, d * itemsize)))


def _release(arr: np.ndarray, a: int, b: int) -> None:
    """Drop the pages of rows ``[a, b)`` of a memmap from this process (they stay in the page cache).

    Without this a pass over a 6.8 GB memmap leaves every page mapped and counted in the resident set.
    """
    mm = getattr(arr, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        view = np.frombuffer(mm, dtype=np.uint8)
        base = view.ctypes.data
        del view
        row_bytes = int(arr.strides[0])
        start = arr.ctypes.data - base + a * row_bytes
        stop = arr.ctypes.data - base + b * row_bytes
        page = mmap.PAGESIZE
        start = (start // page) * page
        if stop > start:
            mm.madvise(mmap.MADV_DONTNEED, start, min(stop - start, len(mm) - start))
    except (ValueError, OSError, BufferError):  # best effort: never fail a selection over page hygiene
        pass


def iter_row_blocks(
    arr: np.ndarray, block_rows: int, dtype: np.dtype | type = np.float32, *, desc: str | None = None
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(start, stop, block)`` over the rows of ``arr`` with ``block`` of ``dtype`` (read only: a view
    when ``arr`` already has that dtype and is C-contiguous, a converted copy otherwise).

    Works on in-memory arrays and on ``numpy.memmap`` (pages of a memmap are released after each block, so
    peak memory is one block, never the whole matrix). A rich progress bar is shown when there are many blocks
    and ``desc`` is given.
    """
    n = int(arr.shape[0])
    starts = list(range(0, n, max(1, int(block_rows))))
    progress = None
    if desc is not None and len(starts) >= 16:
        try:
            from rich.progress import Progress

            progress = Progress(transient=True)
            progress.start()
            task = progress.add_task(desc, total=n)
        except Exception:  # pragma: no cover - rich missing or no console
            progress = None
    try:
        for a in starts:
            b = min(n, a + int(block_rows))
            view = arr[a:b]
            if view.dtype == np.dtype(dtype) and view.flags.c_contiguous:
                block = np.asarray(view)
                yield a, b, block
                del block
            else:
                block = np.array(view, dtype=dtype, copy=True)
                yield a, b, block
            _release(arr, a, b)
            if progress is not None:
                progress.update(task, advance=b - a)
    finally:
        if progress is not None:
            progress.stop()
