"""COINCIDE: concept-skill transferability-based selection (Lee, Li, Hwang, EMNLP 2024), exact to the official code.

Stages (specs/coincide.md §2-§5):

1. spherical faiss k-means of the feature rows (:func:`vlselect.cluster.kmeans`; CPU, or GPU when faiss has one);
2. per-cluster transferability from the text halves of the centroids (:func:`cluster_transferability`, §3.1);
3. per-cluster density, the mean float64 Gaussian kernel over the members (:func:`cluster_density`, §3.2);
4. score ``T_c / d_c``, temperature softmax and the sequential integer allocation with carry-over
   (:func:`allocate_budget`, §3.3-§3.4);
5. greedy MMD inside each cluster in the O(n)-per-step incremental form (§4.3), clusters in processing order (§5).

``strict_official=True`` reproduces the official output (and every intermediate) exactly, including its bugs.
The default differs only where specs/coincide.md §8 documents an official bug:

* **Q9 budget shortfall**: when the last clusters are capped, the official total comes up short; the default
  runs further allocation rounds over the clusters that still have unselected members (same rule: sequential
  ``round(remaining * p)`` with carry-over, probabilities renormalised over those clusters), continuing each
  cluster's greedy-MMD sequence, until exactly the budget is selected.
* **Q10 empty clusters**: the official prune step crashes (IndexError / shape mismatch) when a cluster id has no
  member; the default leaves empty clusters out of density, softmax and allocation. Strict mode raises a
  :class:`SelectionError` that says so.
* **§3.1 division by zero**: a cluster whose centroid is within the 0.9 cut of every other centroid (or K = 1)
  gets ``0/0``; the default sets its transferability to 0. Strict mode raises.
* **§3.3 overflow**: the softmax has no max-subtraction; with un-normalised features ``exp`` overflows to inf
  and the budgets become NaN. The default then (and only then) uses the max-subtracted softmax. Strict raises.
* **§4.3 / §8 ties**: greedy-MMD candidates that are mathematically tied (a 2-member cluster asked for one row,
  exact duplicate rows) are decided in the official code by last-bit rounding of its torch kernel, which depends
  on the machine and thread count. The default picks the lowest row index among candidates within
  :data:`TIE_RTOL` of the minimum (deterministic everywhere); strict mode re-evaluates exactly those steps the
  official way with torch (imported only then), which matches the official CPU run on the same PyTorch build.

Seeds: the k-means seed is the ``kmeans_seed`` parameter (``--param seed=S``, the official script's name) when
given; otherwise ``1234 + seed`` with the global ``--seed`` (default 0 → the official 1234). Nothing else is
random.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from vlselect.errors import SelectionError
from vlselect.select.base import Budget, Param, Role, Selection, register_method

__all__ = [
    "CoincideStages",
    "allocate_budget",
    "cluster_density",
    "cluster_transferability",
    "coincide",
    "coincide_select",
    "coincide_stages",
    "gaussian_kernel",
    "GreedyMMD",
]

#: Clusters up to this size keep their whole float64 kernel between the density pass and the greedy pass
#: (n*n*8 bytes each, within :data:`KERNEL_CACHE_BYTES` in all); larger ones are recomputed in row blocks.
FULL_KERNEL_MAX = 4096
KERNEL_CACHE_BYTES = 512 * 2**20
_BLOCK_BYTES = 128 * 2**20


# ------------------------------------------------------------------------------------------------ helpers


def _progress(total: int, description: str):
    """The shared progress display on stderr (a transient bar on a terminal, periodic lines otherwise)."""
    from vlselect.progress import progress_bar

    return progress_bar("coincide", unit="clusters", transient=True), description.removeprefix("coincide: "), total


_BLAS: list = []


def _numpy_openblas():
    """(get, set) for the thread count of the OpenBLAS that NumPy loaded, or None (not found / not Linux)."""
    if not _BLAS:
        found = None
        try:
            with open("/proc/self/maps") as fh:
                paths = sorted({line.split()[-1] for line in fh if "openblas" in line.lower() and "/" in line})
            for path in paths:
                if "numpy" not in path:
                    continue
                lib = ctypes.CDLL(path)
                for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", "_64_"), ("openblas", "64_"),
                                       ("openblas", "")):
                    get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                    set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                    if get is not None and set_ is not None:
                        get.restype = ctypes.c_int
                        set_.argtypes = [ctypes.c_int]
                        found = (get, set_)
                        break
                if found:
                    break
        except (OSError, AttributeError):  # pragma: no cover - other platforms
            found = None
        _BLAS.append(found)
    return _BLAS[0]


@contextlib.contextmanager
def _blas_threads(n: int):
    """Run NumPy's BLAS with ``n`` threads inside the block (restored after).

    Thousands of small per-cluster float64 products run several times faster on one thread than with OpenBLAS's
    thread pool, above all on a loaded machine; the results are the same (OpenBLAS splits the output, not the
    reduction, between threads).
    """
    lib = _numpy_openblas()
    if lib is None:
        yield
        return
    old = int(lib[0]())
    lib[1](int(n))
    try:
        yield
    finally:
        lib[1](old)


#: Clusters below this size run their kernel GEMMs on one thread (see :func:`_blas_threads`); the greedy pass
#: (matrix-vector products) always runs on one thread.
SINGLE_THREAD_BELOW = 4096
#: In the greedy pass, a cluster whose kernel was not kept from the density pass rebuilds it whole (one GEMM,
#: dropped afterwards) when it needs more than n / 10 picks and the kernel fits in this many bytes; otherwise it
#: computes one kernel row per pick.
GREEDY_KERNEL_BYTES = 1024 * 2**20


def _threads_for(n: int):
    return _blas_threads(1) if n < SINGLE_THREAD_BELOW else contextlib.nullcontext()


def _layout(d: int, num_layers: int, hidden_size: int) -> None:
    if num_layers < 1 or hidden_size < 1 or 2 * num_layers * hidden_size != d:
        raise SelectionError(
            f"coincide: feature rows are {d} wide, but num_layers={num_layers} x 2 x hidden_size={hidden_size} = "
            f"{2 * num_layers * hidden_size}; a row is, per layer, a vision half then a text half of hidden_size "
            f"each, so pass --param num_layers=L --param hidden_size=H with 2*L*H = {d}"
        )


def gaussian_kernel(x: np.ndarray, y: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """``exp(-(|x|^2 + |y|^2 - 2 x.y) / (2 sigma^2))`` in float64 with the norm expansion (spec §3.2).

    The official code evaluates exactly this expression (not a direct distance); the diagonal then comes out as
    ~1 with rounding noise.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xn = (x * x).sum(1)[:, None]
    yn = xn.reshape(1, -1) if y is x else (y * y).sum(1)[None, :]
    dist = xn + yn - 2.0 * (x @ y.T)
    return np.exp(-dist / (2 * sigma**2))


