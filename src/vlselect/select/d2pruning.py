"""D2-Pruning as the COINCIDE repository runs it: a kNN graph, forward and reverse message passing.

Spec: ``specs/coincide.md`` §7.4 (and §7.3 for the AUM score it is usually fed).
"""

from __future__ import annotations

import heapq
from typing import Mapping, Sequence

import numpy as np

from vlselect.errors import SelectionError
from vlselect.select.base import Budget, Param, Role, Selection, register_method

__all__ = ["forward_message_passing", "knn_graph", "reverse_message_passing", "select_d2pruning"]

_EPS = 1e-7


def knn_graph(
    x: np.ndarray,
    n_neighbor: int = 5,
    *,
    graph: str = "exact",
    nlist: int = 100,
    m: int = 16,
    nbits: int = 8,
    block_rows: int = 50000,
) -> tuple[np.ndarray, np.ndarray]:
    """Directed kNN graph: ``(neighbours, D)``, each ``N x n_neighbor``; ``D`` are float32 squared L2 distances.

    As the official code: search ``n_neighbor + 1`` neighbours per row (in blocks of 50,000), subtract the first
    returned distance from the row (assumed to be the row itself) and drop the first column.
    ``graph="ivfpq"`` builds the official ``IndexIVFPQ(IndexFlatL2, d, nlist, m, nbits)`` (nprobe 1, approximate);
    ``graph="exact"`` uses ``IndexFlatL2``.
    """
    import faiss

    xf = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(x.shape[0], -1))
    n, d = xf.shape
    k = min(n_neighbor + 1, n)
    if graph == "ivfpq":
        if d % m:
            raise SelectionError(f"d2pruning: graph=ivfpq needs the feature width ({d}) divisible by m={m}; pass --param m=...")
        if n < max(2**nbits, nlist):
            raise SelectionError(
                f"d2pruning: the official IVFPQ graph needs at least {max(2**nbits, nlist)} rows to train "
                f"(nlist={nlist}, nbits={nbits}), the input has {n}; use the default mode (exact graph) or lower "
                "--param nlist / nbits"
            )
        quantizer = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFPQ(quantizer, d, min(nlist, n), m, nbits)
        index.train(xf)
        index.add(xf)
    elif graph == "exact":
        index = faiss.IndexFlatL2(d)
        index.add(xf)
    else:
        raise SelectionError(f"d2pruning: graph={graph!r}; choose exact or ivfpq")
    dist = np.empty((n, k), dtype=np.float32)
    nbr = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, block_rows):
        dd, ii = index.search(xf[s:s + block_rows], k)
        dist[s:s + dd.shape[0]] = dd
        nbr[s:s + dd.shape[0]] = ii
    dist = dist - dist[:, :1]  # float32, as the official subtraction
    return nbr[:, 1:].copy(), dist[:, 1:].copy()


def forward_message_passing(
    scores: np.ndarray, nbr: np.ndarray, dist: np.ndarray, gamma_forward: float = 1.0, *, strict_official: bool = False
) -> np.ndarray:
    """``g_i = max(s_i, eps) + sum_j exp(-gamma_f D_ij) max(s_j, eps)`` over the out-neighbours j (eps = 1e-7).

    Default: float64 throughout; neighbour ids of -1 (faiss found fewer neighbours) contribute nothing.
    ``strict_official`` repeats ``initialize_graph``'s arithmetic: ``exp`` in float32 (``D`` is float32), the
    neighbour floor ``1e-7`` in float64, the row's own floor ``1e-7`` in the score's dtype (``float16(1e-7)``
    for the float16 AUM file), and an id of -1 indexing the last row, as NumPy does.
    """
    if strict_official:
        s = np.asarray(scores)
        nb = np.asarray(nbr)
        contrib = np.exp(-np.asarray(dist, dtype=np.float32) * gamma_forward) * np.maximum(
            s[nb], np.ones_like(nb) * _EPS
        )
        if contrib.ndim == 1:
            contrib = contrib[:, None]
        return np.asarray(np.sum(contrib, axis=-1) + np.maximum(s, np.ones_like(s) * _EPS), dtype=np.float64)
    s = np.maximum(np.asarray(scores, dtype=np.float64), _EPS)
    valid = nbr >= 0
    d64 = np.asarray(dist, dtype=np.float64)
    contrib = np.where(valid, np.exp(-gamma_forward * d64) * s[np.where(valid, nbr, 0)], 0.0)
    return s + contrib.sum(axis=1)


