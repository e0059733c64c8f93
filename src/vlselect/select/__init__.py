"""Selection methods: pure functions of arrays, task labels, a budget and parameters → :class:`Selection`.

Use :func:`run_method` (or the CLI ``vlselect select``); :data:`REGISTRY` lists every method with its roles and
parameters.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from vlselect.errors import SelectionError
from vlselect.select.base import (
    REGISTRY,
    Budget,
    MethodInfo,
    Param,
    Role,
    Selection,
    parse_budgets,
    register_method,
    resolve_budget,
    stable_order,
)

# Importing a module registers its methods.
from vlselect.select import baselines, coincide, d2pruning, icons, less, semdedup, tive  # noqa: E402,F401

__all__ = [
    "REGISTRY",
    "Budget",
    "MethodInfo",
    "Param",
    "Role",
    "Selection",
    "get_method",
    "parse_budgets",
    "register_method",
    "resolve_budget",
    "run_method",
    "stable_order",
]


def get_method(name: str) -> MethodInfo:
    """The registered method called ``name``; a :class:`SelectionError` listing the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise SelectionError(
            f"unknown selection method {name!r}; known methods: {', '.join(sorted(REGISTRY))}"
        ) from None


def run_method(
    name: str,
    inputs: Mapping[str, np.ndarray],
    budget: int | float | str | Sequence[int | float | str],
    *,
    tasks: Sequence[str] | np.ndarray | None = None,
    seed: int = 0,
    strict_official: bool = False,
    params: Mapping[str, Any] | None = None,
) -> list[Selection]:
    """Run one method at one or more budgets (one scoring pass, one :class:`Selection` per budget).

    Parameters
    ----------
    name:
        A key of :data:`REGISTRY` (``vlselect select --list``).
    inputs:
        Role → array (``numpy.memmap`` welcome). Aligned roles have one row per pool row.
    budget:
        A fraction (``0.2``), a count (``4000``), a comma string or a list of either.
    tasks:
        One task label per pool row (required by methods with ``needs_tasks``).
    seed, strict_official, params:
        As documented per method; ``params`` uses the official names (aliases accepted).

    Returns
    -------
    list of Selection, in the order of the budgets given.
    """
    method = get_method(name)
    arrays: dict[str, np.ndarray] = {}
    for role, arr in inputs.items():
        method.role_for(role)
        arrays[role] = arr
    for r in method.roles:
        if r.required and not any(r.matches(k) for k in arrays):
            raise SelectionError(f"method {name!r} needs the input role {r.name!r} ({r.help}); pass --input {r.name}=PATH")
    aligned = [k for k in arrays if method.role_for(k).aligned]
    lengths = {k: int(arrays[k].shape[0]) for k in aligned}
    if len(set(lengths.values())) > 1:
        raise SelectionError(f"inputs of {name!r} have different row counts: {lengths}; every aligned input needs one row per pool row")
    n = next(iter(lengths.values())) if lengths else (len(tasks) if tasks is not None else 0)
    task_arr = None
    if tasks is not None:
        task_arr = np.asarray([str(t) for t in tasks], dtype=object)
        if lengths and task_arr.shape[0] != n:
            raise SelectionError(f"{task_arr.shape[0]} task labels for {n} rows; give one label per pool row")
    if method.needs_tasks and task_arr is None:
        raise SelectionError(f"method {name!r} needs task labels; pass --pool FILE or --tasks TASKS.json")
    resolved = method.resolve_params(params)
    budgets = parse_budgets(budget if not isinstance(budget, (list, tuple)) else list(budget), n)
    return method.fn(arrays, task_arr, budgets, seed=seed, strict_official=strict_official, **resolved)
