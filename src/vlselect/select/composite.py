"""vlselect's own composite methods: COINCIDE x ICONS, in both orders.

``coincide_icons``: COINCIDE's cluster budgets, ICONS's cross-task votes inside each cluster.
``icons_coincide``: ICONS's votes choose ``candidate_factor x budget`` candidates, COINCIDE picks among them.

COINCIDE decides *how much* of each concept cluster to keep (softmax of transferability / density) and, inside a
cluster, picks a representative spread of rows by greedy MMD, blind to what the model is being tuned for. ICONS
ranks every row by how many target tasks it helps (the vote of per-task gradient influence), blind to coverage:
its top rows can pile up in a few concepts. The composite keeps COINCIDE's per-cluster counts, so coverage and
the cluster mix are COINCIDE's, and fills each cluster's count with the rows ICONS ranks highest in that cluster
(more votes first, then the higher mean percentile rank across tasks, then the lower row index).

Pure function of arrays (DESIGN.md): ``features`` (COINCIDE activations), ``train`` and ``val/<task>`` (projected
gradients, as ICONS takes them).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from vlselect.errors import SelectionError
from vlselect.select.base import Budget, Param, Role, Selection, register_method
from vlselect.select.coincide import PARAMS as COINCIDE_PARAMS
from vlselect.select.coincide import _fill_shortfall, allocate_budget, coincide_stages
from vlselect.select.icons import icons_mean_rank, icons_targets, icons_task_scores, icons_votes

_SHARED = [p for p in COINCIDE_PARAMS if p.name in ("n_clusters", "niter", "kmeans_seed",
                                                     "near_duplicate_cosine_cut", "temp", "sigma", "num_layers",
                                                     "hidden_size")]


_ROLES = [
    Role("features", "COINCIDE activations (vlselect features activations)"),
    Role("train", "projected training gradients, one row per pool row (as ICONS)"),
    Role("val/*", "validation gradients of a target task: val/<task> or val/<task>/<sub> (as ICONS)", aligned=False),
]


def _composite_inputs(name: str, arrays: Mapping[str, np.ndarray], strict_official: bool
                      ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``features``, ``train`` and the ``val/*`` arrays of a composite, checked (a clear error names the fix)."""
    if strict_official:
        raise SelectionError(f"{name} is vlselect's own method: it has no official code to be strict to")
    features, train = arrays.get("features"), arrays.get("train")
    if features is None or train is None:
        raise SelectionError(f"{name} needs --input features=ACTS and --input train=GRADS (and val/<task>)")
    val = {k: v for k, v in arrays.items() if k.startswith("val/")}
    if not val:
        raise SelectionError(f"{name} needs at least one validation input: --input val/TASK=PATH")
    if features.shape[0] != train.shape[0]:
        raise SelectionError(f"{name}: features has {features.shape[0]} rows, train {train.shape[0]}; "
                             "both must have one row per pool row")
    return features, train, val


def cluster_counts(score: np.ndarray, sizes: np.ndarray, count: int, temp: float) -> np.ndarray:
    """Rows to take per cluster: COINCIDE's sequential softmax allocation, then its shortfall fill (default
    mode), so the counts add up to ``min(count, sum(sizes))``."""
    present = np.flatnonzero(sizes > 0)
    have = np.zeros(sizes.shape[0], dtype=np.int64)
    alloc = allocate_budget(score[present], sizes[present], count, temp=temp, strict_official=False)
    have[present[alloc.order]] = alloc.taken
    short = count - int(have.sum())
    if short > 0:
        have, _ = _fill_shortfall(np.where(sizes > 0, score, -np.inf), sizes, have, short, temp)
    return have