def reverse_message_passing(
    g0: np.ndarray,
    nbr: np.ndarray,
    dist: np.ndarray,
    count: int,
    gamma: float = 0.4,
    *,
    strict_official: bool = False,
) -> np.ndarray:
    """Select ``count`` nodes in order (spec §7.4, ``iterative_selection``): walk the static descending order of
    the initial ``g`` with a standby list; selecting node k lowers each out-neighbour j by ``g_k exp(-gamma D_kj)``.

    At each step: if the standby list is non-empty and its best current g is >= the current g of the next node
    in the static order, the best standby node is selected (ties: the one put on standby first, as
    ``np.argmax`` over the list); otherwise the next node is selected, or put on standby when its current g is
    below that of the node after it; then the walk advances. Default mode sorts by initial g descending with
    ties by row index, computes ``exp`` in float64 and skips neighbour ids of -1; ``strict_official`` uses
    ``np.argsort(g)[::-1]``, float32 ``exp`` and lets -1 index the last row, as the official code does. When
    the walk reaches the end of the order (where the official code raises IndexError) the standby list is
    drained best first.
    """
    n = g0.shape[0]
    g = np.asarray(g0, dtype=np.float64).copy()
    if strict_official:
        order = np.argsort(g)[::-1].astype(np.int64)
        w = np.exp(-np.asarray(dist, dtype=np.float32) * gamma)
        valid = np.ones(nbr.shape, dtype=bool)
    else:
        order = np.lexsort((np.arange(n), -g)).astype(np.int64)
        w = np.exp(-gamma * np.asarray(dist, dtype=np.float64))
        valid = nbr >= 0
    selected = np.zeros(n, dtype=bool)
    out = np.empty(min(count, n), dtype=np.int64)
    heap: list[tuple[float, int, int]] = []  # (-g at push, standby sequence, node)
    seq = 0
    p = 0
    got = 0
    glist = g  # local alias
    in_standby = np.zeros(n, dtype=bool)
    standby_seq = np.zeros(n, dtype=np.int64)

    def best_standby() -> tuple[float, int, int] | None:
        # lazy max-heap: an entry is fresh when its stored g is the node's current g
        while heap:
            negg, sq, node = heap[0]
            if not in_standby[node]:
                heapq.heappop(heap)
                continue
            cur = glist[node]
            if -negg == cur:
                return heap[0]
            heapq.heapreplace(heap, (-cur, sq, node))
        return None

    def take(node: int) -> None:
        nonlocal got
        selected[node] = True
        out[got] = node
        got += 1
        gk = glist[node]
        row_valid = valid[node]
        js = nbr[node][row_valid]
        glist[js] = glist[js] - gk * w[node][row_valid]
        if gk < 0:  # a negative g raises its neighbours: re-rank those on standby
            for j in js[in_standby[js]]:
                heapq.heappush(heap, (-glist[j], int(standby_seq[j]), int(j)))

    while got < out.shape[0]:
        top = best_standby()
        if p >= n:
            if top is None:
                break
            heapq.heappop(heap)
            in_standby[top[2]] = False
            take(top[2])
            continue
        cur = int(order[p])
        if top is not None and -top[0] >= glist[cur]:
            heapq.heappop(heap)
            in_standby[top[2]] = False
            take(top[2])
            continue
        if not selected[cur]:
            if p + 1 < n and glist[cur] < glist[order[p + 1]]:
                heapq.heappush(heap, (-glist[cur], seq, cur))
                in_standby[cur] = True
                standby_seq[cur] = seq
                seq += 1
            else:
                take(cur)
        p += 1
    return out[:got]


