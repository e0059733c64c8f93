"""Fused float16 row kernels for the streaming passes of ICONS and TIVE (numba, no GIL).

The published feature stores are float16 (665,298 x 5,120 for LLaVA-665K: 6.8 GB). A pass that first converts
each chunk to float32 and then hands it to BLAS moves every value three times (read the half, write the float,
read the float back); these kernels read each half once, widen it in registers and use it at once: the row norm
and the few inner products ICONS needs, the row's share of its task sum and, in a second pass, its inner product
with its own task centroid for TIVE. Measured on this project's 2-core box (``benchmarks/select_scale.py``,
665,298 x 5,120 float16): ICONS selects in 1.16x and TIVE (two passes) in 1.40x the time of one plain NumPy read
of the memmap, where convert-then-multiply took 1.9x and 3.1x in the same run (benchmarks/RESULTS.md).

Each kernel takes a C-contiguous ``uint16`` view of float16 rows (NumPy's float16 is not a numba type) and
widens every value as it reads it, with the CPU's own half -> float conversion (:func:`widen_half_row`), exact for every one of the 65,536 float16 values (tested against NumPy's ``astype``). Sums are
float32 with reassociation allowed (vectorised partial sums, as BLAS does), never with NaN/Inf assumed away, so a
non-finite row yields a non-finite norm as it does in torch. A row's results depend on that row only, never on
the chunking or on how many threads run the kernels (they release the GIL; :func:`vlselect.select.icons.
stream_parts` runs one per worker thread).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

# reassociation (vectorised partial sums) and fused multiply-add only: no "nnan"/"ninf", so NaN and Inf
# propagate and isfinite() holds as written
_FM = {"reassoc", "contract"}
_JIT = dict(nogil=True, cache=True, fastmath=_FM, boundscheck=False)

_EPS32 = np.float32(1e-12)


@intrinsic
def _half_to_float(typingctx, h):
    """float16 bits (uint16) -> float32: LLVM's ``fpext half to float``, which the vectoriser turns into the
    CPU's own conversion (x86 F16C ``vcvtph2ps``, ARM ``fcvtl``): exact for every float16 value."""
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return sig, codegen


@njit(**_JIT)
def widen_half_row(h, out):
    """``out[:] = h`` read as float16 bits (``h`` (d,) uint16, ``out`` (d,) float32)."""
    for j in range(h.shape[0]):
        out[j] = _half_to_float(h[j])


@njit(**_JIT)
def _half_sq_norm(row):
    s = np.float32(0.0)
    for j in range(row.shape[0]):
        x = _half_to_float(row[j])
        s += x * x
    return s


@njit(**_JIT)
def _half_dot(row, w):
    s = np.float32(0.0)
    for j in range(row.shape[0]):
        s += _half_to_float(row[j]) * w[j]
    return s


@njit(**_JIT)
def half_rows_dots_norms(h, m, dots, norms):
    """For every float16 row ``i`` of ``h`` (uint16 view, (r, d)): ``norms[i] = ‖x_i‖`` and ``dots[i, c] = x_i ·
    m[c]`` for the rows of ``m`` ((k, d) float32, k a multiple of 4: pad with zero rows, :func:`pad4`), in
    float32. ICONS's pass: one loop over the row per four columns, the norm in the first (2x faster than
    widening the row into a buffer and taking five separate reductions of it)."""
    r = h.shape[0]
    d = h.shape[1]
    k = m.shape[0]
    for i in range(r):
        row = h[i]
        s = np.float32(0.0)
        for g in range(0, k, 4):
            m0 = m[g]
            m1 = m[g + 1]
            m2 = m[g + 2]
            m3 = m[g + 3]
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            if g == 0:
                for j in range(d):
                    x = _half_to_float(row[j])
                    s += x * x
                    a0 += x * m0[j]
                    a1 += x * m1[j]
                    a2 += x * m2[j]
                    a3 += x * m3[j]
            else:
                for j in range(d):
                    x = _half_to_float(row[j])
                    a0 += x * m0[j]
                    a1 += x * m1[j]
                    a2 += x * m2[j]
                    a3 += x * m3[j]
            dots[i, g] = a0
            dots[i, g + 1] = a1
            dots[i, g + 2] = a2
            dots[i, g + 3] = a3
        norms[i] = np.sqrt(s)


@njit(**_JIT)
def _group_end(key, order, p):
    """The end of the run of equal ``key[order[...]]`` that starts at position ``p`` of ``order``."""
    q = p
    t = key[order[p]]
    while q < order.shape[0] and key[order[q]] == t:
        q += 1
    return q


