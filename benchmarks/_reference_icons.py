"""A faithful re-creation of the official ICONS specialist + generalist stages (princetonvisualai/icons @
b8ce8c86, ``icons/influence_matrix.py`` and ``generalist.py``; specs/icons.md §4, §5, §10), for benchmarks and
agreement tests. Not part of the toolkit.

What it keeps: torch ``F.normalize`` of the training rows (``merge_info``) and of the regular tasks' validation
rows, raw MME sub-task validation rows; per validation matrix the **full float32 influence matrix**
``M = G · Vᵀ`` (N × m), reduced by ``torch.mean(M, dim=1)``; MME = element-wise max over its sub-task row means;
per task ``numpy.percentile(s, 100 - top_percent)``, ``s >= thr``, votes = sum; ``k = int(top_percent/100 · N)``;
``numpy.argsort(votes)[-k:]`` (default, unstable sort). What it drops: the chunk files, the directory scan,
``torch.save``/``torch.load`` of the matrices and the JSON output.

Usage::

    from _reference_icons import official_icons_select
    out = official_icons_select(train, {"gqa": Vg, "pope": Vp}, {"color": Vc, "count": Vn}, top_percent=20)
    out["selected"]   # int64 array, official order
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def official_icons_select(
    train: np.ndarray,
    regular: Mapping[str, np.ndarray],
    mme_subtasks: Mapping[str, np.ndarray] | None = None,
    *,
    top_percent: float = 20,
) -> dict[str, Any]:
    """Run the official specialist + generalist on arrays; columns: ``mme`` first (if any), then ``regular``
    in the mapping's order (the vote does not depend on the column order)."""
    import torch

    gtr = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(train, dtype=np.float32)), dim=1)

    def influence(val: np.ndarray, normalise: bool) -> torch.Tensor:
        v = torch.from_numpy(np.ascontiguousarray(val, dtype=np.float32))
        if normalise:
            v = torch.nn.functional.normalize(v, dim=1)
        return gtr @ v.T  # influence_matrix.py: the N × m matrix

    columns: list[np.ndarray] = []
    names: list[str] = []
    if mme_subtasks:
        per_sub = [torch.mean(influence(v, False), dim=1) for v in mme_subtasks.values()]
        columns.append(torch.stack(per_sub).max(dim=0).values.numpy())
        names.append("mme")
    for name, v in regular.items():
        columns.append(torch.mean(influence(v, True), dim=1).numpy())
        names.append(name)
    scores = np.stack(columns, axis=1)
    thresholds = np.asarray([np.percentile(scores[:, c], 100 - top_percent) for c in range(scores.shape[1])])
    mark = np.stack([scores[:, c] >= thresholds[c] for c in range(scores.shape[1])], axis=1)
    votes = mark.sum(axis=1).astype(np.int64)
    k = int((top_percent / 100) * scores.shape[0])
    selected = np.argsort(votes)[-k:]
    return {
        "selected": selected.astype(np.int64),
        "votes": votes,
        "task_scores": scores,
        "task_names": names,
        "thresholds": thresholds,
        "k": k,
    }