@register_method(
    "d2pruning",
    roles=(
        Role("features", "per-row embeddings: mean of the last hidden states (score_embed.py --avg_embed; vlselect "
                         "features activations --embeddings)", store_arrays=("embed_mean",)),
        Role("scores", "per-row importance score, higher = easier, 1-D: AUM from training (vlselect train "
                       "--record-dynamics) or the one-checkpoint probability margin of score_aum.py (--embeddings)",
             store_arrays=("aum", "margin")),
    ),
    params=(
        Param("n_neighbors", 5, int, "out-neighbours per node (--n-neighbors; the scripts pass 5, the search asks k+1)",
              aliases=("n_neighbor", "k", "knn"), ge=1),
        Param("gamma", 0.4, float, "reverse message passing gamma_r", ge=0),
        Param("gamma_forward", 1.0, float, "forward message passing gamma_f (hard-coded 1 in the official code)", ge=0),
        Param("graph", "exact", str, "kNN index: exact (IndexFlatL2) or ivfpq (official; strict mode forces it)",
              choices=("exact", "ivfpq")),
        Param("nlist", 100, int, "IVFPQ lists (graph=ivfpq)", ge=1),
        Param("m", 16, int, "IVFPQ sub-quantisers (graph=ivfpq)", ge=1),
        Param("nbits", 8, int, "IVFPQ bits per code (graph=ivfpq)", ge=1, le=16),
    ),
    summary="D2-Pruning: kNN graph, forward message passing of the score, greedy reverse message passing.",
    reference="specs/coincide.md §7.4",
)
def select_d2pruning(
    arrays: Mapping[str, np.ndarray],
    tasks: np.ndarray | None,
    budgets: Sequence[Budget],
    *,
    seed: int = 0,
    strict_official: bool = False,
    n_neighbors: int = 5,
    gamma: float = 0.4,
    gamma_forward: float = 1.0,
    graph: str = "exact",
    nlist: int = 100,
    m: int = 16,
    nbits: int = 8,
) -> list[Selection]:
    """D2-Pruning (``d2_prune/d2_prune.py``).

    Parameters
    ----------
    arrays : ``features`` (N x d; ``embed_mean`` of ``vlselect features activations --embeddings``) and ``scores``
        (N, higher = easier: ``aum`` of ``vlselect train --record-dynamics``, or ``margin``, the official
        one-checkpoint probability margin of ``score_aum.py``).
    n_neighbors : 5 out-neighbours; gamma : 0.4 (reverse); gamma_forward : 1.0.
    graph : ``exact`` by default (the official IVFPQ graph is approximate and varies with faiss's training);
        ``strict_official`` uses ``ivfpq`` with ``nlist``/``m``/``nbits`` (faiss seeds its own training) and the
        official arithmetic and sort (see :func:`forward_message_passing`, :func:`reverse_message_passing`).

    Returns
    -------
    list of Selection: one reverse-message-passing run to the largest budget, every budget a prefix of it.
    ``scores`` is the forward-message-passing ``g``.

    References
    ----------
    specs/coincide.md §7.4.
    """
    x = arrays["features"]
    s = np.asarray(arrays["scores"]).reshape(-1)
    if not strict_official:
        s = s.astype(np.float64)
    n = int(x.shape[0])
    if s.shape[0] != n:
        raise SelectionError(f"d2pruning: {s.shape[0]} scores for {n} feature rows; give one score per row")
    kind = "ivfpq" if strict_official else graph
    nbr, dist = knn_graph(x, n_neighbors, graph=kind, nlist=nlist, m=m, nbits=nbits)
    g0 = forward_message_passing(s, nbr, dist, gamma_forward, strict_official=strict_official)
    count = max(b.count for b in budgets)
    order = reverse_message_passing(g0, nbr, dist, count, gamma, strict_official=strict_official)
    params = dict(n_neighbors=n_neighbors, gamma=gamma, gamma_forward=gamma_forward, graph=kind, nlist=nlist, m=m, nbits=nbits)
    return [
        Selection(order[: b.count].copy(), g0, "d2pruning", b, params, seed, strict_official, {"graph": kind})
        for b in budgets
    ]
