"""TIVE: task value from gradient norms, instance value from within-task gradient agreement, seeded
softmax sampling (specs/tive.md §5, §7, §8, §10).

The official selection stage (``select_data_TIVE.py``) in one paragraph:

* the *task value* ``v_t`` is the mean (unprojected) gradient norm of the task's rows; the task's *quota* is
  ``v_t / Σ_u v_u · p·N`` (N counts the excluded ``textcaps`` rows too; spec §5.2);
* the *instance value* ``s_i`` is the mean cosine of row i's projected gradient with every row of its task,
  itself included (spec §5.3). The official code builds each task's n_t × n_t Gram matrix; here the exact
  O(n·d) form ``s = Ĝ_t · (Σ_j Ĝ_t[j]) / n_t`` is computed in row blocks from a memmap (two passes, never the
  whole matrix in memory);
* inside a task, rows are drawn without replacement with probabilities ``softmax(q·s)`` by NumPy's legacy
  ``RandomState.choice``, one call per task in first-appearance order; a quota above the task size emits whole
  copies of the task first (spec §5.5).

``strict_official=True`` reproduces that literally (the pack order, whole-task copies, the truncation
shortfall, float32 weights bit for bit). The default keeps the same scores, weights and sampler but fixes the
documented bugs (spec §8):

* **budget shortfall** (items 4, §5.5: fractional quotas truncated, so up to T rows are missing): the integer
  quotas are rounded by largest remainder so they add up to the budget exactly;
* **duplicates from a task smaller than its quota** (item 4): quotas are capped at the task size and the excess
  is redistributed over the other tasks in proportion to their task values (water-filling), so no row appears
  twice; if the eligible rows are fewer than the budget, all are taken and ``Selection.shortfall`` says so;
* **NaN / inf rows** (item 11: one NaN norm crashes the script, one NaN feature row makes its whole task's
  weights NaN): such rows are reported in ``info["invalid_rows"]`` and excluded (in strict mode they raise);
* a task whose weights underflow to zero for some rows (huge ``q``): those rows are taken last, by score,
  instead of the official ``ValueError``.

The budget ``p`` is the user's budget. As in the official code a fraction counts the whole pool, the excluded
task included (spec §5.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from vlselect.errors import SelectionError
from vlselect.select.base import Budget, Param, Role, Selection, factorize_labels, register_method
from vlselect.select.icons import (
    block_rows_for, chunk_rows_for, fused_half, iter_row_blocks, pad_columns, row_parts, stream_parts, tensor_view,
    torch_threads,
)

__all__ = [
    "TiveTasks",
    "tive_tasks",
    "tive_instance_scores",
    "tive_instance_weights",
    "tive_quotas",
    "tive_official_counts",
    "tive_fixed_counts",
    "select_tive",
]

EXCLUDED_TASK = "textcaps"
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default eps (spec §5.3)
GRAM_BLOCK_THRESHOLD = 300_000  # official: tasks above this size build the Gram matrix in row blocks
GRAM_BLOCK_ROWS = 80_000


# ------------------------------------------------------------------------------------------ task table


@dataclass
class TiveTasks:
    """The eligible tasks of a pool, in first-appearance order (spec §5.1, §5.2).

    Attributes
    ----------
    names:
        Task labels in processing order (first appearance among eligible rows).
    rows:
        Per task, the ascending int64 row indices of its eligible rows.
    norm_sums:
        ``S_t``: float64 left-to-right sum of the task's gradient norms.
    values:
        ``v_t = S_t / n_t`` (the task value).
    total_value:
        ``V = Σ_t v_t`` accumulated in task order.
    codes:
        int32 per pool row: the row's task position in ``names``, or -1 (excluded task or invalid row).
    """

    names: list[str]
    rows: list[np.ndarray]
    norm_sums: np.ndarray
    values: np.ndarray
    total_value: float
    codes: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        return np.asarray([r.shape[0] for r in self.rows], dtype=np.int64)


def _excluded_set(excluded_task: str | Sequence[str] | None) -> set[str]:
    if excluded_task is None:
        return set()
    items = excluded_task.split(",") if isinstance(excluded_task, str) else list(excluded_task)
    return {s.strip() for s in items if s.strip() and s.strip().lower() != "none"}


def tive_tasks(
    norms: np.ndarray,
    tasks: Sequence[str] | np.ndarray,
    *,
    excluded_task: str | Sequence[str] | None = EXCLUDED_TASK,
    valid: np.ndarray | None = None,
) -> TiveTasks:
    """Group eligible rows by task and compute the task values (spec §5.1, §5.2).

    Parameters
    ----------
    norms:
        Per-row gradient L2 norm (float), length n.
    tasks:
        Per-row task label (the official ``dataset`` field), length n; or the pair
        :func:`~vlselect.select.base.factorize_labels` made of them (sorted distinct labels, per-row position).
    excluded_task:
        Label(s) left out (official: ``"textcaps"``); a comma-separated string or a list; ``"none"`` for none.
    valid:
        Optional boolean mask; rows where it is False are left out too (the default mode's NaN rows).

    Returns
    -------
    TiveTasks
    """
    norms = np.asarray(norms, dtype=np.float64).reshape(-1)
    # np.unique's sorted labels and inverse, by one dict pass (np.unique sorts Python strings: 10x slower)
    uniq, inverse = tasks if isinstance(tasks, tuple) else factorize_labels(tasks)
    if inverse.shape[0] != norms.shape[0]:
        raise SelectionError(f"{inverse.shape[0]} task labels for {norms.shape[0]} gradient norms; give one per row")
    excluded = _excluded_set(excluded_task)
    eligible = np.ones(norms.shape[0], dtype=bool)
    if excluded:
        eligible &= ~np.isin(inverse, [i for i, u in enumerate(uniq) if u in excluded])
    if valid is not None:
        eligible &= np.asarray(valid, dtype=bool)
    names: list[str] = []
    code_of_label = np.full(uniq.shape[0], -1, dtype=np.int64)
    # first appearance among *eligible* rows decides the order
    elig_idx = np.flatnonzero(eligible)
    if elig_idx.size:
        lab_codes = inverse[elig_idx]
        first_pos = np.full(uniq.shape[0], lab_codes.size, dtype=np.int64)  # each label's first eligible row
        np.minimum.at(first_pos, lab_codes, np.arange(lab_codes.size))
        for pos in np.sort(first_pos[first_pos < lab_codes.size]):
            code_of_label[lab_codes[pos]] = len(names)
            names.append(str(uniq[lab_codes[pos]]))
    codes = np.where(eligible, code_of_label[inverse], -1).astype(np.int32)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1), side="left")
    rows = [order[bounds[t] : bounds[t + 1]].astype(np.int64) for t in range(len(names))]  # stable: ascending
    # S_t: a left-to-right float64 running sum, as the official loop accumulates (np.cumsum is sequential)
    norm_sums = np.asarray([float(np.cumsum(norms[r])[-1]) if r.size else 0.0 for r in rows], dtype=np.float64)
    values = np.asarray([s / r.size for s, r in zip(norm_sums, rows)], dtype=np.float64)
    total = 0.0
    for v in values:
        total += float(v)
    return TiveTasks(names, rows, norm_sums, values, total, codes)


# ------------------------------------------------------------------------------------------ instance value


def _normalise_rows(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``torch.nn.functional.normalize(block, dim=1)`` (eps 1e-12) in float32, and the row norms."""
    import torch

    t = tensor_view(block)
    nrm = torch.linalg.vector_norm(t, 2, dim=1, keepdim=True)
    out = t / nrm.clamp_min(NORMALIZE_EPS).expand_as(t)
    return out.numpy(), nrm.numpy().reshape(-1)


def _row_norms(block: np.ndarray) -> np.ndarray:
    """Row L2 norms in float32 as torch computes them for ``F.normalize`` (spec §5.3)."""
    import warnings

    import torch

    with warnings.catch_warnings():  # a read-only memmap block: torch only reads it
        warnings.simplefilter("ignore", UserWarning)
        return torch.linalg.vector_norm(tensor_view(block), 2, dim=1).numpy()


def _finite_rows(train: np.ndarray, block_rows: int) -> np.ndarray:
    ok = np.empty(train.shape[0], dtype=bool)
    for a, b, block in iter_row_blocks(train, block_rows, np.float32, desc="TIVE: checking rows"):
        ok[a:b] = np.isfinite(block).all(axis=1)
    return ok


def tive_instance_scores(
    train: np.ndarray,
    codes: np.ndarray,
    n_tasks: int,
    *,
    form: str = "centroid",
    block_rows: int | None = None,
    rows: Sequence[np.ndarray] | None = None,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Instance values ``s_i`` = mean cosine of row i with every row of its task, itself included (spec §5.3).

    Parameters
    ----------
    train:
        (n, d) projected gradients, any float dtype, a ``numpy.memmap`` welcome (read in row blocks).
    codes:
        Per row, its task's position (0..n_tasks-1) or -1 for rows that take no part.
    form:
        ``"centroid"`` (default): the exact O(n·d) form ``ŝ = Ĝ (Σ_j Ĝ_j) / n_t``, per-chunk sums in float32
        accumulated in float64, two streaming passes. ``"gram"``: the official op sequence (float32 ``torch.mean(G @ G.T, dim=1)`` per task; needs
        ``rows``), bit-identical to the official scores but O(n_t²·d).
    block_rows:
        Rows per block (default: a cache-sized chunk, :func:`~vlselect.select.icons.chunk_rows_for`).
    workers:
        Threads of the centroid passes (default :func:`~vlselect.select.icons.row_workers`); the scores do not
        depend on it (fixed row parts, their sums added in a fixed order).

    Returns
    -------
    scores:
        float32 per row (NaN where ``codes == -1`` or the row is not finite).
    finite:
        bool per row: the feature row is finite (non-finite rows never enter a task sum).
    """
    n, d = int(train.shape[0]), int(train.shape[1])
    codes = np.asarray(codes, dtype=np.int64)
    scores = np.full(n, np.nan, dtype=np.float32)
    if form == "gram":
        import torch

        if rows is None:
            raise SelectionError("score_form=gram needs the task rows")
        finite = np.ones(n, dtype=bool)
        for r in rows:
            if r.size == 0:
                continue
            g = np.asarray(train[r], dtype=np.float32)
            fin = np.isfinite(g).all(axis=1)
            finite[r] = fin
            gn = torch.from_numpy(_normalise_rows(g)[0])
            if r.size > GRAM_BLOCK_THRESHOLD:
                parts = [torch.mean(gn[i : i + GRAM_BLOCK_ROWS] @ gn.T, dim=1) for i in range(0, r.size, GRAM_BLOCK_ROWS)]
                s = torch.cat(parts)
            else:
                s = torch.mean(gn @ gn.T, dim=1)
            scores[r] = s.numpy()
        return scores, finite
    if form != "centroid":
        raise SelectionError(f"score_form={form!r}: choose centroid or gram")
    chunk = block_rows or chunk_rows_for(d)
    if fused_half(train):
        return _centroid_scores_fused(train, codes, n_tasks, chunk, workers)
    # Both passes stream cache-sized chunks (iter_row_blocks converts each into one reused float32 buffer) and
    # use each chunk while it is in cache, on one torch thread (torch_threads: small products, see its note).
    import torch

    # Pass 1: per task, the sum of its unit rows, Σ_j x_j / max(‖x_j‖, eps): each chunk's rows are scaled by
    # their inverse norms and added to their task's row (index_add_, float32 within the chunk), the chunk sums
    # accumulated over chunks in float64. Row norms are kept (n floats) for pass 2.
    nparts = len(row_parts(n, chunk))
    # per fixed row part (stream_parts): its own float64 task sums and float32 scratch, so workers never share
    # an accumulator and the parts' sums are added in one fixed order, whatever the number of workers
    part_sums = [torch.zeros((n_tasks, d), dtype=torch.float64) for _ in range(nparts)]
    part_acc = [torch.zeros((n_tasks + 1, d), dtype=torch.float32) for _ in range(nparts)]  # row n_tasks: no task
    part_scaled = [torch.empty((min(chunk, max(n, 1)), d), dtype=torch.float32) for _ in range(nparts)]
    # per row, the row of `acc` it is added to: its task, or n_tasks for rows of no task (and, per chunk below,
    # non-finite rows: their NaN lands in that discarded row, never in a task sum)
    dest = torch.from_numpy(np.where(codes >= 0, codes, n_tasks))
    nrm_all = torch.empty(n, dtype=torch.float32)
    inv_all = torch.empty(n, dtype=torch.float32)

    def task_sums(part: int, a: int, b: int, block: np.ndarray) -> None:
        x = tensor_view(block)
        nrm = torch.linalg.vector_norm(x, 2, dim=1, out=nrm_all[a:b])
        inv = torch.reciprocal(torch.clamp_min(nrm, NORMALIZE_EPS), out=inv_all[a:b])
        # scale in place when the block is iter_row_blocks's own buffer, else into a scratch one
        sc = x if block.flags.writeable and not np.may_share_memory(block, train) else part_scaled[part][: b - a]
        torch.mul(x, inv[:, None], out=sc)
        acc = part_acc[part]
        acc.zero_()
        acc.index_add_(0, torch.where(torch.isfinite(nrm), dest[a:b], n_tasks), sc)
        part_sums[part] += acc[:n_tasks]

    with torch_threads(1):
        stream_parts(train, chunk, np.float32, task_sums, workers=workers, desc="TIVE: task sums")
        sums = part_sums[0]
        for extra in part_sums[1:]:
            sums += extra
        finite = np.isfinite(nrm_all.numpy())
        inv_norm = inv_all.numpy()
        inv_norm[~finite] = 0.0
        counts = np.bincount(codes[(codes >= 0) & finite], minlength=n_tasks)
        # centroid c_t = (1/n_t) Σ_j x̂_j, so s_i = x̂_i · c_t = (x_i · c_t) / ‖x_i‖
        centroids = (sums.numpy() / np.maximum(counts, 1)[:, None]).astype(np.float32)
        ct = torch.from_numpy(np.ascontiguousarray(pad_columns(centroids)))  # (T, d), zero rows up to 16
        part_prod = [torch.empty((min(chunk, max(n, 1)), ct.shape[0]), dtype=torch.float32) for _ in range(nparts)]
        col = torch.from_numpy(np.maximum(codes, 0)[:, None])  # the column of each row's own task
        own = torch.empty((n, 1), dtype=torch.float32)

        def instance_values(part: int, a: int, b: int, block: np.ndarray) -> None:
            p = part_prod[part][: b - a]
            torch.mm(tensor_view(block), ct.T, out=p)  # (rows, T) float32
            torch.gather(p, 1, col[a:b], out=own[a:b])

        # pass 2, last chunk first: the rows read last in pass 1 are the likeliest to be still in the page cache.
        # A GEMM's output row depends on its input row only, so non-finite rows spoil nothing but their own.
        take = (codes >= 0) & finite
        stream_parts(train if take.any() else train[:0], chunk, np.float32, instance_values, workers=workers,
                     desc="TIVE: instance values", reverse=True)
    scores[take] = (own.numpy()[take, 0].astype(np.float64) * inv_norm[take]).astype(np.float32)
    return scores, finite


def _centroid_scores_fused(train: np.ndarray, codes: np.ndarray, n_tasks: int, chunk: int,
                           workers: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The centroid form over float16 rows with the fused kernels (:mod:`vlselect.select.kernels`): pass 1
    reads each row once for its norm and its unit row's share of its task sum (float32 within a chunk, float64
    across chunks, per fixed row part, the parts added in a fixed order), pass 2 once more for the inner product with
    its own task's centroid only (not with every centroid). Same values as the torch path to float32 rounding."""
    from vlselect.select import kernels

    n, d = int(train.shape[0]), int(train.shape[1])
    kernels.warm("half_rows_task_sums", "half_rows_own_dots")
    nparts = len(row_parts(n, chunk))
    part_sums = [np.zeros((n_tasks, d), dtype=np.float64) for _ in range(nparts)]
    part_acc = [np.empty((n_tasks, d), dtype=np.float32) for _ in range(nparts)]
    dest = np.ascontiguousarray(codes, dtype=np.int64)  # -1 (no task) is skipped by the kernel
    nrm = np.empty(n, dtype=np.float32)

    def task_sums(part: int, a: int, b: int, block: np.ndarray) -> None:
        kernels.half_rows_task_sums(kernels.half_view(block), dest[a:b], part_sums[part], nrm[a:b], part_acc[part])

    stream_parts(train, chunk, np.float16, task_sums, workers=workers, desc="TIVE: task sums")
    sums = part_sums[0]
    for extra in part_sums[1:]:
        sums += extra
    finite = np.isfinite(nrm)
    inv_norm = (np.float32(1.0) / np.maximum(nrm, np.float32(NORMALIZE_EPS))).astype(np.float32)
    inv_norm[~finite] = 0.0
    counts = np.bincount(codes[(codes >= 0) & finite], minlength=n_tasks)
    # centroid c_t = (1/n_t) Σ_j x̂_j, so s_i = x̂_i · c_t = (x_i · c_t) / ‖x_i‖
    centroids = np.ascontiguousarray((sums / np.maximum(counts, 1)[:, None]).astype(np.float32))
    take = (codes >= 0) & finite
    own = np.zeros(n, dtype=np.float32)
    code_rows = np.ascontiguousarray(np.maximum(codes, 0), dtype=np.int64)

    def instance_values(part: int, a: int, b: int, block: np.ndarray) -> None:
        kernels.half_rows_own_dots(kernels.half_view(block), code_rows[a:b], take[a:b], centroids, own[a:b])

    # pass 2, last chunk first: the rows read last in pass 1 are the likeliest to be still in the page cache
    stream_parts(train if take.any() else train[:0], chunk, np.float16, instance_values, workers=workers,
                 desc="TIVE: instance values", reverse=True)
    scores = np.full(n, np.nan, dtype=np.float32)
    scores[take] = (own[take].astype(np.float64) * inv_norm[take]).astype(np.float32)
    return scores, finite


def tive_instance_weights(scores: np.ndarray, q: float) -> np.ndarray:
    """Sampling probabilities of one task: ``softmax(q · s)`` in float32 (torch), then ``w / w.sum()`` in NumPy
    float32 (spec §5.4), exactly the vector the official script passes to ``np.random.choice``."""
    import torch

    w = torch.softmax(q * torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32)), dim=0).numpy()
    return w / w.sum()


