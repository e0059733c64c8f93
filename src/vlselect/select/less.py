"""LESS (Xia et al., 2024; ``princeton-nlp/LESS``): gradient-similarity selection against validation gradients.

Spec: ``specs/survey.md`` §5.2 (how LESS collects and normalises its gradients) and ``specs/icons.md`` (LESS's
``matching.py`` / ``write_selected_data`` as ICONS re-uses them).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from vlselect.errors import SelectionError
from vlselect.select.base import Budget, Param, Role, Selection, register_method, stable_order

__all__ = ["less_scores", "select_less"]


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(norm > 0, norm, 1.0)


def _group_val(arrays: Mapping[str, np.ndarray]) -> dict[str, list[tuple[str, np.ndarray]]]:
    """``val/TASK`` → one sub-task; ``val/TASK/SUB`` → sub-tasks of TASK."""
    groups: dict[str, list[tuple[str, np.ndarray]]] = {}
    for role in sorted(arrays):
        if not role.startswith("val/"):
            continue
        parts = role[4:].split("/", 1)
        groups.setdefault(parts[0], []).append((parts[1] if len(parts) > 1 else parts[0], arrays[role]))
    return groups


def less_scores(
    train: np.ndarray,
    val: Mapping[str, Sequence[tuple[str, np.ndarray]]],
    *,
    normalize: bool = True,
    block_rows: int | None = None,
) -> dict[str, np.ndarray]:
    """Per target task, the LESS score of every training row.

    For a target task with validation sub-tasks S (LESS's ``N_SUBTASKS``; one sub-task when the task is given
    as a single array), the score is ``max_S mean_{v in S} <g_train, g_v>`` with every gradient L2-normalised
    when ``normalize`` (LESS normalises at merge time, so the inner product is a cosine). Because the mean is
    linear it is computed as ``<g_train, mean_v g_v>``: O(N d) over the training rows, in blocks (memmaps
    welcome: about 96 MB of float64 per block, pages released after each, one read of the training rows).
    """
    from vlselect.select.icons import block_rows_for, iter_row_blocks

    n = int(train.shape[0])
    d = int(np.prod(train.shape[1:]))
    targets: dict[str, np.ndarray] = {}
    cols: list[np.ndarray] = []
    layout: list[tuple[str, int]] = []
    for task, subs in val.items():
        for sub, v in subs:
            v = np.asarray(v, dtype=np.float64).reshape(-1, d) if np.asarray(v).size else np.zeros((0, d))
            if v.shape[1] != d:
                raise SelectionError(
                    f"less: validation gradients for {task}/{sub} are {v.shape[1]}-wide, training ones {d}-wide; "
                    "project both with the same projection"
                )
            if v.shape[0] == 0:
                raise SelectionError(f"less: validation input for {task}/{sub} has no rows")
            if normalize:
                v = _unit(v)
            cols.append(v.mean(axis=0))
            layout.append((task, len(cols) - 1))
    mean_val = np.stack(cols, axis=1)  # d x S
    sims = np.empty((n, mean_val.shape[1]), dtype=np.float64)
    flat = train.reshape(n, d) if train.ndim != 2 else train
    for s, e, b in iter_row_blocks(flat, block_rows or block_rows_for(d, 8), np.float64, desc="LESS: similarity"):
        if normalize:
            b = _unit(b)
        sims[s:e] = b @ mean_val
    for task in val:
        idx = [c for t, c in layout if t == task]
        targets[task] = sims[:, idx].max(axis=1)
    return targets


def less_combined_scores(arrays: Mapping[str, np.ndarray], *, normalize: bool, aggregation: str, name: str
                         ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """LESS's one ranking score per training row (the target tasks' :func:`less_scores` combined by ``max`` or
    ``mean``) and the per-target scores; ``name`` is the method named in the error for missing targets."""
    val = _group_val(arrays)
    if not val:
        raise SelectionError(f"{name} needs at least one validation input; pass --input val/TASK=PATH")
    per_task = less_scores(arrays["train"], val, normalize=normalize)
    stacked = np.stack([per_task[t] for t in sorted(per_task)], axis=1)
    return (stacked.max(axis=1) if aggregation == "max" else stacked.mean(axis=1)), per_task


@register_method(
    "less",
    roles=(
        Role("train", "per-row projected training gradients (Adam-preconditioned in LESS)"),
        Role("val/*", "validation gradients of one target task (val/TASK) or of one of its sub-tasks (val/TASK/SUB)",
             aligned=False),
    ),
    params=(
        Param("normalize", True, bool, "L2-normalise every gradient (LESS merges normalised gradients)"),
        Param("aggregation", "max", str, "how the target tasks' scores are combined into one: max or mean",
              choices=("max", "mean")),
    ),
    summary="LESS: cosine similarity to the validation gradients (mean per sub-task, max over sub-tasks), top-k.",
    reference="princeton-nlp/LESS matching.py, write_selected_data.py; specs/survey.md §5.2",
)
def select_less(
    arrays: Mapping[str, np.ndarray],
    tasks: np.ndarray | None,
    budgets: Sequence[Budget],
    *,
    seed: int = 0,
    strict_official: bool = False,
    normalize: bool = True,
    aggregation: str = "max",
) -> list[Selection]:
    """LESS selection: score = influence against the target tasks, keep the top ``count``.

    Parameters
    ----------
    arrays : ``train`` (N x d) and one or more ``val/TASK`` or ``val/TASK/SUB`` (rows x d).
    normalize : L2-normalise the gradients (default True, as LESS's merge step does).
    aggregation : LESS writes one ranking per target task; with several targets the per-task scores are
        combined by ``max`` (default) or ``mean`` into one ranking.

    Returns
    -------
    list of Selection, top ``count`` by score descending (ties by row index; ``torch.sort`` order in LESS is
    not stable). ``info["task_scores_max"]`` gives the best score per target task.

    References
    ----------
    LESS ``less/data_selection/matching.py`` (sum over checkpoints of ``train @ val.T``, mean over a sub-task's
    validation rows, max over sub-tasks) and ``write_selected_data.py`` (sort descending, keep the top).
    A single checkpoint is used here: pass one gradient set per role.
    """
    score, per_task = less_combined_scores(arrays, normalize=normalize, aggregation=aggregation, name="less")
    order = stable_order(score, descending=True)
    info = {"targets": sorted(per_task), "task_scores_max": {t: float(np.max(v)) for t, v in per_task.items()}}
    return [
        Selection(order[: b.count].copy(), score, "less", b,
                  {"normalize": normalize, "aggregation": aggregation}, seed, strict_official, dict(info))
        for b in budgets
    ]
