"""Score-free and single-score baselines: random, random stratified by task, length, EL2N and perplexity.

Spec: ``specs/coincide.md`` §7.2 (EL2N), §7.5 (Random) and §5 (how the COINCIDE training script turns an
ascending score order into a subset with ``--prune_subset bottom|middle|top``).

Each method is a pure function ``(arrays, tasks, budgets, *, seed, strict_official, **params) -> list[Selection]``
(see :mod:`vlselect.select.base`). Rows holding NaN or inf are removed by the dispatcher
(:func:`vlselect.select.run_method`) before a method sees them, except in ``strict_official`` mode.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from vlselect.errors import SelectionError
from vlselect.select.base import Budget, Param, Role, Selection, register_method, stable_order

__all__ = [
    "largest_remainder",
    "prune_subset_order",
    "select_el2n",
    "select_length",
    "select_perplexity",
    "select_random",
    "select_random_stratified",
]

_SUBSET_CHOICES = ("bottom", "middle", "top", "low", "high")
_SUBSET_ALIASES = {"low": "bottom", "high": "top"}


def _n_rows(arrays: Mapping[str, np.ndarray], tasks: np.ndarray | None, budgets: Sequence[Budget]) -> int:
    for a in arrays.values():
        return int(a.shape[0])
    if tasks is not None:
        return int(tasks.shape[0])
    return int(budgets[0].n) if budgets else 0


def _one_d(arrays: Mapping[str, np.ndarray], roles: Sequence[str], method: str) -> tuple[str, np.ndarray]:
    """The first of ``roles`` present in ``arrays``, as a 1-D float64 vector."""
    for role in roles:
        if role in arrays:
            a = np.asarray(arrays[role])
            if a.ndim == 2 and a.shape[1] == 1:
                a = a[:, 0]
            if a.ndim != 1:
                raise SelectionError(
                    f"method {method!r}: input {role!r} must be one value per row (1-D), got shape {a.shape}; "
                    f"pick a 1-D array with --input {role}=DIR:array"
                )
            return role, a
    raise SelectionError(
        f"method {method!r} needs one of the input roles {', '.join(roles)}; pass e.g. --input {roles[0]}=PATH"
    )


def _check_n(n: int, budgets: Sequence[Budget], method: str) -> None:
    for b in budgets:
        if b.n != n:
            raise SelectionError(f"method {method!r}: budget resolved for {b.n} rows but the input has {n}")


# ------------------------------------------------------------------------------------------------- random


@register_method(
    "random",
    roles=(Role("features", "any aligned array; only its row count is used", required=False),),
    params=(),
    summary="Uniform random subset from a seeded permutation (the COINCIDE repo's random_indices.npy, first p).",
    reference="specs/coincide.md §7.5",
)
def select_random(
    arrays: Mapping[str, np.ndarray],
    tasks: np.ndarray | None,
    budgets: Sequence[Budget],
    *,
    seed: int = 0,
    strict_official: bool = False,
) -> list[Selection]:
    """Random subset: the first ``count`` rows of one seeded permutation (so budgets are nested).

    Parameters
    ----------
    arrays : optional ``features`` (only its length is used); otherwise the pool size comes from ``tasks``.
    tasks : task labels or None.
    budgets : resolved budgets.
    seed : ``numpy.random.default_rng(seed).permutation(n)``.

    Returns
    -------
    list of Selection; ``scores`` is the row's random priority in (0, 1] (1 = first in the permutation).

    References
    ----------
    specs/coincide.md §7.5: ``finetune_lora_random.sh`` keeps the first 20 % of ``random_indices.npy``; no script
    in the repository generates the file, so the permutation generator is ours.

    Examples
    --------
    >>> from vlselect.select import run_method
    >>> run_method("random", {}, 2, tasks=["a"] * 5, seed=0)[0].indices.tolist()  # doctest: +SKIP
    """
    n = _n_rows(arrays, tasks, budgets)
    _check_n(n, budgets, "random")
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    scores = np.empty(n, dtype=np.float64)
    scores[perm] = 1.0 - np.arange(n, dtype=np.float64) / max(n, 1)
    return [
        Selection(perm[: b.count].copy(), scores, "random", b, {}, seed, strict_official, {})
        for b in budgets
    ]


def largest_remainder(sizes: Mapping[str, int], count: int) -> dict[str, int]:
    """Split ``count`` over groups in proportion to ``sizes`` (Hamilton / largest-remainder method).

    Each group gets ``floor(count * size / total)``; the rows left over go one each to the groups with the
    largest remainders, ties broken by the larger group, then by task name. The result sums to exactly
    ``count`` and no group gets more than its size.
    """
    total = sum(sizes.values())
    if total == 0:
        return {t: 0 for t in sizes}
    names = list(sizes)
    # exact integer arithmetic: quota_t = count * size_t / total
    floors = {t: (count * sizes[t]) // total for t in names}
    rema = {t: (count * sizes[t]) % total for t in names}
    left = count - sum(floors.values())
    for t in sorted(names, key=lambda t: (-rema[t], -sizes[t], t))[:left]:
        floors[t] += 1
    return floors


@register_method(
    "random_stratified",
    roles=(Role("features", "any aligned array; only its row count is used", required=False),),
    params=(),
    summary="Random subset with each task's share of the pool kept (largest-remainder quotas, seeded).",
    needs_tasks=True,
    reference="specs/coincide.md §7.5 (random), stratified by task",
)
def select_random_stratified(
    arrays: Mapping[str, np.ndarray],
    tasks: np.ndarray | None,
    budgets: Sequence[Budget],
    *,
    seed: int = 0,
    strict_official: bool = False,
) -> list[Selection]:
    """Random subset stratified by task: each task gets its proportional quota (largest remainder).

    One seeded permutation ranks every row; a task's quota is filled with its best-ranked rows, and the
    subset is listed in permutation order (so every prefix is close to stratified too).

    Parameters
    ----------
    tasks : one label per row (required).
    budgets : resolved budgets; the count is met exactly.
    seed : ``numpy.random.default_rng(seed).permutation(n)``.

    Returns
    -------
    list of Selection; ``info["quota"]`` holds the per-task counts.

    References
    ----------
    specs/coincide.md §7.5; quotas by the largest-remainder method (:func:`largest_remainder`).
    """
    if tasks is None:
        raise SelectionError("method 'random_stratified' needs task labels; pass --pool FILE or --tasks TASKS.json")
    n = int(tasks.shape[0])
    _check_n(n, budgets, "random_stratified")
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    rank = np.empty(n, dtype=np.int64)
    rank[perm] = np.arange(n, dtype=np.int64)
    names, inverse = np.unique(tasks.astype(str), return_inverse=True)
    sizes = {str(t): int(c) for t, c in zip(names, np.bincount(inverse, minlength=len(names)))}
    task_of_perm = inverse[perm]  # task id of each row in permutation order
    # position of each row inside its own task, in permutation order
    pos_in_task = np.empty(n, dtype=np.int64)
    for t in range(len(names)):
        m = task_of_perm == t
        pos_in_task[m] = np.arange(int(m.sum()), dtype=np.int64)
    scores = np.empty(n, dtype=np.float64)
    scores[perm] = 1.0 - np.arange(n, dtype=np.float64) / max(n, 1)
    out = []
    for b in budgets:
        quota = largest_remainder(sizes, b.count)
        q = np.array([quota[str(t)] for t in names], dtype=np.int64)
        keep = pos_in_task < q[task_of_perm]
        out.append(
            Selection(perm[keep].copy(), scores, "random_stratified", b, {}, seed, strict_official, {"quota": quota})
        )
    return out


# ---------------------------------------------------------------------------------- single-score baselines


def prune_subset_order(scores: np.ndarray, count: int, prune_subset: str, *, strict_official: bool = False) -> np.ndarray:
    """The rows a ``--prune_subset`` rule keeps from an ascending score order, in priority order.

    The COINCIDE scripts save the ascending argsort of a score and the training script keeps ``bottom`` (the
    first ``count``: lowest scores), ``top`` (the last ``count``: highest) or ``middle`` (a centred window
    starting at ``n // 2 - count // 2``, as ``LazySupervisedDataset`` in the repository's ``train.py`` does). ``low``/``high`` are accepted for ``bottom``/``top``.

    Default mode sorts stably (ties by row index) and lists ``top`` highest first; ``strict_official`` uses
    NumPy's default ``argsort`` and keeps the file order (ascending) for every rule.
    """
    rule = _SUBSET_ALIASES.get(prune_subset, prune_subset)
    raw = np.asarray(scores)
    s = raw.astype(np.float64)
    n = s.shape[0]
    # strict: sort_values.py's np.argsort on the stored array itself (its dtype decides the unstable tie order)
    asc = np.argsort(raw).astype(np.int64) if strict_official else stable_order(s, descending=False)
    if rule == "bottom":
        return asc[:count].copy()
    if rule == "top":
        sel = asc[n - count:] if count else asc[:0]
        return sel.copy() if strict_official else stable_order(s, descending=True)[:count].copy()
    if rule == "middle":
        start = n // 2 - count // 2  # train.py: total_num // 2 - prune_num // 2
        return asc[start:start + count].copy()
    raise SelectionError(f"prune_subset={prune_subset!r}: choose one of {', '.join(_SUBSET_CHOICES)}")


def _single_score(
    name: str,
    values: np.ndarray,
    budgets: Sequence[Budget],
    prune_subset: str,
    *,
    seed: int,
    strict_official: bool,
    params: dict[str, Any],
    info: dict[str, Any],
) -> list[Selection]:
    n = values.shape[0]
    _check_n(n, budgets, name)
    if strict_official:
        rows = np.arange(n, dtype=np.int64)
    else:
        # a row without a score (NaN: an empty answer has no loss, features/losses.py) is never selected, and the
        # bottom / middle / top rule applies to the scored rows (run_method removes them before; this keeps a
        # direct call honest too)
        rows = np.flatnonzero(np.isfinite(np.asarray(values, dtype=np.float64))).astype(np.int64)
        if rows.size < n:
            info = {**info, "unscored_rows": int(n - rows.size)}
    scored = values if rows.size == n else np.asarray(values)[rows]
    return [
        Selection(
            rows[prune_subset_order(scored, min(b.count, rows.size), prune_subset, strict_official=strict_official)],
            np.asarray(values, dtype=np.float64),
            name,
            b,
            dict(params),
            seed,
            strict_official,
            dict(info),
        )
        for b in budgets
    ]


_PRUNE_SUBSET = Param(
    "prune_subset",
    "bottom",
    str,
    "which part of the ascending score order to keep: bottom (lowest), middle (centred window), top (highest); "
    "low/high are accepted too. Default 'bottom', the COINCIDE train.py default",
    aliases=("subset", "part"),
    choices=_SUBSET_CHOICES,
)


@register_method(
    "length",
    roles=(Role("lengths", "per-row text length, 1-D; without it, 'vlselect select length --pool FILE' measures "
                           "each record as COINCIDE's train.py does (words over all turns + 128 with an image)",
                required=False),),
    params=(
        Param("order", "longest", str, "longest first or shortest first", choices=("longest", "shortest")),
    ),
    summary="Longest (or shortest) samples first, by per-row text length.",
    reference="not in the COINCIDE repository; a common length heuristic",
)
def select_length(
    arrays: Mapping[str, np.ndarray],
    tasks: np.ndarray | None,
    budgets: Sequence[Budget],
    *,
    seed: int = 0,
    strict_official: bool = False,
    order: str = "longest",
) -> list[Selection]:
    """Select by text length: the ``count`` longest rows (``order="longest"``), ties by row index.

    The COINCIDE repository has no length baseline, so there is no official behaviour to copy; the order is
    fully deterministic (``seed`` is unused). The repository's own notion of a sample's length (the
    ``lengths`` property of ``LazySupervisedDataset`` in ``train.py``, used to group batches) is the number of
    whitespace-separated words over all turns plus 128 when the sample has an image; compute ``lengths`` that
    way to match it.

    Parameters
    ----------
    arrays : ``lengths``, one number per row.
    order : ``longest`` (default) or ``shortest``.

    Returns
    -------
    list of Selection; ``scores`` is the length.
    """
    if "lengths" not in arrays:
        raise SelectionError("method 'length' needs per-row lengths: pass --input lengths=PATH, or --pool FILE on the "
                             "command line to measure them from the records (vlselect.select.io.pool_lengths)")
    _, lengths = _one_d(arrays, ("lengths",), "length")
    s = np.asarray(lengths, dtype=np.float64)
    _check_n(s.shape[0], budgets, "length")
    idx = stable_order(s, descending=(order == "longest"))
    return [
        Selection(idx[: b.count].copy(), s, "length", b, {"order": order}, seed, strict_official, {})
        for b in budgets
    ]


@register_method(
    "el2n",
    roles=(
        Role("el2n", "per-row EL2N score (mean over answer tokens of ||softmax - onehot||), 1-D", required=False),
        Role("losses", "alternative to el2n: any per-row score array, 1-D", required=False),
    ),
    params=(_PRUNE_SUBSET,),
    summary="EL2N score, ascending order, keep bottom / middle / top as the COINCIDE training script does.",
    reference="specs/coincide.md §7.2 and §5",
)
def select_el2n(
    arrays: Mapping[str, np.ndarray],
    tasks: np.ndarray | None,
    budgets: Sequence[Budget],
    *,
    seed: int = 0,
    strict_official: bool = False,
    prune_subset: str = "bottom",
) -> list[Selection]:
    """EL2N baseline (``el2n/score_el2n.py`` + ``sort_values.py`` + ``--prune_subset``).

    Parameters
    ----------
    arrays : ``el2n`` (preferred) or ``losses``: one score per row.
    prune_subset : ``bottom`` (lowest EL2N, the train.py default), ``middle`` or ``top``.
    strict_official : store the score as float16 with NaN → 0 before the (unstable) ascending argsort, as the
        official script does.

    Returns
    -------
    list of Selection; ``scores`` is the EL2N value used.

    References
    ----------
    specs/coincide.md §7.2.
    """
    role, v = _one_d(arrays, ("el2n", "losses"), "el2n")
    values = _official_scores(v) if strict_official else np.asarray(v, dtype=np.float64)
    return _single_score(
        "el2n", values, budgets, prune_subset, seed=seed, strict_official=strict_official,
        params={"prune_subset": prune_subset}, info={"score_role": role},
    )


def _official_scores(v: np.ndarray) -> np.ndarray:
    """float16 storage and NaN → 0, as the official scoring scripts save scores (kept float16 for the sort)."""
    h = np.asarray(v, dtype=np.float16)
    return np.where(np.isnan(h), np.float16(0), h).astype(np.float16)


@register_method(
    "perplexity",
    roles=(
        Role("perplexity", "per-row perplexity, 1-D", required=False),
        Role("losses", "per-row mean answer-token loss (perplexity = exp(loss)), 1-D", required=False),
    ),
    params=(_PRUNE_SUBSET,),
    summary="Perplexity, ascending order, keep low (bottom) / middle / high (top).",
    reference="specs/coincide.md §5 (prune_subset rule)",
)
def select_perplexity(
    arrays: Mapping[str, np.ndarray],
    tasks: np.ndarray | None,
    budgets: Sequence[Budget],
    *,
    seed: int = 0,
    strict_official: bool = False,
    prune_subset: str = "bottom",
) -> list[Selection]:
    """Perplexity baseline: ascending perplexity, keep ``bottom`` (low), ``middle`` or ``top`` (high).

    Parameters
    ----------
    arrays : ``perplexity`` or ``losses`` (mean loss; converted with ``exp``, which keeps the order).
    prune_subset : ``bottom``/``low`` (default), ``middle`` or ``top``/``high``.
    strict_official : NumPy's default (unstable) ascending ``argsort``, as ``sort_values.py`` does; the
        COINCIDE repository ships no perplexity scorer, so the values are used as given (no float16 storage).

    Returns
    -------
    list of Selection; ``scores`` is the perplexity.

    References
    ----------
    specs/coincide.md §5: the subset rule applied to an ascending score order.
    """
    role, v = _one_d(arrays, ("perplexity", "losses"), "perplexity")
    values = np.asarray(v, dtype=np.float64)
    if role == "losses":
        with np.errstate(over="ignore"):
            values = np.exp(values)
    return _single_score(
        "perplexity", values, budgets, prune_subset, seed=seed, strict_official=strict_official,
        params={"prune_subset": prune_subset}, info={"score_role": role},
    )
