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
    budget_items,
    parse_budgets,
    register_method,
    resolve_budget,
    stable_order,
    str_labels,
)

# Importing a module registers its methods.
from vlselect.select import baselines, coincide, composite, d2pruning, icons, less, semdedup, tive  # noqa: E402,F401

__all__ = [
    "REGISTRY",
    "SEED",
    "Budget",
    "MethodInfo",
    "Param",
    "Role",
    "Selection",
    "find_nonfinite_rows",
    "row_mask",
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
    from vlselect.select.icons import _release

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


#: The run seed's constraints (NumPy's legacy ``RandomState`` takes 0 <= seed < 2**32).
SEED = Param("seed", 0, int, "the run seed", ge=0, lt=2**32)


def row_mask(arr: Any) -> np.ndarray | None:
    """The missing-row mask an array carries (``arr.missing``: True where the row was not computed), or None.

    :meth:`vlselect.features.FeatureStore.array` hands out arrays that carry their store's mask, so
    ``run_method(..., {"features": store.array("activations")}, ...)`` never selects a missing row. A slice or a
    copy of such an array does not carry it (its rows are no longer the pool's): pass ``exclude=`` then.
    """
    mask = getattr(arr, "missing", None)
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (int(arr.shape[0]),):
        raise SelectionError(f"an input's missing-row mask has shape {mask.shape} for {int(arr.shape[0])} rows; "
                             "the mask needs one entry per row")
    return mask


def _first(rows: np.ndarray, k: int = 10) -> str:
    head = ", ".join(str(int(r)) for r in rows[:k])
    return head + (", ..." if rows.size > k else "")


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
        Role → array (``numpy.memmap`` welcome). Aligned roles have one row per pool row. An array from
        :meth:`vlselect.features.FeatureStore.array` carries its store's missing-row mask (:func:`row_mask`):
        those rows are never selected.
    budget:
        A fraction (``0.2``), a count (``4000``, ``"n4000"``), a comma string or a list of either
        (:func:`resolve_budget`; the string ``"1"`` is refused as ambiguous). Resolved against the
        *selectable* rows: the pool less the excluded rows (missing, caller-excluded, NaN or inf).
    tasks:
        One task label per pool row (required by methods with ``needs_tasks``).
    seed, strict_official, params:
        As documented per method; ``params`` uses the official names (aliases accepted) and is checked against
        each parameter's declared type, interval and choices before any work. A ``seed`` entry in ``params``
        (the official scripts' name, e.g. COINCIDE's k-means seed, TIVE's ``numpy_seed``) sets ``seed`` unless
        the method declares its own ``seed`` parameter.
    exclude:
        Pool rows to leave out in every mode (row numbers or a boolean mask), added to the masks the inputs
        carry.

    Returns
    -------
    list of Selection, in the order of the budgets given. ``Selection.info["excluded_rows"]`` says how many rows
    were excluded and why (``missing``: recorded missing or caller-excluded; ``nonfinite``: NaN or inf), and
    ``Selection.seeds`` every seed used, by name.

    Notes
    -----
    Excluded rows (issue 5, item 9; issue 11). Rows an input's mask or ``exclude`` names are *missing*: left out
    in every mode. Every aligned input is also scanned block-wise for NaN or inf (:func:`find_nonfinite_rows`);
    by default such rows are left out too (with ``strict_official=True`` they are passed through as the official
    code would see them, with a warning). The method runs on the remaining rows, its indices are mapped back to
    pool rows and its scores are NaN on the excluded rows. A large memmap input (over 512 MB) with excluded
    rows is filtered into a temporary memmap block by block, so its rows are never all in RAM at once; a clean
    input is passed through untouched. Validation (non-aligned) inputs lose their missing and non-finite rows
    the same way. One :class:`RuntimeWarning` per cause says what was excluded.
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
        task_arr = str_labels(tasks)
        if lengths and task_arr.shape[0] != n:
            raise SelectionError(f"{task_arr.shape[0]} task labels for {n} rows; give one label per pool row")
    if method.needs_tasks and task_arr is None:
        raise SelectionError(f"method {name!r} needs task labels; pass --pool FILE or --tasks TASKS.json")
    given = dict(params or {})
    if "seed" in given and not any(p.name == "seed" or "seed" in p.aliases for p in method.params):
        seed = given.pop("seed")
    seed = SEED.convert(seed)
    resolved = method.resolve_params(given)
    items = budget_items(budget)
    budgets = [resolve_budget(i, n) for i in items]  # a bad budget fails before any array is read

    # ---- missing rows: the masks the inputs carry, and the caller's exclusions
    missing = np.zeros(n, dtype=bool)
    missing_by: dict[str, np.ndarray] = {}
    val_drop: dict[str, np.ndarray] = {}
    for role, arr in arrays.items():
        mask = row_mask(arr)
        if mask is None or not mask.any():
            continue
        if role in lengths:
            missing |= mask
            missing_by[f"input {role}"] = np.flatnonzero(mask)
        else:
            val_drop[role] = mask.copy()
    if exclude is not None:
        ex = np.asarray(exclude)
        forced = np.zeros(n, dtype=bool)
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
            missing |= forced
            missing_by["exclude"] = np.flatnonzero(forced)

    # ---- non-finite rows
    nonfinite = np.zeros(n, dtype=bool)
    nonfinite_by: dict[str, np.ndarray] = {}
    for role, arr in arrays.items():
        if role in lengths and method.role_for(role).checks_finite:
            continue  # the method excludes (default) or passes through (strict) these rows in its own pass
        rows = find_nonfinite_rows(arr)
        if not rows.size:
            continue
        nonfinite_by[role] = rows
        if role in lengths:
            nonfinite[rows] = True
        else:
            drop = val_drop.setdefault(role, np.zeros(int(arr.shape[0]), dtype=bool))
            if not strict_official:
                drop[rows] = True
    passed_through = bool(strict_official and nonfinite.any())
    bad = missing | (nonfinite & ~missing if not strict_official else np.zeros(n, dtype=bool))
    excl = np.flatnonzero(bad)
    m = n - int(excl.size)
    excluded_info: dict[str, Any] = {
        "count": int(excl.size),
        "rows": excl[:20].tolist(),
        "missing": int(missing.sum()),
        "nonfinite": int((nonfinite & ~missing).sum()) if not strict_official else 0,
        "selectable": m,
        "by_role": {r: int(v.size) for r, v in nonfinite_by.items()},
        "first_by_role": {r: v[:10].tolist() for r, v in nonfinite_by.items()},
        "missing_by": {k: int(v.size) for k, v in missing_by.items()},
        "passed_through": passed_through,
    }
    if missing.any():
        where = "; ".join(f"{k}: {v.size} row(s), first {_first(v)}" for k, v in missing_by.items())
        where = where.replace("exclude:", "passed in exclude:")
        warnings.warn(f"{name}: {int(missing.sum())} pool row(s) excluded as missing (rows a feature store could "
                      f"not compute, e.g. an unreadable image under --skip-bad, or rows passed in exclude); {where}",
                      RuntimeWarning, stacklevel=2)
    if nonfinite_by:
        where = "; ".join(f"{r}: {v.size} row(s), first {_first(v)}" for r, v in nonfinite_by.items())
        if strict_official:
            warnings.warn(f"{name}: rows with NaN or inf passed through as the official code would "
                          f"(strict_official); {where}", RuntimeWarning, stacklevel=2)
        else:
            k = int((nonfinite & ~missing).sum())
            warnings.warn(f"{name}: {k} pool row(s) with NaN or inf excluded; {where}", RuntimeWarning, stacklevel=2)
    for role, drop in val_drop.items():
        if drop.any():
            arrays[role] = np.asarray(arrays[role])[~drop]
            if arrays[role].shape[0] == 0:
                raise SelectionError(f"{name}: every row of input {role} is missing or holds NaN or inf")
    if m == 0:
        raise SelectionError(f"{name}: every pool row is missing or holds NaN or inf; nothing to select from")
    if m != n:
        budgets = [resolve_budget(i, m, pool_rows=n) for i in items]
    if not bad.any():
        sels = method.fn(arrays, task_arr, budgets, seed=seed, strict_official=strict_official, **resolved)
    else:
        import shutil
        import tempfile

        keep_idx = np.flatnonzero(~bad).astype(np.int64)
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
        try:
            sels = method.fn(sub_arrays, sub_tasks, budgets, seed=seed, strict_official=strict_official,
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
            s.budget = Budget(count=b.count, fraction=b.fraction, n=n, given=b.given)
    for s in sels:
        own = s.info.get("excluded_rows")
        s.info["excluded_rows"] = dict(excluded_info)
        if isinstance(own, dict) and own.get("count"):  # NaN/inf rows a checks_finite method found in its own pass
            k = int(own["count"])
            s.info["excluded_rows"].update(count=excluded_info["count"] + k,
                                           nonfinite=excluded_info["nonfinite"] + k,
                                           selectable=excluded_info["selectable"] - k, found_by_method=own)
        elif isinstance(own, (int, np.integer)) and not isinstance(own, bool):
            s.info["out_of_scope_rows"] = int(own)  # TIVE: rows of tasks left out of the budget
        if not s.params:
            s.params = dict(resolved)
        s.seed = seed
        s.strict_official = strict_official
        s.seeds = {"seed": int(seed), **{k: int(v) for k, v in s.params.items()
                                         if k.endswith("seed") and isinstance(v, (int, np.integer))
                                         and not isinstance(v, bool)}}
    return sels