# ------------------------------------------------------------------------------------------ transferability


def cluster_transferability(
    centroids: np.ndarray,
    *,
    num_layers: int = 5,
    hidden_size: int = 2048,
    near_duplicate_cosine_cut: float = 0.9,
    knn_k: int | None = None,
    strict_official: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Per-cluster transferability ``T_c`` from the text halves of the centroids (spec §3.1).

    ``T_c`` is the mean cosine similarity (float32, as sklearn's ``cosine_similarity``) of centroid ``c``'s text
    half to every centroid whose similarity is ``<= near_duplicate_cosine_cut`` (the cut is strict and removes the
    diagonal), as float32 row sum / integer count → float64.

    Parameters
    ----------
    centroids : (K, 2 * num_layers * hidden_size) centroids; per layer a vision half then a text half.
    num_layers, hidden_size : the row layout (official: 5 and 2048).
    near_duplicate_cosine_cut : similarities above this are excluded (official 0.9, hard-coded there).
    knn_k : also return the side output of the official script (its ``--k``, default 4): for each cluster the
        ``knn_k + 1`` most similar centroids (itself included) and their similarities. Unused by the selection.
    strict_official : when a row has nothing at or below the cut, the official code divides by zero; strict
        raises, the default sets ``T_c = 0``.

    Returns
    -------
    transfer : (K,) float64
    knn_indices, knn_similarity : (K, knn_k + 1) int64 / float32, or None when ``knn_k`` is None.
    """
    c = np.asarray(centroids, dtype=np.float32)
    k_count, d = c.shape
    _layout(d, num_layers, hidden_size)
    txt = np.ascontiguousarray(c.reshape(k_count, num_layers, 2 * hidden_size)[:, :, hidden_size:]).reshape(
        k_count, num_layers * hidden_size
    )
    # sklearn.metrics.pairwise.cosine_similarity(X, X) on float32: einsum row norms, in-place divide, X @ X.T.
    norms = np.sqrt(np.einsum("ij,ij->i", txt, txt))
    norms[norms == 0.0] = 1.0
    txt /= norms[:, np.newaxis]
    cos = txt @ txt.T
    knn_idx = knn_sim = None
    if knn_k is not None:
        knn_idx = np.argsort(cos, axis=-1)[:, ::-1][:, : int(knn_k) + 1].astype(np.int64)
        knn_sim = cos[np.arange(k_count)[:, None], knn_idx]
    mask = cos > near_duplicate_cosine_cut
    cos[mask] = 0
    counts = (~mask).sum(axis=-1)
    if (counts == 0).any():
        bad = np.flatnonzero(counts == 0)
        if strict_official:
            raise SelectionError(
                f"coincide: cluster(s) {bad[:10].tolist()} have every centroid (itself included) above "
                f"near_duplicate_cosine_cut={near_duplicate_cosine_cut}, so the official transferability divides "
                f"by zero; run without --strict-official (their transferability becomes 0) or use fewer clusters"
            )
        counts = counts.copy()
        counts[bad] = 1
    transfer = cos.sum(axis=-1) / counts
    return np.asarray(transfer, dtype=np.float64), knn_idx, knn_sim


# ---------------------------------------------------------------------------------------------- density


@dataclass
class _ClusterKernel:
    """What the greedy pass needs from a cluster's kernel: column sums, diagonal, and the kernel if cached."""

    colsum: np.ndarray
    diag: np.ndarray
    kernel: np.ndarray | None = None


def _members(assignment: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by cluster, ascending row index inside each: (order, offsets) with members of c at
    ``order[offsets[c]:offsets[c+1]]``."""
    order = np.argsort(assignment, kind="stable").astype(np.int64)
    sizes = np.bincount(assignment, minlength=n_clusters)
    offsets = np.zeros(n_clusters + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return order, offsets


def _row_sq(x64: np.ndarray, block: int = 256) -> np.ndarray:
    """``(x64 * x64).sum(1)`` in row blocks: the same bits (each row's sum is its own), without a temporary the
    size of the cluster's rows (2 GB of float64 for a 12,000-row cluster at 20,480 columns)."""
    out = np.empty(x64.shape[0], dtype=np.float64)
    for s in range(0, x64.shape[0], block):
        part = x64[s : s + block]
        out[s : s + block] = (part * part).sum(1)
    return out


def _kernel_stats(x64: np.ndarray, sigma: float, keep: bool) -> tuple[float, _ClusterKernel]:
    """Kernel mean (density) plus column sums and diagonal of one cluster's Gaussian kernel, in row blocks."""
    n = x64.shape[0]
    with _threads_for(n):
        return _kernel_stats_impl(x64, sigma, keep)


def _kernel_stats_impl(x64: np.ndarray, sigma: float, keep: bool) -> tuple[float, _ClusterKernel]:
    n = x64.shape[0]
    sq = _row_sq(x64)
    if keep or n * n * 8 <= _BLOCK_BYTES:
        k = np.exp(-(sq[:, None] + sq[None, :] - 2.0 * (x64 @ x64.T)) / (2 * sigma**2))
        return float(k.mean()), _ClusterKernel(k.sum(0), np.diagonal(k).copy(), k if keep else None)
    colsum = np.zeros(n, dtype=np.float64)
    diag = np.empty(n, dtype=np.float64)
    block = max(1, _BLOCK_BYTES // (8 * n))
    for s in range(0, n, block):
        e = min(n, s + block)
        kb = np.exp(-(sq[s:e, None] + sq[None, :] - 2.0 * (x64[s:e] @ x64.T)) / (2 * sigma**2))
        colsum += kb.sum(0)
        diag[s:e] = kb[np.arange(e - s), np.arange(s, e)]
    return float(colsum.sum() / (n * n)), _ClusterKernel(colsum, diag)


def cluster_density(
    features: np.ndarray,
    assignment: np.ndarray,
    n_clusters: int,
    *,
    sigma: float = 1.0,
) -> np.ndarray:
    """Per-cluster density ``d_c``: mean of the float64 Gaussian kernel over all member pairs (spec §3.2).

    Parameters
    ----------
    features : (N, D) rows (cast to float64 per cluster, as the official code does).
    assignment : (N,) cluster id of each row, in ``[0, n_clusters)``.
    n_clusters : K.
    sigma : the kernel width (the official ``--gamma``, default 1.0).

    Returns
    -------
    (K,) float64; NaN for an empty cluster; 1 (up to rounding) for a singleton.
    """
    assignment = np.asarray(assignment, dtype=np.int64)
    order, offsets = _members(assignment, n_clusters)
    out = np.full(n_clusters, np.nan)
    for c in range(n_clusters):
        idx = order[offsets[c] : offsets[c + 1]]
        if idx.size:
            out[c] = _kernel_stats(np.asarray(features[idx], dtype=np.float64), sigma, keep=False)[0]
    return out


# ------------------------------------------------------------------------------------------- allocation


@dataclass
class Allocation:
    """The per-cluster budget of one pass (spec §3.4), rows in processing order."""

    order: np.ndarray  #: cluster ids in processing order
    step_ratio: np.ndarray  #: probability used at each position
    remaining: np.ndarray  #: budget left before each position
    asked: np.ndarray  #: round(remaining * step_ratio), half to even
    taken: np.ndarray  #: rows taken (size if asked > size else asked)

    def table(self, sizes: np.ndarray) -> np.ndarray:
        """(K, 5) int64 rows (cluster, size, remaining, asked, taken): the packs' ``budget_table``."""
        return np.stack([self.order, sizes[self.order], self.remaining, self.asked, self.taken], axis=1).astype(
            np.int64
        )


def _softmax(scores: np.ndarray, temp: float, strict: bool) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(scores / temp)
        p = e / np.sum(e)
    if not np.all(np.isfinite(p)):
        if strict:
            raise SelectionError(
                f"coincide: exp(score / temp) overflows (largest score / temp = {np.max(scores) / temp:.4g}); the "
                f"official softmax has no max-subtraction, so its budgets are NaN. Use unit-norm feature rows, a "
                f"larger temp, or run without --strict-official"
            )
        e = np.exp((scores - np.max(scores)) / temp)
        p = e / np.sum(e)
    return p


def allocate_budget(
    cluster_score: np.ndarray,
    sizes: np.ndarray,
    target: int,
    *,
    temp: float = 0.1,
    strict_official: bool = True,
) -> Allocation:
    """The official sequential integer allocation with carry-over (spec §3.3-§3.4), one pass.

    ``p = softmax(score / temp)`` (no max-subtraction) in cluster order; clusters are processed in the reverse of
    NumPy's default argsort of ``p``; at each position the cluster is asked ``round(remaining * p_q)`` (Python
    round, half to even), takes all of its members when asked for more than it has, and the probabilities of
    the clusters not yet processed are recomputed as a softmax over their scores. The total can fall short of
    ``target`` when the last clusters are capped (official bug Q9; :func:`coincide` fixes it by default).

    Parameters
    ----------
    cluster_score : (K,) float64 ``T_c / d_c``.
    sizes : (K,) members per cluster.
    target : the budget ``R = int(fraction * N)``.
    temp : the softmax temperature (official ``--temp``, 0.1).
    strict_official : raise, as the official code would fail, instead of falling back to the max-subtracted
        softmax when ``exp`` overflows.

    Returns
    -------
    Allocation
    """
    score = np.asarray(cluster_score, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    ratio = _softmax(score, temp, strict_official)
    order = np.argsort(ratio)[::-1]
    ratio = ratio[order]
    score_sorted = score[order]
    k = order.size
    remaining = np.empty(k, dtype=np.int64)
    asked = np.empty(k, dtype=np.int64)
    taken = np.empty(k, dtype=np.int64)
    rem = int(target)
    for q in range(k):
        remaining[q] = rem
        m = round(rem * ratio[q])
        asked[q] = m
        t = int(sizes[order[q]]) if m > sizes[order[q]] else m
        taken[q] = t
        rem -= t
        if q + 1 < k:
            ratio[q + 1 :] = _softmax(score_sorted[q + 1 :], temp, strict_official)
    return Allocation(order.astype(np.int64), ratio, remaining, asked, taken)


# ------------------------------------------------------------------------------------------- greedy MMD


#: Candidates whose MMD values lie within this relative distance of the minimum are treated as tied (rounding
#: noise is ~1e-16; mathematically distinct values that close do not occur in practice).
TIE_RTOL = 1e-12
#: Largest gathered tensor (bytes) the official tie evaluation builds over all candidates at once.
OFFICIAL_GATHER_BYTES = 256 * 2**20


class GreedyMMD:
    """Greedy MMD prototype selection inside one cluster (spec §4), incremental O(n) per step (§4.3).

    At step ``t`` every unselected local index ``c`` gets
    ``value(c) = d + (A + r_c + K_cc) / (t+1)^2 - 2 (B + colsum_c) / (n (t+1))`` (the official MMD² of
    ``S + [c]``), and the index with the minimum value is appended. The sequence for ``m`` picks is a prefix of
    the one for ``m' > m``, so :meth:`extend` can be called again with a larger ``m`` (several budgets, the
    shortfall fix).

    Ties. Candidates that are mathematically tied (a 2-member cluster asked for 1, exact duplicate rows) differ
    only by rounding noise, which decides the official winner (spec §4.3, §8). ``ties="lowest"`` (the default
    mode) picks the lowest row index among candidates within :data:`TIE_RTOL` of the minimum: deterministic on
    every machine. ``ties="official"`` (strict mode) re-evaluates such a step exactly as the official code does
    (float64 torch kernel by the norm expansion, gathered ``K[:, S']`` / ``K[S', S']`` means, ``torch.argmin``),
    which reproduces the official CPU run on the same PyTorch build; torch is imported only when a tie occurs.

    Parameters
    ----------
    rows : callable returning the (n, D) float64 member rows in ascending row order (called lazily).
    stats : column sums and diagonal of the kernel (and the kernel itself when cached).
    density : the kernel mean ``d``.
    sigma : kernel width.
    ties : ``"lowest"`` or ``"official"``.
    """

    def __init__(self, rows, stats: _ClusterKernel, density: float, sigma: float, ties: str = "lowest") -> None:
        self._rows = rows
        self._x64: np.ndarray | None = None
        self._sq: np.ndarray | None = None
        self._official_kernel = None
        self.kernel = stats.kernel
        self.colsum = stats.colsum
        self.diag = stats.diag
        self.n = int(stats.colsum.shape[0])
        self.density = density
        self.sigma = sigma
        self.ties = ties
        self.picked: list[int] = []
        self.tie_steps = 0
        self.a = 0.0
        self.b = 0.0
        self.r = np.zeros(self.n, dtype=np.float64)
        self.taken = np.zeros(self.n, dtype=bool)

    @property
    def x64(self) -> np.ndarray:
        if self._x64 is None:
            self._x64 = np.asarray(self._rows(), dtype=np.float64)
            self._sq = _row_sq(self._x64)
        return self._x64

    def _row_and_col(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        if self.kernel is not None:  # x @ x.T is computed by syrk, so the kernel is exactly symmetric
            return self.kernel[c], self.kernel[c]
        x = self.x64
        row = np.exp(-(self._sq[c] + self._sq - 2.0 * (x @ x[c])) / (2 * self.sigma**2))
        return row, row

    def extend(self, m: int) -> list[int]:
        """Pick until ``m`` members are selected; returns all picks so far (local indices, pick order)."""
        m = min(int(m), self.n)
        todo = m - len(self.picked)
        if todo <= 0:
            return self.picked[:m]
        kept = self.kernel
        if kept is None and todo * 10 > self.n and self.n * self.n * 8 <= GREEDY_KERNEL_BYTES:
            x = self.x64
            with _threads_for(self.n):
                self.kernel = np.exp(-(self._sq[:, None] + self._sq[None, :] - 2.0 * (x @ x.T)) / (2 * self.sigma**2))
        with _blas_threads(1):
            self._extend(m)
        # the gathered rows and kernels are rebuilt (same bits) if a later budget extends this cluster
        self.kernel = kept
        self._x64 = self._sq = self._official_kernel = None
        return self.picked[:m]

    def _extend(self, m: int) -> None:
        n = self.n
        while len(self.picked) < m:
            t = len(self.picked)
            yy = (self.a + self.r + self.diag) / float((t + 1) ** 2)
            xy = (self.b + self.colsum) / float(n * (t + 1))
            value = self.density + yy - 2 * xy
            value[self.taken] = np.inf
            c = int(np.argmin(value))
            vmin = value[c]
            tied = np.flatnonzero(value <= vmin + TIE_RTOL * max(1.0, abs(vmin)))
            if tied.size > 1:
                self.tie_steps += 1
                c = self._official_pick(tied) if self.ties == "official" else int(tied[0])
            row, col = self._row_and_col(c)
            self.a += self.r[c] + self.diag[c]
            self.b += self.colsum[c]
            self.r += row
            self.r += col
            self.taken[c] = True
            self.picked.append(c)

    def _official_pick(self, tied: np.ndarray) -> int:
        """The official step (spec §4.2) evaluated with torch, as ``cluster_wise_prune.py`` does."""
        import torch

        # torch's own thread count is left alone: the kernel's last bits (which decide ties) depend on it, as they
        # do in the official run.
        if self._official_kernel is None:
            x = torch.from_numpy(np.ascontiguousarray(self.x64))
            x_norm = x.pow(2).sum(1).view(-1, 1)
            y_norm = x.pow(2).sum(1).view(1, -1)
            dist = x_norm + y_norm - 2.0 * torch.mm(x, torch.transpose(x, 0, 1))
            self._official_kernel = torch.exp(-dist / (2 * self.sigma**2))
        kmat = self._official_kernel
        n, t = self.n, len(self.picked)
        chosen = np.asarray(self.picked, dtype=np.int64)
        cand = np.setdiff1d(np.arange(n), chosen)
        if n * cand.size * (t + 1) * 8 > OFFICIAL_GATHER_BYTES:
            cand = np.asarray(tied, dtype=np.int64)  # too big to gather all: the tied ones, same arithmetic per column
        trial = torch.from_numpy(np.concatenate([np.tile(chosen, (cand.size, 1)), cand[:, None]], axis=1))
        kxy = kmat[:, trial].mean(dim=(0, 2))
        kyy = kmat[trial[:, :, None], trial[:, None, :]].mean(dim=(1, 2))
        mmd = kmat.mean() + kyy - 2 * kxy
        return int(cand[int(torch.argmin(mmd))])


# --------------------------------------------------------------------------------------------- stages


@dataclass
class CoincideStages:
    """Everything computed before the per-budget selection (one pass for all budgets).

    Per-cluster arrays are in cluster-id order; ``sizes[c] == 0`` marks an empty cluster (non-strict only).
    """

    assignment: np.ndarray
    centroids: np.ndarray
    assigned_centroid_ip: np.ndarray | None
    transferability: np.ndarray
    sizes: np.ndarray
    cluster_density: np.ndarray
    cluster_score: np.ndarray
    initial_ratio: np.ndarray
    knn_indices: np.ndarray | None = None
    knn_similarity: np.ndarray | None = None
    kmeans_objective: float = float("nan")
    kmeans_iterations: int = 0
    kmeans_seed: int = 1234
    kmeans_info: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    kernels: dict[int, _ClusterKernel] = field(default_factory=dict, repr=False)
    members_order: np.ndarray | None = field(default=None, repr=False)
    members_offsets: np.ndarray | None = field(default=None, repr=False)

    def members(self, c: int) -> np.ndarray:
        """Row indices of cluster ``c``, ascending."""
        return self.members_order[self.members_offsets[c] : self.members_offsets[c + 1]]


def _cluster_rows(features: np.ndarray, idx: np.ndarray, block: int = 64) -> np.ndarray:
    """One cluster's rows as float64. From a memmap they are read ``block`` rows at a time and each block's pages
    (with the kernel's read-ahead around them) are dropped from the resident set right after: scattered rows
    read through a memmap otherwise map far more than themselves (47 MB of rows left 500 MB mapped)."""
    if not isinstance(features, np.memmap):
        return np.asarray(features[idx], dtype=np.float64)
    from vlselect.cluster import _release_rows

    n = int(features.shape[0])
    out = np.empty((idx.size, features.shape[1]), dtype=np.float64)
    for s in range(0, idx.size, block):
        part = idx[s : s + block]
        out[s : s + part.size] = features[part]
        _release_rows(features, int(part.min()), min(n, int(part.max()) + 257))
    return out


def _memory_plan(features: np.ndarray, k: int, niter: int, mppc: int | None) -> dict[str, Any]:
    """What the k-means ahead costs (:func:`vlselect.cluster.kmeans_cost`), as numbers and one sentence."""
    from vlselect.cluster import _gib, available_memory_bytes, kmeans_cost

    n, d = (int(s) for s in features.shape)
    c = kmeans_cost(n, d, k, niter=niter, max_points_per_centroid=mppc, dtype_bytes=features.dtype.itemsize)
    avail = available_memory_bytes()
    text = (
        f"coincide: k-means of {n:,} x {d:,} rows into K={k} trains on {c['train_rows']:,} rows "
        f"({'a faiss subsample' if c['subsampled'] else 'all rows'}, {c['flops']:.2g} FLOP); exact official result "
        f"with about {_gib(c['ram_out_of_core_bytes'])} of RAM here streaming from the input "
        f"({_gib(c['ram_in_memory_bytes'])} in memory; the official script needs {_gib(c['ram_exact_official_bytes'])});"
        f" {_gib(avail)} available"
    )
    return {"text": text, "ram_out_of_core_bytes": int(c["ram_out_of_core_bytes"]),
            "ram_in_memory_bytes": int(c["ram_in_memory_bytes"]),
            "ram_exact_official_bytes": int(c["ram_exact_official_bytes"]), "flops": c["flops"],
            "train_rows": c["train_rows"], "available_bytes": avail}


def _say(text: Any) -> None:
    """One line to stderr (strict mode's memory statement before k-means starts)."""
    import sys

    print(text["text"] if isinstance(text, dict) else text, file=sys.stderr, flush=True)


def _check_features(features: np.ndarray) -> None:
    if getattr(features, "ndim", None) != 2:
        raise SelectionError(
            f"coincide: the 'features' input must be a 2-D array (rows x features), got shape {np.shape(features)}"
        )
    if features.shape[0] == 0:
        raise SelectionError("coincide: the 'features' input has no rows")
    n = features.shape[0]
    block = max(1, (64 * 2**20) // max(1, features.shape[1] * features.dtype.itemsize))
    for s in range(0, n, block):
        ok = np.isfinite(np.asarray(features[s : s + block])).all(axis=1)
        if not ok.all():
            bad = s + np.flatnonzero(~ok)
            raise SelectionError(
                f"coincide: feature row(s) {bad[:10].tolist()} hold NaN or inf; exclude them (the 'vlselect select' "
                f"command does so and reports them) or re-extract those rows"
            )


def coincide_stages(
    features: np.ndarray,
    *,
    n_clusters: int = 10000,
    niter: int = 50,
    kmeans_seed: int = 1234,
    knn_k: int | None = None,
    near_duplicate_cosine_cut: float = 0.9,
    temp: float = 0.1,
    sigma: float = 1.0,
    num_layers: int = 5,
    hidden_size: int = 2048,
    strict_official: bool = False,
    assignment: np.ndarray | None = None,
    centroids: np.ndarray | None = None,
    transferability: np.ndarray | None = None,
    gpu: bool | None = None,
    max_points_per_centroid: int | None = None,
    out_of_core: bool | None = None,
) -> CoincideStages:
    """Run the budget-independent stages: k-means, transferability, density, scores (spec §2, §3.1-§3.3).

    Parameters
    ----------
    features : (N, D) rows, D = 2 * num_layers * hidden_size.
    n_clusters, niter, kmeans_seed : faiss spherical k-means (official 10000 for LLaVA-665K, 50, 1234).
    knn_k : also compute the unused kNN side output of the transferability script.
    near_duplicate_cosine_cut, temp, sigma, num_layers, hidden_size : as in :func:`coincide`.
    strict_official : reproduce the official failures instead of fixing them (module docstring).
    assignment, centroids : start from stored k-means results (the packs' ``cluster_assignment``/``centroids``)
        instead of running k-means; both or neither.
    transferability : start from a stored ``transfer.npy`` instead of computing it from the centroids.
    gpu : k-means on a GPU (None: when faiss has one).
    max_points_per_centroid : faiss trains on at most ``n_clusters`` x this many rows (default 256, faiss's and
        the official value); lower it to shrink the training sample (module docstring, "Memory").
    out_of_core : k-means streams from ``features`` (:func:`vlselect.cluster.kmeans`); None decides by size.

    Memory. Density and greedy MMD read one cluster's rows at a time (float64, ``n_c x D x 8`` bytes for the
    largest cluster ``n_c``) and drop a memmap's pages as they go; k-means holds only its training sample (see
    :func:`vlselect.cluster.kmeans_cost`). With ``strict_official`` the memory and FLOPs of the exact official
    path are printed to stderr before k-means starts, and a sample that does not fit the available memory is
    refused with that number (so is any other, in every mode).

    Returns
    -------
    CoincideStages
    """
    from vlselect.cluster import kmeans

    if getattr(features, "ndim", None) != 2 or features.shape[0] == 0:
        _check_features(features)
    if assignment is not None:
        _check_features(features)  # k-means, when it runs, checks every row itself (no extra pass)
    n, d = features.shape
    _layout(d, num_layers, hidden_size)
    if sigma <= 0 or not math.isfinite(sigma):
        raise SelectionError(f"coincide: sigma={sigma} must be a positive number (official --gamma, default 1.0)")
    if temp <= 0 or not math.isfinite(temp):
        raise SelectionError(f"coincide: temp={temp} must be a positive number (official --temp, default 0.1)")
    objective, iters, ip = float("nan"), 0, None
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if (assignment is None) != (centroids is None):
        raise SelectionError("coincide: give both a stored assignment and stored centroids, or neither")
    kmeans_info: dict[str, Any] = {}
    if assignment is None:
        if not 1 <= n_clusters <= n:
            raise SelectionError(
                f"coincide: n_clusters={n_clusters} must be between 1 and the number of rows ({n}); give a smaller "
                f"n_clusters (K)"
            )
        plan = _memory_plan(features, n_clusters, niter, max_points_per_centroid)
        kmeans_info["plan"] = plan
        if strict_official:
            _say(plan)
        km = kmeans(features, n_clusters, niter=niter, seed=kmeans_seed, spherical=True, gpu=gpu, name="features",
                    max_points_per_centroid=max_points_per_centroid, out_of_core=out_of_core)
        assignment, centroids, ip = km.assignment, km.centroids, km.score
        objective, iters = km.objective, km.n_iter
        kmeans_info.update(train_rows=km.train_rows, out_of_core=km.out_of_core, notes=list(km.notes))
    else:
        assignment = np.asarray(assignment, dtype=np.int64)
        centroids = np.asarray(centroids, dtype=np.float32)
        if assignment.shape != (n,) or assignment.min() < 0 or assignment.max() >= centroids.shape[0]:
            raise SelectionError(
                f"coincide: the stored assignment must hold one cluster id in [0, {centroids.shape[0]}) per row "
                f"({n} rows)"
            )
    k = int(centroids.shape[0])
    timings["kmeans"] = time.perf_counter() - t0
    sizes = np.bincount(assignment, minlength=k).astype(np.int64)
    empty = np.flatnonzero(sizes == 0)
    if empty.size and strict_official:
        raise SelectionError(
            f"coincide: k-means left cluster(s) {empty[:10].tolist()} empty; the official prune step then fails "
            f"(IndexError or a shape mismatch, spec §8 Q10). Run without --strict-official (empty clusters are "
            f"skipped) or use fewer clusters (n_clusters)"
        )
    knn_idx = knn_sim = None
    if transferability is None or knn_k is not None:
        transfer, knn_idx, knn_sim = cluster_transferability(
            centroids,
            num_layers=num_layers,
            hidden_size=hidden_size,
            near_duplicate_cosine_cut=near_duplicate_cosine_cut,
            knn_k=knn_k,
            strict_official=strict_official,
        )
    if transferability is not None:
        transfer = np.asarray(transferability, dtype=np.float64)
        if transfer.shape != (k,):
            raise SelectionError(f"coincide: the stored transferability must hold one value per cluster ({k})")

    t1 = time.perf_counter()
    timings["transferability"] = t1 - t0 - timings["kmeans"]
    order, offsets = _members(assignment, k)
    density = np.full(k, np.nan)
    kernels: dict[int, _ClusterKernel] = {}
    cached = 0
    progress, desc, total = _progress(k, "coincide: cluster density")
    with progress:
        task = progress.add_task(desc, total=total)
        for c in range(k):
            idx = order[offsets[c] : offsets[c + 1]]
            if idx.size:
                nbytes = idx.size * idx.size * 8
                keep = idx.size <= FULL_KERNEL_MAX and cached + nbytes <= KERNEL_CACHE_BYTES
                x64 = _cluster_rows(features, idx)
                density[c], kernels[c] = _kernel_stats(x64, sigma, keep)
                del x64
                if keep:
                    cached += nbytes
            progress.advance(task)
    timings["density"] = time.perf_counter() - t1
    present = sizes > 0
    score = np.full(k, np.nan)
    with np.errstate(divide="ignore"):
        score[present] = (1 / density[present]) * transfer[present]
    ratio = np.full(k, 0.0)
    ratio[present] = _softmax(score[present], temp, strict_official)
    return CoincideStages(
        assignment=assignment,
        centroids=centroids,
        assigned_centroid_ip=ip,
        transferability=transfer,
        sizes=sizes,
        cluster_density=density,
        cluster_score=score,
        initial_ratio=ratio,
        knn_indices=knn_idx,
        knn_similarity=knn_sim,
        kmeans_objective=objective,
        kmeans_iterations=iters,
        kmeans_seed=kmeans_seed,
        kmeans_info=kmeans_info,
        kernels=kernels,
        timings_s=timings,
        members_order=order,
        members_offsets=offsets,
    )


def _fill_shortfall(
    score: np.ndarray, sizes: np.ndarray, have: np.ndarray, shortfall: int, temp: float
) -> tuple[np.ndarray, list[list[int]]]:
    """Q9 fix: further allocation rounds over clusters with unselected members until ``shortfall`` is met.

    Each round applies the official rule (sequential ``round(remaining * p)`` with carry-over, ``p`` a softmax of
    the cluster scores over the clusters still open, processed in descending ``p``), capped by what each cluster
    has left. The last open cluster of a round is asked for everything left, so every round makes progress.
    Returns the new per-cluster counts and the rounds' (cluster, extra) rows.
    """
    have = have.copy()
    rounds: list[list[int]] = []
    rem = int(shortfall)
    while rem > 0:
        open_ = np.flatnonzero(have < sizes)
        if open_.size == 0:
            break
        alloc = allocate_budget(score[open_], sizes[open_] - have[open_], rem, temp=temp, strict_official=False)
        for q, local in enumerate(alloc.order):
            c = int(open_[local])
            if alloc.taken[q] > 0:
                have[c] += int(alloc.taken[q])
                rounds.append([c, int(alloc.taken[q])])
        rem -= int(alloc.taken.sum())
    return have, rounds


def _select_budget(
    features: np.ndarray,
    st: CoincideStages,
    budget: Budget,
    *,
    temp: float,
    sigma: float,
    strict_official: bool,
    greedy: dict[int, GreedyMMD],
) -> tuple[np.ndarray, dict[str, Any]]:
    present = np.flatnonzero(st.sizes > 0)
    sizes_p = st.sizes[present]
    alloc = allocate_budget(st.cluster_score[present], sizes_p, budget.count, temp=temp, strict_official=strict_official)
    order = present[alloc.order]
    table = np.stack([order, st.sizes[order], alloc.remaining, alloc.asked, alloc.taken], axis=1).astype(np.int64)
    have = np.zeros(st.sizes.shape[0], dtype=np.int64)
    have[order] = alloc.taken
    whole = {int(c) for c, a in zip(order, alloc.asked) if a > st.sizes[c]}
    official_count = int(alloc.taken.sum())
    extra_rounds: list[list[int]] = []
    if not strict_official and official_count < budget.count:
        score = np.where(st.sizes > 0, st.cluster_score, -np.inf)
        have, extra_rounds = _fill_shortfall(score, st.sizes, have, budget.count - official_count, temp)
    picks: list[np.ndarray] = []
    progress, desc, total = _progress(len(order), f"coincide: greedy MMD ({budget.given})")
    with progress:
        task = progress.add_task(desc, total=total)
        for c in order:
            c = int(c)
            m = int(have[c])
            idx = st.members(c)
            if m > 0 and c in whole and m == idx.size:
                picks.append(idx)  # the official code takes a capped cluster whole, in row order, without MMD
            elif m > 0:
                g = greedy.get(c)
                if g is None:
                    g = greedy[c] = GreedyMMD(
                        lambda idx=idx: _cluster_rows(features, idx), st.kernels[c], float(st.cluster_density[c]), sigma,
                        ties="official" if strict_official else "lowest",
                    )
                picks.append(idx[np.asarray(g.extend(m), dtype=np.int64)])
            progress.advance(task)
    indices = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
    info = {
        "target": int(budget.count),
        "selected": int(indices.size),
        "shortfall": int(budget.count - indices.size),
        "official_shortfall": int(budget.count - official_count),
        "shortfall_fill_rounds": extra_rounds,
        "clusters_taken_whole": int(len(whole)),
        "clusters_zero_budget": int(np.sum(alloc.asked == 0)),
        "greedy_tie_steps": int(sum(g.tie_steps for g in greedy.values())),
        "greedy_ties": "official torch evaluation" if strict_official else "lowest row index among tied candidates",
        "budget_table_columns": ["cluster", "size", "remaining", "asked", "taken"],
        "budget_table": table.tolist(),
        "step_ratio": alloc.step_ratio.tolist(),
    }
    return indices.astype(np.int64), info


# ------------------------------------------------------------------------------------------ the method


PARAMS = [
    Param("n_clusters", 10000, int, "k-means clusters K (official: 10000 for LLaVA-665K, 2500 for Vision-Flan)",
          aliases=("K", "ncentroids"), ge=1),
    Param("niter", 50, int, "k-means iterations (faiss stops earlier once the objective stops changing)", ge=1),
    Param("kmeans_seed", None, int, "k-means seed; unset: 1234 + the global --seed (so --seed 0 gives the official "
          "1234); when given it wins over --seed", aliases=("seed",), ge=0, lt=2**31),
    Param("knn_k", 4, int, "neighbours in the official transferability script's side output (unused by the "
          "selection; accepted for compatibility)", ge=1),
    Param("near_duplicate_cosine_cut", 0.9, float, "centroid pairs with text-half cosine above this are left out "
          "of the transferability mean (official, hard-coded)", ge=-1, le=1),
    Param("temp", 0.1, float, "softmax temperature over cluster scores (official --temp)", aliases=("temperature",), gt=0),
    Param("sigma", 1.0, float, "Gaussian kernel width for density and MMD (official --gamma)", aliases=("gamma",), gt=0),
    Param("num_layers", 5, int, "layers in a feature row (official 5: layers 3, 7, 11, 15, 19)", ge=1),
    Param("hidden_size", 2048, int, "width of each vision / text half (official 2048, TinyLLaVA-2.0B)", ge=1),
    Param("max_points_per_centroid", 256, int, "k-means trains on at most K x this many rows, a faiss subsample "
          "(faiss's default and the official 256; lower it to shrink the in-RAM training sample)", ge=1),
]


@register_method(
    "coincide",
    roles=[Role("features", "N x (2*num_layers*hidden_size) pooled activations: per layer a vision half then a "
                            "text half (vlselect features activations)")],
    params=PARAMS,
    summary="COINCIDE: spherical k-means, cluster transferability / density softmax budgets, greedy MMD per cluster",
    reference="Lee, Li, Hwang, EMNLP 2024 (arXiv 2406.10995); G-JWLee/COINCIDE_code@629f776; specs/coincide.md",
)
def coincide(
    inputs: dict[str, np.ndarray],
    tasks: np.ndarray | None,
    budgets: Sequence[Budget],
    *,
    seed: int = 0,
    strict_official: bool = False,
    n_clusters: int = 10000,
    niter: int = 50,
    kmeans_seed: int | None = None,
    knn_k: int = 4,
    near_duplicate_cosine_cut: float = 0.9,
    temp: float = 0.1,
    sigma: float = 1.0,
    num_layers: int = 5,
    hidden_size: int = 2048,
    max_points_per_centroid: int = 256,
) -> list[Selection]:
    """COINCIDE selection at one or more budgets (specs/coincide.md §2-§5, fixes of §8 unless strict).

    One k-means / transferability / density pass; per budget the allocation of §3.4 and the greedy MMD of §4
    (the greedy sequence of a cluster is shared between budgets, since a shorter run is a prefix of a longer one).

    Parameters
    ----------
    inputs : ``{"features": (N, D) array}``; rows must be finite.
    tasks : ignored (COINCIDE does not use task labels).
    budgets : one or more resolved budgets; the official target is ``int(fraction * N)`` (``Budget.count``).
    seed : the global seed; used only when ``kmeans_seed`` is unset, as ``1234 + seed`` (the default 0 gives the
        official 1234). A ``kmeans_seed`` (alias ``seed`` in ``--param``) always wins.
    strict_official : reproduce the official code exactly, bugs included (budget shortfall; errors where the
        official code crashes). Default: the fixes listed in the module docstring.
    n_clusters, niter, kmeans_seed : spherical faiss k-means (official K 10000, 50, 1234).
    knn_k : side output of the official transferability script; does not affect the selection.
    near_duplicate_cosine_cut : transferability exclusion cut (0.9).
    temp : softmax temperature τ (0.1).
    sigma : Gaussian kernel σ (1.0).
    num_layers, hidden_size : the feature-row layout (official 5 × [2048 vision | 2048 text]).
    max_points_per_centroid : faiss's training subsample per cluster (256). A float16 memmap too large to copy
        to float32 is clustered out of core with the same result (:func:`vlselect.cluster.kmeans`).

    Returns
    -------
    list of Selection, one per budget. ``indices`` are in the official output order: clusters in processing
    order (descending softmax probability), inside a cluster the greedy-MMD pick order, or ascending row index
    for a cluster taken whole. ``scores[i]`` is the softmax probability ``P_c`` of row i's cluster (the share of
    the budget COINCIDE gives that cluster before capping; NaN for rows of an empty cluster). ``info`` holds the
    per-cluster budget table in processing order, shortfalls, the k-means objective and iterations, and counts.

    Examples
    --------
    >>> from vlselect.select import run_method
    >>> sel, = run_method("coincide", {"features": x}, 0.2,
    ...                   params={"K": 300, "temperature": 0.1, "num_layers": 4, "hidden_size": 64})
    """
    features = inputs["features"]
    k_seed = int(kmeans_seed) if kmeans_seed is not None else 1234 + int(seed)
    if n_clusters < 1:
        raise SelectionError(f"coincide: n_clusters={n_clusters} must be at least 1")
    st = coincide_stages(
        features,
        n_clusters=n_clusters,
        niter=niter,
        kmeans_seed=k_seed,
        near_duplicate_cosine_cut=near_duplicate_cosine_cut,
        temp=temp,
        sigma=sigma,
        num_layers=num_layers,
        hidden_size=hidden_size,
        strict_official=strict_official,
        max_points_per_centroid=max_points_per_centroid,
    )
    resolved = {
        "n_clusters": n_clusters, "niter": niter, "kmeans_seed": k_seed, "knn_k": knn_k,
        "near_duplicate_cosine_cut": near_duplicate_cosine_cut, "temp": temp, "sigma": sigma,
        "num_layers": num_layers, "hidden_size": hidden_size, "max_points_per_centroid": max_points_per_centroid,
    }
    return coincide_select(
        features, st, budgets, temp=temp, sigma=sigma, strict_official=strict_official, params=resolved, seed=seed
    )


def coincide_select(
    features: np.ndarray,
    stages: CoincideStages,
    budgets: Sequence[Budget],
    *,
    temp: float = 0.1,
    sigma: float = 1.0,
    strict_official: bool = False,
    params: dict[str, Any] | None = None,
    seed: int = 0,
) -> list[Selection]:
    """The per-budget part of COINCIDE (spec §3.4, §4, §5) on precomputed :class:`CoincideStages`.

    Use it to select from stored k-means results (``coincide_stages(..., assignment=, centroids=)``) or to add
    budgets without re-clustering. ``temp`` and ``sigma`` must be the values the stages were computed with.

    Returns
    -------
    list of Selection, one per budget (see :func:`coincide`).
    """
    st = stages
    scores = np.where(st.sizes[st.assignment] > 0, st.initial_ratio[st.assignment], np.nan).astype(np.float64)
    objective = st.kmeans_objective if math.isfinite(st.kmeans_objective) else None
    common = {
        "kmeans_objective": objective,
        "kmeans_iterations": st.kmeans_iterations,
        "kmeans_seed": st.kmeans_seed,
        "kmeans_train_rows": st.kmeans_info.get("train_rows"),
        "kmeans_out_of_core": st.kmeans_info.get("out_of_core"),
        "kmeans_notes": st.kmeans_info.get("notes", []),
        "kmeans_memory_plan": st.kmeans_info.get("plan", {}).get("text"),
        "n_clusters": int(st.sizes.size),
        "empty_clusters": np.flatnonzero(st.sizes == 0).tolist(),
        "cluster_size_min": int(st.sizes[st.sizes > 0].min()),
        "cluster_size_max": int(st.sizes.max()),
        "timings_s": {k: round(v, 4) for k, v in st.timings_s.items()},
        "scores": "softmax probability P_c = exp(T_c/(temp*d_c)) / sum_j exp(T_j/(temp*d_j)) of the row's cluster",
    }
    greedy: dict[int, GreedyMMD] = {}
    out = []
    for b in budgets:
        t0 = time.perf_counter()
        indices, info = _select_budget(
            features, st, b, temp=temp, sigma=sigma, strict_official=strict_official, greedy=greedy
        )
        info["select_s"] = round(time.perf_counter() - t0, 4)
        out.append(
            Selection(
                indices=indices,
                scores=scores,
                method="coincide",
                budget=b,
                params=dict(params or {"temp": temp, "sigma": sigma}),
                seed=seed,
                strict_official=strict_official,
                info={**common, **info},
            )
        )
    return out