# ------------------------------------------------------------------------------------------ allocation


def tive_quotas(tt: TiveTasks, budget_rows: float) -> np.ndarray:
    """The official float quotas ``((S_t / n_t) / V) · B``, evaluated in exactly that order (spec §5.2)."""
    return np.asarray(
        [((s / r.size) / tt.total_value) * budget_rows if r.size else 0.0 for s, r in zip(tt.norm_sums, tt.rows)],
        dtype=np.float64,
    )


def tive_official_counts(quotas: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whole-task copies and sampled rows per task as the official code truncates them (spec §5.5)."""
    copies = np.zeros(len(quotas), dtype=np.int64)
    sampled = np.zeros(len(quotas), dtype=np.int64)
    for t, (q, n) in enumerate(zip(quotas.tolist(), sizes.tolist())):
        if n == 0:
            continue
        if q < n:
            sampled[t] = int(q)
        else:
            copies[t] = int(q // n)
            sampled[t] = int(q % n)
    return copies, sampled


def tive_fixed_counts(values: np.ndarray, sizes: np.ndarray, total: int) -> np.ndarray:
    """The default allocation: quotas ∝ task value, capped at the task size with the excess redistributed
    (water-filling), rounded by largest remainder so they add up to ``min(total, Σ n_t)`` exactly.

    Fixes spec §8 item 4 (duplicates) and the truncation shortfall of §5.5. Ties in the remainders go to the
    earlier task in processing order.
    """
    values = np.asarray(values, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(min(total, int(sizes.sum())))
    quota = np.zeros(len(values), dtype=np.float64)
    free = sizes > 0
    remaining = float(total)
    while True:
        if not free.any() or remaining <= 0:
            break
        weight = np.where(free, np.maximum(values, 0.0), 0.0)
        if weight.sum() <= 0:  # no value left among free tasks: fall back to their sizes
            weight = np.where(free, sizes.astype(np.float64), 0.0)
        share = weight / weight.sum() * remaining
        over = free & (share >= sizes)
        if not over.any():
            quota[free] = share[free]
            break
        quota[over] = sizes[over]
        remaining -= float(sizes[over].sum())
        free &= ~over
    counts = np.minimum(np.floor(quota + 1e-9).astype(np.int64), sizes)
    short = total - int(counts.sum())
    if short > 0:
        room = counts < sizes
        frac = np.where(room, quota - counts, -np.inf)
        order = np.lexsort((np.arange(len(frac)), -frac))
        for t in order[:short]:
            counts[t] += 1
    return counts


# ------------------------------------------------------------------------------------------ the method


def _choice(rng: np.random.RandomState, rows: np.ndarray, k: int, w: np.ndarray, scores: np.ndarray, strict: bool):
    """One legacy ``RandomState.choice(rows, size=k, replace=False, p=w)`` call (always made, also for k = 0)."""
    nnz = int(np.count_nonzero(w > 0))
    if nnz >= k:
        return rng.choice(rows, size=k, replace=False, p=w)
    if strict:
        raise SelectionError(
            f"tive: only {nnz} of the {rows.size} rows of a task keep a non-zero weight at this q, fewer than the "
            f"{k} to draw; the official np.random.choice raises here. Lower q, or drop --strict-official (rows "
            "whose weight underflows are then taken last, by instance value)"
        )
    first = rng.choice(rows, size=nnz, replace=False, p=w)
    zero = np.flatnonzero(w <= 0)
    zero = zero[np.lexsort((zero, -scores[zero].astype(np.float64)))][: k - nnz]
    return np.concatenate([first, rows[zero]])


def _warn_excluded(rows: np.ndarray) -> None:
    import warnings

    warnings.warn(f"tive: {rows.size} pool row(s) with NaN or inf in the train input excluded; first "
                  f"{_fmt_rows(rows)}", RuntimeWarning, stacklevel=3)


def _fmt_rows(idx: np.ndarray, limit: int = 10) -> str:
    head = ", ".join(str(int(i)) for i in idx[:limit])
    return head + (f", … ({idx.size} in all)" if idx.size > limit else "")


@register_method(
    "tive",
    roles=[
        Role("train", "projected per-sample gradients, one row per pool row (official: 8192-d, fast_jl)",
             checks_finite=True),
        Role("norms", "per-sample L2 norm of the unprojected LoRA gradient, one value per pool row"),
    ],
    params=[
        Param("q", 0.001, float, "inverse temperature of the within-task softmax over instance values", gt=0),
        Param(
            "numpy_seed",
            None,
            int,
            "seed of NumPy's legacy RandomState used for the draws (default: --seed, or --param seed=S)",
            ge=0,
            lt=2**32,
        ),
        Param("excluded_task", EXCLUDED_TASK, str, "task label(s) left out, comma-separated; 'none' for none"),
        Param(
            "score_form",
            "centroid",
            str,
            "instance values by the exact O(n·d) centroid form, or 'gram' (official float32 op order, O(n_t²·d))",
            choices=("centroid", "gram"),
        ),
    ],
    summary="TIVE: task quotas from mean gradient norms, seeded softmax sampling by within-task gradient agreement",
    needs_tasks=True,
    reference="Liu et al., Less is More: High-value Data Selection for Visual Instruction Tuning (arXiv 2403.09559)",
)
def select_tive(
    inputs: dict[str, np.ndarray],
    tasks: np.ndarray | None,
    budgets: list[Budget],
    *,
    seed: int = 0,
    strict_official: bool = False,
    q: float = 0.001,
    numpy_seed: int | None = None,
    excluded_task: str = EXCLUDED_TASK,
    score_form: str = "centroid",
) -> list[Selection]:
    """Select with TIVE at one or more budgets (spec §5.7; bugs fixed by default as the module says).

    Parameters
    ----------
    inputs:
        ``train`` (n, d) projected gradients and ``norms`` (n,) gradient norms.
    tasks:
        One task label per row (the official ``dataset`` field).
    budgets:
        Resolved budgets; a fraction is ``p`` of the whole pool, excluded rows included (spec §5.2).
    seed, numpy_seed:
        The legacy ``RandomState`` seed (``numpy_seed``, alias ``seed`` in ``--param``, wins over ``seed``).
    strict_official:
        Reproduce the official output exactly (whole-task copies, truncation shortfall, crash on NaN rows).
    q, excluded_task, score_form:
        See the parameter table (``vlselect select --list``).

    Returns
    -------
    list of Selection
        ``indices`` grouped by task in processing order; inside a task the draws in draw order (strict: the
        whole copies first). ``scores`` are the instance values (NaN for rows that take no part).
        ``info["per_task"]`` gives each task's n, value, quota, copies, sampled, rows_out and offset.

    References
    ----------
    specs/tive.md §5 (selection), §8 (bugs), §10 (compat mode).

    Examples
    --------
    >>> from vlselect.select import run_method
    >>> sel = run_method("tive", {"train": X, "norms": g}, 0.15, tasks=labels, params={"seed": 1234})  # doctest: +SKIP
    """
    if tasks is None:
        raise SelectionError("tive needs task labels; pass --pool FILE or --tasks TASKS.json")
    train = inputs["train"]
    if train.ndim != 2:
        raise SelectionError(f"tive: the train input must be a 2-D array (rows × features), got shape {train.shape}")
    n = int(train.shape[0])
    norms = np.asarray(inputs["norms"], dtype=np.float64).reshape(-1)
    if norms.shape[0] != n:
        raise SelectionError(
            f"tive: {norms.shape[0]} gradient norms for {n} feature rows; the norms input needs one value per pool row"
        )
    rng_seed = int(seed if numpy_seed is None else numpy_seed)
    excluded = _excluded_set(excluded_task)
    labels = factorize_labels(tasks)  # once for every use below
    if labels[1].shape[0] != n:
        raise SelectionError(f"tive: {labels[1].shape[0]} task labels for {n} feature rows; give one per pool row")
    in_scope = (~np.isin(labels[1], [i for i, u in enumerate(labels[0]) if u in excluded]) if excluded
                else np.ones(n, dtype=bool))

    bad_norm = ~np.isfinite(norms) | (norms < 0)
    # Pass 0 (gram form only) or pass 1 (centroid form) tells which feature rows are finite.
    block_rows = block_rows_for(int(train.shape[1]))
    if score_form == "gram":
        finite = _finite_rows(train, block_rows)
    else:
        finite = None
    if strict_official:
        bad = bad_norm & in_scope
        if finite is not None:
            bad |= ~finite & in_scope
        if bad.any():
            raise SelectionError(
                f"tive: rows {_fmt_rows(np.flatnonzero(bad))} have a NaN/inf/negative gradient norm or feature; "
                "the official code crashes on them (spec §8 item 11). Drop --strict-official to exclude them, or fix "
                "those rows"
            )
    valid = ~bad_norm if finite is None else (~bad_norm & finite)
    tt = tive_tasks(norms, labels, excluded_task=excluded, valid=valid)
    scores, finite_rows = tive_instance_scores(
        train, tt.codes, len(tt.names), form=score_form, rows=tt.rows
    )
    found_in_pass = 0  # NaN/inf feature rows found in this method's own pass (run_method did not scan them)
    if finite is None and not finite_rows[in_scope].all():
        bad_feat = np.flatnonzero(~finite_rows & in_scope)
        found_in_pass = int(bad_feat.size)
        if strict_official:
            raise SelectionError(
                f"tive: feature rows {_fmt_rows(bad_feat)} are not finite; the official code turns their whole task's "
                "weights into NaN and crashes (spec §8 item 11). Drop --strict-official to exclude them, or fix those "
                "rows"
            )
        # Rebuild the task table without them. The scores stand: pass 1 already left non-finite rows out of every
        # task sum and count and pass 2 gave them NaN, so scoring again (two more passes) would change nothing.
        tt = tive_tasks(norms, labels, excluded_task=excluded, valid=~bad_norm & finite_rows)
        _warn_excluded(bad_feat)
    invalid = np.flatnonzero(in_scope & (tt.codes < 0))
    sizes = tt.counts
    weights = [tive_instance_weights(scores[r], q) if r.size else np.zeros(0, np.float32) for r in tt.rows]

    out: list[Selection] = []
    for budget in budgets:
        if found_in_pass and budget.given_as_fraction:  # as run_method's rule: a fraction of the selectable rows
            budget = Budget(count=int(budget.fraction * (budget.n - found_in_pass)), fraction=budget.fraction,
                            n=budget.n, given=budget.given)
        budget_rows = (budget.fraction * (budget.n - found_in_pass) if budget.given_as_fraction
                       else float(budget.count))
        quotas = tive_quotas(tt, budget_rows) if tt.total_value > 0 else np.zeros(len(tt.names))
        if strict_official:
            copies, sampled = tive_official_counts(quotas, sizes)
        else:
            copies = np.zeros(len(tt.names), dtype=np.int64)
            sampled = tive_fixed_counts(tt.values, sizes, budget.count)
        rng = np.random.RandomState(rng_seed)
        parts: list[np.ndarray] = []
        per_task: dict[str, dict[str, Any]] = {}
        offset = 0
        for t, name in enumerate(tt.names):
            r = tt.rows[t]
            for _ in range(int(copies[t])):
                parts.append(r)
            drawn = _choice(rng, r, int(sampled[t]), weights[t], scores[r], strict_official) if r.size else r[:0]
            parts.append(np.asarray(drawn, dtype=np.int64))
            rows_out = int(copies[t]) * int(r.size) + int(sampled[t])
            per_task[name] = {
                "n": int(r.size),
                "value": float(tt.values[t]),
                "norm_sum": float(tt.norm_sums[t]),
                "quota": float(quotas[t]),
                "copies": int(copies[t]),
                "sampled": int(sampled[t]),
                "rows_out": rows_out,
                "offset": offset,
            }
            offset += rows_out
        indices = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        info: dict[str, Any] = {
            "task_order": list(tt.names),
            "per_task": per_task,
            "total_task_value": float(tt.total_value),
            "budget_rows": float(budget_rows),
            "excluded_task": sorted(excluded),
            "excluded_rows": int((~in_scope).sum()),
            "invalid_rows": {"count": int(invalid.size), "first": [int(i) for i in invalid[:20]]},
            "n_unique": int(np.unique(indices).size),
            "numpy_seed": rng_seed,
            "score_form": score_form,
        }
        if strict_official:
            info["official_shortfall"] = int(round(budget_rows)) - int(indices.size)
        elif indices.size < budget.count:
            info["note"] = (
                f"only {indices.size} eligible rows for a budget of {budget.count}: every eligible row is selected"
            )
        out.append(
            Selection(
                indices=indices,
                scores=scores.astype(np.float64),
                method="tive",
                budget=budget,
                params={"q": q, "numpy_seed": rng_seed, "excluded_task": excluded_task, "score_form": score_form},
                seed=rng_seed,
                strict_official=strict_official,
                info=info,
            )
        )
    return out
