"""vlselect's own composite methods: COINCIDE x ICONS, in both orders, LESS x COINCIDE, LESS x TIVE, LESS x random
and all three.

``coincide_icons``: COINCIDE's cluster budgets, ICONS's cross-task votes inside each cluster.
``icons_coincide``: ICONS's votes choose ``candidate_factor x budget`` candidates, COINCIDE picks among them.
``less_coincide``: the same with LESS's ranking choosing the candidates.

COINCIDE decides *how much* of each concept cluster to keep (softmax of transferability / density) and, inside a
cluster, picks a representative spread of rows by greedy MMD, blind to what the model is being tuned for. ICONS
ranks every row by how many target tasks it helps (the vote of per-task gradient influence), blind to coverage:
its top rows can pile up in a few concepts. The composite keeps COINCIDE's per-cluster counts, so coverage and
the cluster mix are COINCIDE's, and fills each cluster's count with the rows ICONS ranks highest in that cluster
(more votes first, then the higher mean percentile rank across tasks, then the lower row index).

``less_tive``: how many rows of each pool task to keep comes from the targets (every target task's LESS ranking,
merged with an equal share per target), which rows of a task from TIVE's weighted sampling by within-task gradient
agreement. A gradient top-k keeps the rows closest to the target's mean gradient, and in a pool of short answers
those are the rows with one answer (``benchmarks/icons_answers.py``); a draw inside the task keeps its answers. At
TIVE's q = 0.001 the weights of a task differ by at most 0.2%, so that draw is practically uniform.

``less_support``: LESS's top rows for the targets, except that the pool's *support* tasks (tasks no target asks
about that teach what the targets build on: LLaVA's conversations and detailed descriptions, the bench world's
captions) keep their share of the budget, drawn at random. LESS ranks by gradient agreement with the targets, and
rows of a task no target asks about rarely agree, so LESS alone drops nearly all of them.

``less_tive_support``: both at once: the support tasks keep their share of the budget, drawn at random, and the
rest is ``less_tive`` over the other tasks (the targets' task mix, rows drawn inside each task).

Pure function of arrays (DESIGN.md): ``features`` (COINCIDE activations), ``train`` and ``val/<task>`` (projected
gradients, as ICONS takes them).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from vlselect.errors import SelectionError
from vlselect.select.base import (Budget, Param, Role, Selection, factorize_labels, register_method, stable_order,
                                   str_labels)
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
    features, train, val = _composite_inputs("icons_coincide", arrays, strict_official)
    if candidate_factor < 1:
        raise SelectionError(f"icons_coincide: candidate_factor={candidate_factor} must be at least 1")
    n = int(train.shape[0])
    coin = _coincide_settings(locals())
    params: dict[str, Any] = {**coin, "candidate_factor": candidate_factor}
    out: list[Selection] = []
    for b in budgets:
        m = candidate_count(candidate_factor, b.count, n)
        key, _ = icons_priority(train, val, 100.0 - 100.0 * m / max(1, n))
        cand = _descending(key, np.arange(n))[:m]
        picked, info = coincide_among(features, cand, b.count, n, seed=seed, **coin)
        out.append(Selection(picked, key.astype(np.float64), "icons_coincide", b, dict(params), seed, False, info))
    return out


def _coincide_settings(args: Mapping[str, Any]) -> dict[str, Any]:
    """COINCIDE's parameters out of a composite's arguments (its ``locals()``): the shared ones as given, the k-means
    seed ``1234 + seed`` unless set (COINCIDE's rule)."""
    out = {p.name: args[p.name] for p in _SHARED}
    out["kmeans_seed"] = int(args["kmeans_seed"]) if args["kmeans_seed"] is not None else 1234 + int(args["seed"])
    return out


def candidate_count(candidate_factor: float, count: int, n: int) -> int:
    """How many candidates a ranking hands to COINCIDE: ``ceil(candidate_factor x count)``, at least ``count``, at
    most the ``n`` rows there are."""
    return min(n, max(count, int(np.ceil(candidate_factor * count))))


def coincide_among(features: np.ndarray, cand: np.ndarray, count: int, n: int, *, seed: int, n_clusters: int,
                   **coincide_params: Any) -> tuple[np.ndarray, dict]:
    """COINCIDE run on the candidate rows ``cand`` alone (of a pool of ``n``), picking ``count`` of them: spherical
    k-means with ``n_clusters`` scaled to the candidates' share of the pool (so rows per cluster stay as
    COINCIDE's), transferability / density budgets, greedy MMD. With as many candidates as ``count`` they are
    all kept. Returns the picked pool rows (COINCIDE's output order) and ``{"candidates", "n_clusters_used"}``."""
    from vlselect.select.coincide import coincide

    m = int(cand.size)
    if m == count:
        return cand, {"candidates": m, "n_clusters_used": None}
    k = max(1, min(m, int(round(n_clusters * m / n))))
    sub = Budget(count=count, fraction=count / m, n=m, given=str(count))
    sel, = coincide({"features": np.asarray(features)[cand]}, None, [sub], seed=seed, n_clusters=k,
                    **coincide_params)
    return cand[sel.indices], {"candidates": m, "n_clusters_used": k}


@register_method(
    "less_coincide",
    roles=_ROLES,
    params=[*_SHARED,
            Param("candidate_factor", 2.0, float, "LESS keeps candidate_factor x budget rows (its top score); "
                  "COINCIDE picks the budget among them", ge=1),
            Param("normalize", True, bool, "L2-normalise every gradient (as LESS)"),
            Param("aggregation", "max", str, "how the target tasks' LESS scores are combined: max or mean",
                  choices=("max", "mean"))],
    summary="vlselect composite: LESS's top rows are the candidates, COINCIDE's clusters and MMD pick the subset",
    reference="vlselect (this package): LESS (specs/survey.md §5.2) then COINCIDE (specs/coincide.md §2-§4)",
)
def less_coincide(
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
    normalize: bool = True,
    aggregation: str = "max",
) -> list[Selection]:
    """:func:`icons_coincide` with LESS's ranking in place of ICONS's: LESS's top ``candidate_factor x budget``
    rows (:func:`vlselect.select.less.less_combined_scores`, ties by row index) are the candidates, and COINCIDE
    run on them alone, in pool order, picks the budget (:func:`coincide_among`). A gradient top-k fills the budget
    with the rows nearest the targets' mean gradient, which pile up in a few kinds of question
    (``benchmarks/RESULTS.md``); COINCIDE spreads the budget over the candidates' clusters. ``candidate_factor = 1``
    is LESS; one that makes every row a candidate is COINCIDE, exactly.

    Returns
    -------
    list of Selection, rows in COINCIDE's output order; ``scores`` = LESS's score; ``info["candidates"]``,
    ``info["targets"]``.
    """
    from vlselect.select.less import less_combined_scores

    features, train, _ = _composite_inputs("less_coincide", arrays, strict_official)
    if candidate_factor < 1:
        raise SelectionError(f"less_coincide: candidate_factor={candidate_factor} must be at least 1")
    n = int(train.shape[0])
    score, per_target = less_combined_scores(arrays, normalize=normalize, aggregation=aggregation,
                                             name="less_coincide")
    order = stable_order(score, descending=True)
    coin = _coincide_settings(locals())
    params: dict[str, Any] = {**coin, "candidate_factor": candidate_factor, "normalize": normalize,
                              "aggregation": aggregation}
    out: list[Selection] = []
    for b in budgets:
        cand = np.sort(order[:candidate_count(candidate_factor, b.count, n)])  # pool order, as COINCIDE reads a pool
        picked, info = coincide_among(features, cand, b.count, n, seed=seed, **coin)
        info["targets"] = sorted(per_target)
        out.append(Selection(picked, score.astype(np.float64), "less_coincide", b, dict(params), seed, False, info))
    return out


def balanced_merge(scores: Mapping[str, np.ndarray], count: int) -> np.ndarray:
    """``count`` rows taken in turns from several rankings: target tasks in sorted order, each adds its best row
    not yet taken (score descending, ties by row index, NaN never), until ``count`` rows or none left. Every target
    gets an equal share of the budget, whatever the scale of its scores (a ``max`` over targets hands the budget to
    the target whose scores run highest)."""
    names = sorted(scores)
    if not names:
        return np.zeros(0, dtype=np.int64)
    orders = []
    for t in names:
        s = np.asarray(scores[t], dtype=np.float64)
        keep = np.flatnonzero(np.isfinite(s))
        orders.append(keep[np.lexsort((keep, -s[keep]))])
    taken = np.zeros(np.asarray(scores[names[0]]).shape[0], dtype=bool)
    out: list[int] = []
    pos = [0] * len(names)
    while len(out) < count:
        moved = False
        for i, order in enumerate(orders):
            if len(out) >= count:
                break
            while pos[i] < order.size and taken[order[pos[i]]]:
                pos[i] += 1
            if pos[i] < order.size:
                r = int(order[pos[i]])
                taken[r] = True
                out.append(r)
                moved = True
        if not moved:
            break
    return np.asarray(out, dtype=np.int64)


_LESS_TIVE_ROLES = [
    Role("train", "projected training gradients, one row per pool row (as LESS)"),
    Role("instance", "projected gradients for TIVE's instance values (TIVE: self-attention LoRA only); "
         "default: train", required=False, store_arrays=("gradients",)),
    Role("val/*", "validation gradients of a target task: val/<task> or val/<task>/<sub> (as LESS)",
         aligned=False),
]
_LESS_TIVE_PARAMS = [
    Param("merge", "balanced", str, "how the target tasks' LESS rankings make the task mix: 'balanced' (an "
          "equal share of the budget per target, taken in turns) or 'max' (LESS's top-k by the best score)",
          choices=("balanced", "max")),
    Param("normalize", True, bool, "L2-normalise every gradient for the LESS scores (as LESS)"),
    Param("q", 0.001, float, "TIVE's inverse temperature of the within-task softmax over instance values", gt=0),
]
_SUPPORT_PARAMS = [
    Param("support", None, str, "the pool's support tasks, comma-separated: tasks no target asks about that "
          "teach what the targets build on (LLaVA's conversations and detailed descriptions; the bench world's "
          "captions). Required"),
    Param("support_share", None, float, "share of each budget drawn at random from the support tasks; default "
          "their share of the pool (what random selection keeps of them)", ge=0, le=1),
]


def support_rows(name: str, labels: np.ndarray, support: str | None) -> tuple[list[str], np.ndarray]:
    """The named support tasks (checked against the pool's tasks: a clear error names them) and a mask of their
    rows."""
    names = [t.strip() for t in (support or "").split(",") if t.strip()]
    present = sorted(set(labels.tolist()))
    if not names:
        raise SelectionError(f"{name} needs the pool's support tasks: --param support=TASK[,TASK] (the pool's "
                             f"tasks: {', '.join(present)})")
    unknown = [t for t in names if t not in present]
    if unknown:
        raise SelectionError(f"{name}: support task(s) {', '.join(unknown)} not in the pool; its tasks: "
                             f"{', '.join(present)}")
    return names, np.isin(labels, names)


def support_count(share: float, count: int, available: int) -> int:
    """Support rows a budget of ``count`` holds: ``share x count`` rounded half up, at most ``available``."""
    return min(int(available), int(np.floor(share * count + 0.5)))


def _less_tive_select(name: str, arrays: Mapping[str, np.ndarray], tasks: np.ndarray | None,
                      budgets: Sequence[Budget], *, seed: int, strict_official: bool, merge: str, normalize: bool,
                      q: float, support: str | None, support_share: float | None, with_support: bool
                      ) -> list[Selection]:
    """``less_tive`` (``with_support=False``) and ``less_tive_support``: see their docstrings."""
    from vlselect.select.less import _group_val, less_scores
    from vlselect.select.tive import _choice, tive_instance_scores, tive_instance_weights, tive_tasks

    if strict_official:
        raise SelectionError(f"{name} is vlselect's own method: it has no official code to be strict to")
    if tasks is None:
        raise SelectionError(f"{name} needs task labels (its mix is per pool task); pass --pool FILE or "
                             "--tasks TASKS.json")
    train = arrays.get("train")
    if train is None:
        raise SelectionError(f"{name} needs --input train=GRADS (and val/<task>, optionally instance=GRADS)")
    val = _group_val(arrays)
    if not val:
        raise SelectionError(f"{name} needs at least one validation input: --input val/TASK=PATH")
    inst = arrays.get("instance", train)
    n = int(train.shape[0])
    if inst.shape[0] != n:
        raise SelectionError(f"{name}: instance has {inst.shape[0]} rows, train {n}; both must have one row per "
                             "pool row")
    labels = factorize_labels(tasks)
    if labels[1].shape[0] != n:
        raise SelectionError(f"{name}: {labels[1].shape[0]} task labels for {n} rows; give one per pool row")
    params: dict[str, Any] = {"merge": merge, "normalize": normalize, "q": q}
    is_support = np.zeros(n, dtype=bool)
    names: list[str] = []
    if with_support:
        names, is_support = support_rows(name, str_labels(tasks), support)
        params.update(support=",".join(names), support_share=support_share)
    per_target = less_scores(train, val, normalize=normalize)
    if is_support.any():  # the targets' mix is of the other tasks: a support row is never a pick of a target
        per_target = {t: np.where(is_support, np.nan, s) for t, s in per_target.items()}
    tt = tive_tasks(np.ones(n), labels, excluded_task=None)
    scores, _ = tive_instance_scores(inst, tt.codes, len(tt.names), rows=tt.rows)
    weights = [tive_instance_weights(scores[r], q) for r in tt.rows]
    if merge == "max":
        best = np.max(np.stack([per_target[t] for t in sorted(per_target)], axis=1), axis=1)
        ranking = stable_order(np.where(np.isnan(best), -np.inf, best), descending=True)
        ranking = ranking[~is_support[ranking]]
    sup = np.flatnonzero(is_support)
    share = (float(is_support.mean()) if support_share is None else float(support_share)) if with_support else 0.0
    drawn = np.random.RandomState(int(seed)).permutation(sup)
    out: list[Selection] = []
    for b in budgets:
        k_s = support_count(share, b.count, sup.size)
        mixed = ranking[: b.count - k_s] if merge == "max" else balanced_merge(per_target, b.count - k_s)
        k_s = min(sup.size, b.count - mixed.size)  # the other tasks ran out: more support rows fill the budget
        want = np.bincount(tt.codes[mixed], minlength=len(tt.names))
        rng = np.random.RandomState(int(seed))
        parts = [np.asarray(_choice(rng, r, int(k), w, scores[r], False), dtype=np.int64)
                 for r, k, w in zip(tt.rows, want, weights)]
        picked = np.concatenate([*parts, drawn[:k_s]]).astype(np.int64)
        info: dict[str, Any] = {"targets": sorted(per_target),
                                "task_counts": {t: int(k) for t, k in zip(tt.names, want)}}
        if with_support:
            info.update(support=names, support_share=share, support_rows=int(k_s))
        out.append(Selection(picked, scores.astype(np.float64), name, b, dict(params), seed, False, info))
    return out


@register_method(
    "less_tive",
    roles=_LESS_TIVE_ROLES,
    params=_LESS_TIVE_PARAMS,
    summary="vlselect composite: the task mix of the targets' LESS rankings, filled in each task by TIVE's "
            "weighted sampling",
    needs_tasks=True,
    reference="vlselect (this package): LESS (specs/survey.md §5.2) x TIVE (specs/tive.md §5.3-5.4)",
)
def less_tive(
    arrays: Mapping[str, np.ndarray],
    tasks: np.ndarray | None,
    budgets: Sequence[Budget],
    *,
    seed: int = 0,
    strict_official: bool = False,
    merge: str = "balanced",
    normalize: bool = True,
    q: float = 0.001,
) -> list[Selection]:
    """Select at one or more budgets.

    1. Every target task scores every pool row as LESS does (cosine to the mean validation gradient, max over
       sub-tasks; :func:`vlselect.select.less.less_scores`). ``merge="balanced"`` takes ``count`` rows in turns
       from the targets' rankings (:func:`balanced_merge`); ``"max"`` takes LESS's own top ``count``.
    2. Those rows only decide the *task mix*: ``k_t`` = how many of them belong to pool task ``t``.
    3. Inside each task, ``k_t`` rows are drawn without replacement with TIVE's probabilities ``softmax(q · s_i)``
       over its instance values (mean cosine to the task's rows, :func:`vlselect.select.tive.tive_instance_scores`
       on ``instance``, or ``train``), one ``RandomState(seed)`` for all tasks, tasks in first-appearance order.

    Returns
    -------
    list of Selection, rows grouped by task in that order, draw order inside; ``scores`` = instance values;
    ``info["task_counts"]`` = rows per task; ``info["targets"]``.
    """
    return _less_tive_select("less_tive", arrays, tasks, budgets, seed=seed, strict_official=strict_official,
                             merge=merge, normalize=normalize, q=q, support=None, support_share=None,
                             with_support=False)


@register_method(
    "less_tive_support",
    roles=_LESS_TIVE_ROLES,
    params=[*_SUPPORT_PARAMS, *_LESS_TIVE_PARAMS],
    summary="vlselect composite: the support tasks' share of the budget drawn at random, the rest as less_tive "
            "over the other tasks (the targets' task mix, rows drawn inside each task)",
    needs_tasks=True,
    reference="vlselect (this package): LESS (specs/survey.md §5.2) x TIVE (specs/tive.md §5.3-5.4) x random "
              "selection",
)
def less_tive_support(
    arrays: Mapping[str, np.ndarray],
    tasks: np.ndarray | None,
    budgets: Sequence[Budget],
    *,
    seed: int = 0,
    strict_official: bool = False,
    support: str | None = None,
    support_share: float | None = None,
    merge: str = "balanced",
    normalize: bool = True,
    q: float = 0.001,
) -> list[Selection]:
    """Select at one or more budgets: ``less_support``'s support share with ``less_tive``'s draw for the rest.

    1. ``k_s = round(share x count)`` rows (half up; at most the support rows there are) are drawn uniformly without
       replacement from the support tasks' rows, exactly as :func:`less_support` draws them (``share`` =
       ``support_share``, by default the support tasks' share of the selectable pool).
    2. The other ``count - k_s`` rows are :func:`less_tive` over the other tasks: the targets' LESS rankings of the
       non-support rows (merged as ``merge`` says) decide how many rows of each task, and that many are drawn
       inside each task with TIVE's probabilities. If the other tasks run out, more support rows fill the budget.

    Returns
    -------
    list of Selection: the other tasks' rows grouped by task (first-appearance order, draw order inside), then the
    support rows in draw order; ``scores`` = instance values; ``info["task_counts"]`` (of the targets' mix; the
    support tasks' count is 0 there), ``info["support_rows"]``, ``info["support_share"]``, ``info["targets"]``.
    """
    return _less_tive_select("less_tive_support", arrays, tasks, budgets, seed=seed,
                             strict_official=strict_official, merge=merge, normalize=normalize, q=q,
                             support=support, support_share=support_share, with_support=True)


@register_method(
    "less_support",
    roles=[
        Role("train", "projected training gradients, one row per pool row (as LESS)"),
        Role("val/*", "validation gradients of a target task: val/<task> or val/<task>/<sub> (as LESS)",
             aligned=False),
    ],
    params=[
        *_SUPPORT_PARAMS,
        Param("normalize", True, bool, "L2-normalise every gradient for the LESS scores (as LESS)"),
        Param("aggregation", "max", str, "how the target tasks' LESS scores are combined into one: max or mean "
              "(as LESS)", choices=("max", "mean")),
    ],
    summary="vlselect composite: LESS's top rows of the other tasks for the targets, the support tasks' share of "
            "the budget drawn at random",
    needs_tasks=True,
    reference="vlselect (this package): LESS (specs/survey.md §5.2) x random selection",
)
def less_support(
    arrays: Mapping[str, np.ndarray],
    tasks: np.ndarray | None,
    budgets: Sequence[Budget],
    *,
    seed: int = 0,
    strict_official: bool = False,
    support: str | None = None,
    support_share: float | None = None,
    normalize: bool = True,
    aggregation: str = "max",
) -> list[Selection]:
    """Select at one or more budgets.

    LESS keeps the rows whose gradients point where the targets' do; rows of a task no target asks about rarely
    do, so LESS drops the pool's support data (a pool's captions or conversations) although the targets' skills
    are learned from it too. This composite keeps a random share of it:

    1. ``k_s = round(share x count)`` rows (half up) (at most the support rows there are) are drawn uniformly without
       replacement from the support tasks' rows, ``RandomState(seed).permutation`` (so a smaller budget's draw is
       the start of a larger one's); ``share`` = ``support_share``, by default the support tasks' share of the
       selectable pool.
    2. The other ``count - k_s`` rows are LESS's top rows among the rest of the pool (LESS's score:
       :func:`vlselect.select.less.less_combined_scores`; ties by row index). If the rest runs out, more support
       rows fill the budget.

    Returns
    -------
    list of Selection: LESS's rows first (best first), then the support rows in draw order; ``scores`` = LESS's
    score; ``info["support_rows"]`` = rows from the support tasks, ``info["support_share"]``, ``info["targets"]``.
    """
    from vlselect.select.less import less_combined_scores

    if strict_official:
        raise SelectionError("less_support is vlselect's own method: it has no official code to be strict to")
    if tasks is None:
        raise SelectionError("less_support needs task labels (its support share is per pool task); pass --pool FILE "
                             "or --tasks TASKS.json")
    if arrays.get("train") is None:
        raise SelectionError("less_support needs --input train=GRADS (and val/<task>)")
    labels = str_labels(tasks)
    n = int(arrays["train"].shape[0])
    if labels.shape[0] != n:
        raise SelectionError(f"less_support: {labels.shape[0]} task labels for {n} rows; give one per pool row")
    names, is_support = support_rows("less_support", labels, support)
    score, per_target = less_combined_scores(arrays, normalize=normalize, aggregation=aggregation,
                                             name="less_support")
    sup = np.flatnonzero(is_support)
    order = stable_order(score, descending=True)
    rest = order[~is_support[order]]
    share = float(is_support.mean()) if support_share is None else float(support_share)
    drawn = np.random.RandomState(int(seed)).permutation(sup)
    params = {"support": ",".join(names), "support_share": support_share, "normalize": normalize,
              "aggregation": aggregation}
    out: list[Selection] = []
    for b in budgets:
        k_r = min(rest.size, b.count - support_count(share, b.count, sup.size))
        k_s = min(sup.size, b.count - k_r)
        picked = np.concatenate([rest[:k_r], drawn[:k_s]]).astype(np.int64)
        info = {"targets": sorted(per_target), "support": names, "support_share": share, "support_rows": int(k_s)}
        out.append(Selection(picked, score.astype(np.float64), "less_support", b, dict(params), seed, False, info))
    return out