@njit(**_JIT)
def half_rows_task_sums(h, dest, sums, norms, acc):
    """TIVE's first pass over float16 rows ``h`` ((r, d) uint16 view): ``norms[i] = ‖x_i‖`` (float32) and, for
    every row with a finite norm and ``0 <= dest[i] < len(sums)``, its unit row ``x_i / max(‖x_i‖, 1e-12)``
    added to its task's row of ``sums`` ((T, d) float64): the rows of this call summed in float32 in ``acc``
    ((T, d) float32 scratch, zeroed here), then added to ``sums`` in float64 (the torch path's order: float32
    within a chunk, float64 across chunks). The rows of one task are added four at a time (one read and write
    of the task's sum for four rows: 1.4x faster than row by row); the order is fixed by the rows of the call."""
    r = h.shape[0]
    d = h.shape[1]
    t_max = sums.shape[0]
    acc[:, :] = 0.0
    inv = np.empty(r, dtype=np.float32)
    key = np.empty(r, dtype=np.int64)
    for i in range(r):
        nv = np.float32(np.sqrt(_half_sq_norm(h[i])))
        norms[i] = nv
        t = dest[i]
        if t < 0 or t >= t_max or not np.isfinite(nv):
            key[i] = t_max  # no task, or not finite: in no sum
        else:
            key[i] = t
            inv[i] = np.float32(1.0) / max(nv, _EPS32)
    order = np.argsort(key, kind="mergesort")  # rows grouped by task, each group in row order
    used = np.zeros(t_max, dtype=np.bool_)
    p = 0
    while p < r and key[order[p]] < t_max:
        q = _group_end(key, order, p)
        t = key[order[p]]
        used[t] = True
        a = acc[t]
        while p + 4 <= q:
            r0, r1, r2, r3 = h[order[p]], h[order[p + 1]], h[order[p + 2]], h[order[p + 3]]
            v0, v1, v2, v3 = inv[order[p]], inv[order[p + 1]], inv[order[p + 2]], inv[order[p + 3]]
            for j in range(d):
                a[j] += ((_half_to_float(r0[j]) * v0 + _half_to_float(r1[j]) * v1)
                         + (_half_to_float(r2[j]) * v2 + _half_to_float(r3[j]) * v3))
            p += 4
        while p < q:
            r0 = h[order[p]]
            v0 = inv[order[p]]
            for j in range(d):
                a[j] += _half_to_float(r0[j]) * v0
            p += 1
    for t in range(t_max):
        if used[t]:
            s = sums[t]
            a = acc[t]
            for j in range(d):
                s[j] += np.float64(a[j])


@njit(**_JIT)
def half_rows_own_dots(h, codes, take, cents, own):
    """TIVE's second pass: ``own[i] = x_i · cents[codes[i]]`` (float32) for the rows with ``take[i]``, other rows
    untouched. ``h`` (r, d) uint16 view of float16 rows, ``cents`` (T, d) float32. Rows of one task go four at a
    time (one read of the centroid for four rows); each row's dot is its own float32 sum."""
    r = h.shape[0]
    d = h.shape[1]
    t_max = cents.shape[0]
    key = np.empty(r, dtype=np.int64)
    for i in range(r):
        key[i] = codes[i] if take[i] else t_max
    order = np.argsort(key, kind="mergesort")
    p = 0
    while p < r and key[order[p]] < t_max:
        q = _group_end(key, order, p)
        c = cents[key[order[p]]]
        while p + 4 <= q:
            i0, i1, i2, i3 = order[p], order[p + 1], order[p + 2], order[p + 3]
            r0, r1, r2, r3 = h[i0], h[i1], h[i2], h[i3]
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            for j in range(d):
                cj = c[j]
                a0 += _half_to_float(r0[j]) * cj
                a1 += _half_to_float(r1[j]) * cj
                a2 += _half_to_float(r2[j]) * cj
                a3 += _half_to_float(r3[j]) * cj
            own[i0] = a0
            own[i1] = a1
            own[i2] = a2
            own[i3] = a3
            p += 4
        while p < q:
            own[order[p]] = _half_dot(h[order[p]], c)
            p += 1


def pad4(m: np.ndarray) -> np.ndarray:
    """``m`` (k, d) as C-contiguous float32 with zero rows appended up to a multiple of 4 (the column groups of
    :func:`half_rows_dots_norms`; the extra dots are zeros, discarded by the caller)."""
    k = int(m.shape[0])
    out = np.zeros((max(4, -(-k // 4) * 4), int(m.shape[1])), dtype=np.float32)
    out[:k] = m
    return out


def half_view(block: np.ndarray) -> np.ndarray:
    """The uint16 view of a C-contiguous float16 block, as the kernels take it."""
    if block.dtype != np.float16 or not block.flags.c_contiguous:
        raise ValueError(f"half_view needs a C-contiguous float16 block, got {block.dtype} "
                         f"(contiguous: {block.flags.c_contiguous})")
    return np.asarray(block).view(np.uint16)


def _warm_args(name: str, h: np.ndarray) -> tuple:
    if name == "half_rows_dots_norms":
        return h, np.zeros((4, 8), np.float32), np.empty((1, 4), np.float32), np.empty(1, np.float32)
    if name == "half_rows_task_sums":
        return h, np.zeros(1, np.int64), np.zeros((1, 8)), np.empty(1, np.float32), np.empty((1, 8), np.float32)
    if name == "half_rows_own_dots":
        return h, np.zeros(1, np.int64), np.ones(1, np.bool_), np.zeros((1, 8), np.float32), np.empty(1, np.float32)
    raise ValueError(f"no kernel {name!r} to warm")


def warm(*names: str) -> None:
    """Compile (or load from numba's cache) the named kernels (default: all) in the calling thread, before
    worker threads call them: for writable rows and for read-only ones (a memmap opened read-only), which numba
    types apart. Loading takes about 0.4 s for the first kernel of a process (LLVM's start), milliseconds after."""
    for name in names or ("half_rows_dots_norms", "half_rows_task_sums", "half_rows_own_dots"):
        for writable in (True, False):
            h = np.zeros((1, 8), dtype=np.uint16)
            h.setflags(write=writable)
            globals()[name](*_warm_args(name, h))
