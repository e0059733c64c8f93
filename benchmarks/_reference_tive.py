"""A faithful re-creation of the official TIVE selection stage (``select_data_TIVE.py`` of RUCAIBox/TIVE @
d2bad95, specs/tive.md §5.7), for benchmarks and agreement tests. Not part of the toolkit.

What it keeps from the official script: the first-appearance task order over non-``textcaps`` rows, the
float64 running norm sums, the quota formula and its truncation, torch ``F.normalize`` of the whole feature
matrix, the **full n_t × n_t Gram matrix per task** (row means; row blocks of 80,000 above 300,000 rows),
``softmax(q · score)`` then ``w / w.sum()`` in NumPy, whole-task copies, and one ``np.random.choice`` call per
task on NumPy's *global* legacy RNG, seeded once with ``np.random.seed(seed)`` (the official script never seeds;
the test packs were produced by seeding before running it). What it drops: reading the chunk files and the
JSON (arrays are passed in), writing the output JSON.

Usage::

    from _reference_tive import official_tive_select
    out = official_tive_select(features, norms, labels, p=0.15, q=0.001, seed=1234)
    out["selected_idx"]   # list of int, official order
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def official_tive_select(
    features: np.ndarray,
    norms: Sequence[float],
    labels: Sequence[str],
    *,
    p: float = 0.15,
    q: float = 0.001,
    seed: int = 1234,
    excluded_task: str = "textcaps",
) -> dict[str, Any]:
    """Run the official selection logic; returns ``selected_idx`` and the per-task intermediates."""
    import torch

    np.random.seed(seed)
    grads = list(norms)
    data = [{"dataset": str(t)} for t in labels]
    task_norm: dict[str, float] = {}
    task_idx: dict[str, list[int]] = {}
    for i, d in enumerate(data):
        if d["dataset"] == excluded_task:
            continue
        if d["dataset"] not in task_norm:
            task_norm[d["dataset"]] = 0.0
            task_idx[d["dataset"]] = []
        task_norm[d["dataset"]] += grads[i]
        task_idx[d["dataset"]].append(i)
    values = {t: task_norm[t] / len(task_idx[t]) for t in task_norm}
    total_value = 0.0
    for t in values:
        total_value += values[t]
    selected_data_size = p * len(data)
    x = torch.from_numpy(np.ascontiguousarray(features))
    x = torch.nn.functional.normalize(x, dim=1)
    selected_idx: list[int] = []
    per_task: dict[str, dict[str, Any]] = {}
    scores_all = np.full(len(data), np.nan, dtype=np.float32)
    weights_all = np.full(len(data), np.nan, dtype=np.float32)
    for t in task_norm:
        quota = task_norm[t] / len(task_idx[t]) / total_value * selected_data_size
        g = x[task_idx[t]]
        if len(task_idx[t]) > 300000:
            parts = [torch.mean(g[i : i + 80000] @ g.T, dim=1) for i in range(0, len(task_idx[t]), 80000)]
            score = torch.cat(parts)
        else:
            score = torch.mean(g @ g.T, dim=1)
        w = torch.softmax(q * score, dim=0).numpy()
        w = w / w.sum()
        scores_all[task_idx[t]] = score.numpy()
        weights_all[task_idx[t]] = w
        n_t = len(task_idx[t])
        if quota < n_t:
            copies, k = 0, int(quota)
        else:
            copies, k = int(quota // n_t), int(quota % n_t)
        for _ in range(copies):
            selected_idx.extend(task_idx[t])
        drawn = np.random.choice(task_idx[t], size=k, replace=False, p=w)
        selected_idx.extend(int(i) for i in drawn)
        per_task[t] = {"n": n_t, "value": values[t], "quota": quota, "copies": copies, "sampled": k}
    return {
        "selected_idx": selected_idx,
        "task_order": list(task_norm),
        "per_task": per_task,
        "total_task_value": total_value,
        "instance_scores": scores_all,
        "instance_weights": weights_all,
    }