def icons_priority(train: np.ndarray, val: Mapping[str, np.ndarray], percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """ICONS's default priority key per row: ``votes + mean percentile rank`` (higher first; NaN for rows with a
    non-finite score), and the votes."""
    targets = icons_targets(val)
    scores, _ = icons_task_scores(train, targets)
    valid = np.isfinite(scores).all(axis=1)
    _, _, votes = icons_votes(scores, percentile, valid=valid)
    rank = icons_mean_rank(scores, valid)
    key = np.where(valid, votes + np.nan_to_num(rank, nan=0.0), np.nan)
    return key, votes


def _descending(key: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``rows`` ordered by ``key`` descending, ties (and NaN last) by row index."""
    k = np.where(np.isnan(key[rows]), -np.inf, key[rows])
    return rows[np.lexsort((rows, -k))]


@register_method(
    "coincide_icons",
    roles=_ROLES,
    params=[*_SHARED,
            Param("top_percent", None, float, "each task votes for its top top_percent % of rows; default 100 x the "
                  "budget fraction (ICONS's rule)", gt=0, le=100)],
    summary="vlselect composite: COINCIDE's per-cluster budgets, filled in each cluster by ICONS's task votes",
    reference="vlselect (this package): COINCIDE (specs/coincide.md §3) x ICONS (specs/icons.md §5)",
)
def coincide_icons(
    arrays: Mapping[str, np.ndarray],
    tasks: np.ndarray | None,
    budgets: Sequence[Budget],
    *,
    seed: int = 0,
    strict_official: bool = False,
    n_clusters: int = 10000,
    niter: int = 50,
    kmeans_seed: int | None = None,
    near_duplicate_cosine_cut: float = 0.9,
    temp: float = 0.1,
    sigma: float = 1.0,
    num_layers: int = 5,
    hidden_size: int = 2048,
    top_percent: float | None = None,
) -> list[Selection]:
    """Select at one or more budgets.

    Parameters
    ----------
    arrays : ``features`` (N x D activations), ``train`` (N x d gradients), ``val/<task>`` (rows x d each).
    n_clusters, niter, kmeans_seed, near_duplicate_cosine_cut, temp, sigma, num_layers, hidden_size :
        as :func:`vlselect.select.coincide.coincide` (clusters and per-cluster budgets).
    top_percent : as ICONS (default: tied to each budget).

    Returns
    -------
    list of Selection, rows in ICONS priority order; ``scores`` = ICONS key (votes + mean rank);
    ``info["cluster_counts"]`` = rows taken per cluster.
    """
    features, train, val = _composite_inputs("coincide_icons", arrays, strict_official)
    k_seed = int(kmeans_seed) if kmeans_seed is not None else 1234 + int(seed)
    st = coincide_stages(features, n_clusters=n_clusters, niter=niter, kmeans_seed=k_seed,
                         near_duplicate_cosine_cut=near_duplicate_cosine_cut, temp=temp, sigma=sigma,
                         num_layers=num_layers, hidden_size=hidden_size)
    params: dict[str, Any] = {"n_clusters": n_clusters, "niter": niter, "kmeans_seed": k_seed,
                              "near_duplicate_cosine_cut": near_duplicate_cosine_cut, "temp": temp, "sigma": sigma,
                              "num_layers": num_layers, "hidden_size": hidden_size, "top_percent": top_percent}
    out: list[Selection] = []
    cache: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    for b in budgets:
        pct = 100.0 - (float(top_percent) if top_percent is not None else 100.0 * b.count / max(1, b.n))
        if pct not in cache:
            cache[pct] = icons_priority(train, val, pct)
        key, votes = cache[pct]
        have = cluster_counts(st.cluster_score, st.sizes, b.count, temp)
        picks = [_descending(key, st.members(c))[: int(have[c])] for c in np.flatnonzero(have)]
        chosen = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
        order = _descending(key, chosen)
        info = {"cluster_counts": {int(c): int(have[c]) for c in np.flatnonzero(have)},
                "threshold_percentile": pct, "votes_selected_mean": float(votes[order].mean()) if order.size else 0.0,
                "shortfall": int(b.count - order.size)}
        out.append(Selection(order, key.astype(np.float64), "coincide_icons", b, dict(params), seed, False, info))
    return out


@register_method(
    "icons_coincide",
    roles=_ROLES,
    params=[*_SHARED,
            Param("candidate_factor", 2.0, float, "ICONS keeps candidate_factor x budget rows (its top priority); "
                  "COINCIDE picks the budget among them", ge=1)],
    summary="vlselect composite: ICONS's task votes choose the candidates, COINCIDE's clusters and MMD the subset",
    reference="vlselect (this package): ICONS (specs/icons.md §5) then COINCIDE (specs/coincide.md §2-§4)",
)
def icons_coincide(
    arrays: Mapping[str, np.ndarray],
    tasks: np.ndarray | None,
    budgets: Sequence[Budget],
    *,
    seed: int = 0,
    strict_official: bool = False,
    n_clusters: int = 10000,
    niter: int = 50,
    kmeans_seed: int | None = None,
    near_duplicate_cosine_cut: float = 0.9,
    temp: float = 0.1,
    sigma: float = 1.0,
    num_layers: int = 5,
    hidden_size: int = 2048,
    candidate_factor: float = 2.0,
) -> list[Selection]:
    """The reverse of :func:`coincide_icons`: *what* to train on comes from the targets, *how to spread it* from
    COINCIDE. ICONS's priority (votes + mean percentile rank, each task voting for its top ``candidate_factor x
    budget`` rows) keeps the ``candidate_factor x budget`` most wanted rows; COINCIDE then runs on those rows
    alone (spherical k-means with ``n_clusters`` scaled to the candidates' share of the pool, so rows per cluster
    stay as COINCIDE's; transferability / density budgets; greedy MMD) and picks the budget. ``candidate_factor
    = 1`` is ICONS; a very large one is COINCIDE.

    Returns
    -------
    list of Selection, rows in COINCIDE's output order; ``scores`` = ICONS key; ``info["candidates"]``.
    """
    from vlselect.select.coincide import coincide

    features, train, val = _composite_inputs("icons_coincide", arrays, strict_official)
    if candidate_factor < 1:
        raise SelectionError(f"icons_coincide: candidate_factor={candidate_factor} must be at least 1")
    n = int(train.shape[0])
    k_seed = int(kmeans_seed) if kmeans_seed is not None else 1234 + int(seed)
    params: dict[str, Any] = {"n_clusters": n_clusters, "niter": niter, "kmeans_seed": k_seed,
                              "near_duplicate_cosine_cut": near_duplicate_cosine_cut, "temp": temp, "sigma": sigma,
                              "num_layers": num_layers, "hidden_size": hidden_size,
                              "candidate_factor": candidate_factor}
    out: list[Selection] = []
    for b in budgets:
        m = min(n, max(b.count, int(np.ceil(candidate_factor * b.count))))
        key, _ = icons_priority(train, val, 100.0 - 100.0 * m / max(1, n))
        cand = _descending(key, np.arange(n))[:m]
        if m == b.count:
            picked = cand
        else:
            k = max(1, min(m, int(round(n_clusters * m / n))))
            sub = Budget(count=b.count, fraction=b.count / m, n=m, given=str(b.count))
            sel, = coincide({"features": np.asarray(features)[cand]}, None, [sub], seed=seed, n_clusters=k, niter=niter,
                            kmeans_seed=k_seed, near_duplicate_cosine_cut=near_duplicate_cosine_cut, temp=temp,
                            sigma=sigma, num_layers=num_layers, hidden_size=hidden_size)
            picked = cand[sel.indices]
        info = {"candidates": m, "n_clusters_used": None if m == b.count else k}
        out.append(Selection(picked, key.astype(np.float64), "icons_coincide", b, dict(params), seed, False, info))
    return out
