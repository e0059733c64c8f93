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
from vlselect.select import baselines, coincide, composite, d2pruning, icons, less, semdedup, tive  # noqa: E402,F401

__all__ = [
    "REGISTRY",
    "Budget",
    "MethodInfo",
    "Param",
    "Role",
    "Selection",
    "find_nonfinite_rows",
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


#: Above this size an aligned memmap with bad rows is filtered into a temporary memmap, block by block, instead of
#: being copied into RAM (a 665K x 5120 float16 matrix is 6.8 GB).
_COPY_LIMIT_BYTES = 512 << 20


def _take_rows_to_memmap(arr: np.ndarray, rows: np.ndarray, path: str, block_rows: int = 8192) -> np.ndarray:
    """``arr[rows]`` written block by block to a new ``.npy`` at ``path`` and returned as a read-only memmap."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=arr.dtype, shape=(rows.shape[0],) + tuple(arr.shape[1:]))
    for s in range(0, rows.shape[0], block_rows):
        r = rows[s:s + block_rows]
        out[s:s + r.shape[0]] = arr[r]
        out.flush()
        _release_pages(out, s, s + r.shape[0])
        if r.size:
            _release_pages(arr, int(r[0]), int(r[-1]) + 1)
    del out
    return np.load(path, mmap_mode="r")


def _release_pages(arr: np.ndarray, a: int, b: int) -> None:
    """Drop a memmap's pages for rows [a, b) from the resident set (the one helper lives in icons.py)."""
    try:
        from vlselect.select.icons import _release
    except ImportError:  # pragma: no cover
        return
    if isinstance(arr, np.memmap):
        _release(arr, a, b)


def find_nonfinite_rows(arr: np.ndarray, *, block_rows: int | None = None) -> np.ndarray:
    """Row numbers of ``arr`` that hold a NaN or an inf, found block by block (a memmap is never copied whole).

    Each block is reduced to a float64 row sum (one pass, no boolean copy of the block); only rows whose sum is
    not finite are checked element by element, so a clean 665K x 5120 float16 memmap costs one read.
    """
    a = arr
    n = int(a.shape[0])
    if n == 0 or not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.integer):
        return np.zeros(0, dtype=np.int64)
    width = int(np.prod(a.shape[1:])) if a.ndim > 1 else 1
    if block_rows is None:
        block_rows = max(1, (64 << 20) // max(1, width * a.dtype.itemsize))
    bad: list[np.ndarray] = []
    for start in range(0, n, block_rows):
        block = np.asarray(a[start:start + block_rows])
        flat = block.reshape(block.shape[0], -1) if block.ndim != 2 else block
        if flat.ndim == 1:
            rows = np.flatnonzero(~np.isfinite(flat))
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                sums = flat.sum(axis=1, dtype=np.float64)
            cand = np.flatnonzero(~np.isfinite(sums))
            rows = cand[~np.isfinite(flat[cand]).all(axis=1)] if cand.size else cand
        if rows.size:
            bad.append(rows.astype(np.int64) + start)
        del block, flat
        _release_pages(a, start, min(n, start + block_rows))
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def run_method(
    name: str,
    inputs: Mapping[str, np.ndarray],
    budget: int | float | str | Sequence[int | float | str],
    *,
    tasks: Sequence[str] | np.ndarray | None = None,
    seed: int = 0,
    strict_official: bool = False,
    params: Mapping[str, Any] | None = None,
    exclude: Sequence[int] | np.ndarray | None = None,
) -> list[Selection]:
    """Run one method at one or more budgets (one scoring pass, one :class:`Selection` per budget).

    Parameters
    ----------
    name:
        A key of :data:`REGISTRY` (``vlselect select --list``).
    inputs:
        Role → array (``numpy.memmap`` welcome). Aligned roles have one row per pool row.
    budget:
        A fraction (``0.2``), a count (``4000``), a comma string or a list of either. Resolved against the
        whole pool (non-finite rows included).
    tasks:
        One task label per pool row (required by methods with ``needs_tasks``).
    seed, strict_official, params:
        As documented per method; ``params`` uses the official names (aliases accepted). A ``seed`` entry in
        ``params`` (the official scripts' name, e.g. COINCIDE's k-means seed, TIVE's ``numpy_seed``) sets
        ``seed`` unless the method declares its own ``seed`` parameter.
    exclude:
        Pool rows to leave out in every mode (row numbers or a boolean mask), e.g. rows a feature store records
        as missing. Reported with the non-finite rows.

    Returns
    -------
    list of Selection, in the order of the budgets given.

    Notes
    -----
    Bad rows (issue 5, item 9). Every aligned input is scanned block-wise for NaN or inf
    (:func:`find_nonfinite_rows`). By default such rows are excluded from every input and the task list; the
    method runs on the finite rows, its indices are mapped back to pool rows, its scores are NaN on the
    excluded rows, and ``Selection.info["excluded_rows"]`` records the count and the first row numbers. The
    budget count stays the one resolved on the whole pool (a shortfall is reported if too few rows are left).
    A large memmap input (over 512 MB) with bad rows is filtered into a temporary memmap block by block, so
    its finite rows are never all in RAM at once; a clean input is passed through untouched.
    Validation (non-aligned) inputs lose their non-finite rows the same way. With ``strict_official=True`` the
    rows are passed through as the official code would see them, with a warning.
    """
    import warnings

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
    if not lengths and tasks is None:
        raise SelectionError(
            f"method {name!r} cannot tell the pool size: give --pool FILE or --tasks TASKS.json, or a row-aligned input"
        )
    n = next(iter(lengths.values())) if lengths else len(tasks)
    task_arr = None
    if tasks is not None:
        task_arr = np.asarray([str(t) for t in tasks], dtype=object)
        if lengths and task_arr.shape[0] != n:
            raise SelectionError(f"{task_arr.shape[0]} task labels for {n} rows; give one label per pool row")
    if method.needs_tasks and task_arr is None:
        raise SelectionError(f"method {name!r} needs task labels; pass --pool FILE or --tasks TASKS.json")
    given = dict(params or {})
    if "seed" in given and not any(p.name == "seed" or "seed" in p.aliases for p in method.params):
        seed = int(str(given.pop("seed")).strip())
    resolved = method.resolve_params(given)
    budgets = parse_budgets(budget if not isinstance(budget, (list, tuple)) else list(budget), n)

    # ---- non-finite rows
    bad_by_role: dict[str, list[int]] = {}
    bad_count: dict[str, int] = {}
    bad = np.zeros(n, dtype=bool)
    val_drop: dict[str, np.ndarray] = {}
    for role, arr in arrays.items():
        if role in lengths and method.role_for(role).checks_finite:
            continue  # the method excludes (default) or passes through (strict) these rows in its own pass
        rows = find_nonfinite_rows(arr)
        if not rows.size:
            continue
        bad_count[role] = int(rows.size)
        bad_by_role[role] = rows[:10].tolist()
        if role in lengths:
            bad[rows] = True
        else:
            val_drop[role] = rows
    excluded_info: dict[str, Any] | None = None
    forced = np.zeros(n, dtype=bool)
    if exclude is not None:
        ex = np.asarray(exclude)
        if ex.dtype == bool:
            if ex.shape != (n,):
                raise SelectionError(f"exclude mask has {ex.shape[0]} entries for {n} rows")
            forced = ex.copy()
        elif ex.size:
            ex = ex.astype(np.int64)
            if ex.min() < 0 or ex.max() >= n:
                raise SelectionError(f"exclude holds row numbers outside 0..{n - 1}")
            forced[ex] = True
        if forced.any():
            bad_count["(excluded by the caller)"] = int(forced.sum())
            bad_by_role["(excluded by the caller)"] = np.flatnonzero(forced)[:10].tolist()
    if bad_count:
        where = "; ".join(f"{r}: {bad_count[r]} row(s), first {bad_by_role[r]}" for r in bad_count)
        if strict_official:
            warnings.warn(
                f"{name}: NaN or inf rows passed through as the official code would (strict_official): {where}",
                RuntimeWarning,
                stacklevel=2,
            )
            excl = np.flatnonzero(forced)
            excluded_info = {"count": int(excl.size), "rows": excl[:20].tolist(), "by_role": bad_count,
                             "first_by_role": bad_by_role, "passed_through": bool(bad.any())}
            bad = forced
        else:
            bad = bad | forced
            excl = np.flatnonzero(bad)
            excluded_info = {"count": int(excl.size), "rows": excl[:20].tolist(), "by_role": bad_count,
                             "first_by_role": bad_by_role, "passed_through": False}
            warnings.warn(
                f"{name}: {excl.size} pool row(s) with NaN or inf excluded ({where})", RuntimeWarning, stacklevel=2
            )
            for role, rows in val_drop.items():
                keep_v = np.ones(arrays[role].shape[0], dtype=bool)
                keep_v[rows] = False
                arrays[role] = np.asarray(arrays[role])[keep_v]
    if not bad.any():
        sels = method.fn(arrays, task_arr, budgets, seed=seed, strict_official=strict_official, **resolved)
        for s in sels:
            if excluded_info is not None:
                s.info.setdefault("excluded_rows", excluded_info)
    else:
        import shutil
        import tempfile

        keep_idx = np.flatnonzero(~bad).astype(np.int64)
        m = int(keep_idx.size)
        if m == 0:
            raise SelectionError(f"{name}: every row of the input holds NaN or inf; nothing to select from")
        tmpdir: str | None = None
        sub_arrays = {}
        for k, v in arrays.items():
            if k not in lengths:
                sub_arrays[k] = v
            elif isinstance(v, np.memmap) and v.nbytes > _COPY_LIMIT_BYTES:
                tmpdir = tmpdir or tempfile.mkdtemp(prefix="vlselect_finite_")
                sub_arrays[k] = _take_rows_to_memmap(v, keep_idx, f"{tmpdir}/{k.replace('/', '_')}.npy")
            else:
                sub_arrays[k] = np.asarray(v[keep_idx])
        sub_tasks = task_arr[keep_idx] if task_arr is not None else None
        sub_budgets = [Budget(count=min(b.count, m), fraction=b.fraction, n=m, given=b.given) for b in budgets]
        try:
            sels = method.fn(sub_arrays, sub_tasks, sub_budgets, seed=seed, strict_official=strict_official,
                             **resolved)
        finally:
            sub_arrays.clear()
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
        for s, b in zip(sels, budgets):
            s.indices = keep_idx[s.indices]
            if s.scores is not None:
                full = np.full(n, np.nan, dtype=np.float64)
                full[keep_idx] = np.asarray(s.scores, dtype=np.float64)
                s.scores = full
            s.budget = b
            s.info["excluded_rows"] = excluded_info
    for s in sels:
        if not s.params:
            s.params = dict(resolved)
        s.seed = seed
        s.strict_official = strict_official
    return sels
