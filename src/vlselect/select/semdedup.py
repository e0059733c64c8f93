"""SemDeDup as the COINCIDE repository runs it: spherical k-means, then per-cluster near-duplicate removal.

Spec: ``specs/coincide.md`` §7.1.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from vlselect.cluster import kmeans
from vlselect.errors import SelectionError
from vlselect.select.base import Budget, Param, Role, Selection, register_method

__all__ = ["max_earlier_similarity", "select_semdedup"]


def _normalise_rows(x: np.ndarray, block_rows: int = 65536) -> np.ndarray:
    """float32 copy of ``x`` with unit-norm rows (zero rows stay zero), built block by block."""
    n = x.shape[0]
    out = np.empty((n, int(np.prod(x.shape[1:]))), dtype=np.float32)
    for s in range(0, n, block_rows):
        b = np.asarray(x[s:s + block_rows], dtype=np.float32).reshape(min(block_rows, n - s), -1)
        norm = np.linalg.norm(b, axis=1, keepdims=True)
        out[s:s + b.shape[0]] = b / np.where(norm > 0, norm, 1.0)
    return out


def max_earlier_similarity(x: np.ndarray, block_rows: int = 1024) -> np.ndarray:
    """For rows in the given order, the maximum cosine similarity of row j to any earlier row (``M_j``).

    ``x`` holds unit-norm rows. ``M_0 = -inf`` (no earlier row). Computed in row blocks so a large cluster
    needs ``block_rows x m`` floats, not ``m x m``.
    """
    m = x.shape[0]
    out = np.full(m, -np.inf, dtype=np.float64)
    for s in range(1, m, block_rows):
        e = min(m, s + block_rows)
        sim = x[s:e] @ x[:e].T  # (e-s) x e
        # keep only columns i < j
        j = np.arange(s, e)[:, None]
        i = np.arange(e)[None, :]
        sim = np.where(i < j, sim, -np.inf)
        out[s:e] = sim.max(axis=1)
    return out


@register_method(
    "semdedup",
    roles=(Role("features", "per-row embeddings: the last-token last hidden state of the reference model (vlselect "
                            "features activations --embeddings)", store_arrays=("embed_last",)),),
    params=(
        Param("n_clusters", 10000, int, "k-means clusters (10000 LLaVA, 3000 Vision-Flan)", aliases=("K", "num_clusters"), ge=1),
        Param("niter", 50, int, "k-means iterations", ge=1),
        Param("kmeans_seed", 1234, int, "faiss k-means seed", ge=0, lt=2**31),
        Param("keep_hard", True, bool, "sort each cluster farthest-from-centroid first (--keep_hard)"),
        Param(
            "eps_list",
            "0.266,0.26665,0.267",
            str,
            "strict mode: the epsilons tried (comma list); the smallest kept list reaching the budget is used",
        ),
    ),
    summary="Semantic deduplication: per-cluster removal of near-duplicates at the epsilon that meets the budget.",
    reference="specs/coincide.md §7.1",
)
def select_semdedup(
    arrays: Mapping[str, np.ndarray],
    tasks: np.ndarray | None,
    budgets: Sequence[Budget],
    *,
    seed: int = 0,
    strict_official: bool = False,
    n_clusters: int = 10000,
    niter: int = 50,
    kmeans_seed: int = 1234,
    keep_hard: bool = True,
    eps_list: str = "0.266,0.26665,0.267",
) -> list[Selection]:
    """SemDeDup (``SemDeDup/compute_centroids.py``, ``execute_semdedup.py``, ``extract_dedup_data.py``).

    Rows are L2-normalised and clustered (faiss spherical k-means). Inside each cluster the members are sorted
    by cosine distance to the centroid, descending when ``keep_hard``. For member j, ``M_j`` is its largest
    cosine similarity to an earlier member; j is dropped at epsilon ε when ``M_j > 1 - ε``.

    Default mode picks ε exactly: the rows are ranked by ``M_j`` ascending (ties by cluster id, then position in
    the cluster) and the first ``count`` are kept, i.e. the largest ε at which at least ``count`` rows survive,
    without the official truncation that cuts the highest-numbered clusters. ``strict_official`` runs the
    official ``eps_list`` search: for each ε the kept rows are listed cluster by cluster (id order, sorted order
    inside), the smallest list with at least ``count`` rows is truncated to ``count`` (the largest list is used,
    with a shortfall, when none is long enough).

    Parameters
    ----------
    arrays : ``features`` (N x d): the last-token embedding (``embed_last`` of ``vlselect features activations
        --embeddings``, spec §7.1); any N x d embedding works.
    n_clusters, niter, kmeans_seed : faiss k-means (10000 / 50 / 1234 in the LLaVA script).
    keep_hard : farthest from the centroid first (the script's ``--keep_hard``).
    eps_list : strict mode only.

    Returns
    -------
    list of Selection. ``scores`` is ``1 - M_j``: the smallest ε at which the row is dropped (2.0 for the
    first row of a cluster, never dropped). ``info`` has ``epsilon`` (default: the ε that meets the budget).

    References
    ----------
    specs/coincide.md §7.1.
    """
    x = arrays["features"]
    n = int(x.shape[0])
    if n_clusters > n:
        raise SelectionError(
            f"semdedup: n_clusters={n_clusters} is larger than the pool ({n} rows); pass --param n_clusters=K "
            f"with K <= {n} (about n/50 is a reasonable start)"
        )
    xn = _normalise_rows(x)
    km = kmeans(xn, n_clusters, niter=niter, seed=kmeans_seed, spherical=True)
    # cosine distance in float32, as sort_clusters.py computes 1 - dist_to_cent on the float32 search output
    dist = np.float32(1.0) - km.score.astype(np.float32)
    # processing order: cluster id, then distance to the centroid (descending if keep_hard), ties by row
    key_dist = -dist if keep_hard else dist
    order = np.lexsort((np.arange(n), key_dist, km.assignment)).astype(np.int64)
    m_sim = np.full(n, -np.inf, dtype=np.float64)
    bounds = np.searchsorted(km.assignment[order], np.arange(n_clusters + 1))
    for c in range(n_clusters):
        a, b = bounds[c], bounds[c + 1]
        if b - a > 1:
            m_sim[order[a:b]] = max_earlier_similarity(xn[order[a:b]])
    scores = np.where(np.isneginf(m_sim), 2.0, 1.0 - m_sim)
    params = dict(n_clusters=n_clusters, niter=niter, kmeans_seed=kmeans_seed, keep_hard=keep_hard, eps_list=eps_list)
    out = []
    if not strict_official:
        # rank: most unique first; ties by processing order
        pos = np.empty(n, dtype=np.int64)
        pos[order] = np.arange(n)
        rank = np.lexsort((pos, m_sim))
        for bud in budgets:
            idx = rank[: bud.count].astype(np.int64)
            eps = float(scores[idx[-1]]) if idx.size else None
            out.append(Selection(idx, scores, "semdedup", bud, params, seed, strict_official,
                                 {"epsilon": eps, "n_clusters": n_clusters}))
        return out
    try:
        eps_values = sorted(float(e) for e in str(eps_list).split(",") if e.strip())
    except ValueError:
        raise SelectionError(f"semdedup: eps_list={eps_list!r} is not a comma list of numbers, e.g. 0.266,0.267") from None
    if not eps_values:
        raise SelectionError("semdedup: eps_list is empty; give e.g. --param eps_list=0.266,0.26665,0.267")
    # execute_semdedup.py: M (float32 column max of the upper triangle, >= 0) > 1 - eps, compared in float32
    m32 = np.maximum(m_sim, 0.0).astype(np.float32)
    kept_lists = [order[~(m32[order] > np.float32(1.0 - e))] for e in eps_values]
    for bud in budgets:
        chosen = None
        for e, kept in sorted(zip(eps_values, kept_lists), key=lambda t: (t[1].size, t[0])):
            if kept.size >= bud.count:
                chosen = (e, kept)
                break
        if chosen is None:
            chosen = max(zip(eps_values, kept_lists), key=lambda t: t[1].size)
        e, kept = chosen
        out.append(Selection(kept[: bud.count].astype(np.int64), scores, "semdedup", bud, params, seed,
                             strict_official, {"epsilon": e, "n_clusters": n_clusters,
                                               "kept_per_eps": {str(a): int(k.size) for a, k in zip(eps_values, kept_lists)}}))
    return out
