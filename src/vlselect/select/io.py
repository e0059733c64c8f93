"""Files in and out of selection: role inputs (FeatureStore arrays, ``.npy`` memmaps, ``.json`` lists), task
labels, and the per-budget output folder. The methods themselves stay pure (DESIGN.md); this module is what the
``vlselect select`` command and Python users call around :func:`vlselect.select.run_method`.

Output layout (issue 5, item 6): with one budget the files go straight into ``DIR``; with several, into
``DIR/<budget.label>/`` (``frac0.2``, ``n4000``). Each folder holds ``indices.npy`` (int64, priority order),
``scores.npy`` (float64, one per pool row, NaN where unscored), ``manifest.json`` and, when a pool was given,
``subset.json`` (LLaVA records) and ``ids.txt`` (DataOptim id list).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vlselect.errors import ConfigError, FeatureError, PoolError, SelectionError
from vlselect.select.base import Selection

__all__ = [
    "DEFAULT_ARRAY",
    "LoadedInput",
    "load_input",
    "load_inputs",
    "load_tasks",
    "output_dirs",
    "parse_input_spec",
    "parse_param_specs",
    "pool_lengths",
    "task_counts",
    "write_selection",
]

#: The FeatureStore array read for a role when ``PATH`` names no array (``DIR:array`` overrides).
DEFAULT_ARRAY: dict[str, str] = {
    "features": "activations",
    "train": "gradients",
    "norms": "grad_norms",
    "losses": "loss",
    "el2n": "el2n",
    "perplexity": "perplexity",
    "val/*": "gradients",
}


@dataclass
class LoadedInput:
    """One role's array and where it came from (recorded in the manifest)."""

    role: str
    array: np.ndarray
    path: str
    kind: str  # "feature_store" | "npy" | "json"
    array_name: str | None = None
    pool_fingerprint: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    missing: np.ndarray | None = None  # bool per row: rows the feature store records as not computed

    def describe(self) -> dict[str, Any]:
        d = {
            "role": self.role,
            "path": self.path,
            "kind": self.kind,
            "array": self.array_name,
            "shape": list(self.array.shape),
            "dtype": str(self.array.dtype),
        }
        if self.pool_fingerprint:
            d["pool_fingerprint"] = self.pool_fingerprint
        d.update(self.meta)
        return d


def parse_input_spec(text: str) -> tuple[str, str, str | None]:
    """``ROLE=PATH`` or ``ROLE=DIR:array`` → ``(role, path, array)``."""
    if "=" not in text:
        raise ConfigError(f"--input {text!r}: expected ROLE=PATH, e.g. --input features=feats/ or features=x.npy")
    role, path = text.split("=", 1)
    role, path = role.strip(), path.strip()
    if not role or not path:
        raise ConfigError(f"--input {text!r}: expected ROLE=PATH with both parts, e.g. --input train=grads/")
    array = None
    if ":" in path and not Path(path).exists():
        head, tail = path.rsplit(":", 1)
        if head and tail and "/" not in tail and "\\" not in tail:
            path, array = head, tail
    return role, path, array


def parse_param_specs(items: Sequence[str]) -> dict[str, str]:
    """``["K=300", "temp=0.1"]`` → ``{"K": "300", "temp": "0.1"}``; a repeated name is an error."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--param {item!r}: expected NAME=VALUE, e.g. --param temp=0.1")
        k, v = item.split("=", 1)
        k = k.strip()
        if not k:
            raise ConfigError(f"--param {item!r}: the parameter name is empty; expected NAME=VALUE")
        if k in out:
            raise ConfigError(f"--param {k} given twice ({out[k]!r} and {v!r}); give it once")
        out[k] = v.strip()
    return out


def _default_array_for(role: str) -> str | None:
    if role in DEFAULT_ARRAY:
        return DEFAULT_ARRAY[role]
    if role.startswith("val/"):
        return DEFAULT_ARRAY["val/*"]
    return None


def _file_digest(path: Path, full_limit: int = 256 << 20) -> dict[str, Any]:
    """md5 of the file when it is small; for a large file, md5 of its size, first and last 4 MiB (a quick
    identity check, named ``sample_md5``)."""
    size = path.stat().st_size
    h = hashlib.md5()
    with open(path, "rb") as f:
        if size <= full_limit:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
            return {"bytes": size, "md5": h.hexdigest()}
        h.update(str(size).encode())
        h.update(f.read(4 << 20))
        f.seek(max(0, size - (4 << 20)))
        h.update(f.read(4 << 20))
    return {"bytes": size, "sample_md5": h.hexdigest()}


def _open_store(path: Path):
    try:
        from vlselect.features import FeatureStore  # type: ignore[attr-defined]
    except ImportError:
        raise FeatureError(
            f"{path} is a directory but vlselect.features.FeatureStore is not available to read it; "
            "pass a .npy file instead"
        ) from None
    try:
        return FeatureStore.open(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FeatureError(f"{path}: cannot open as a feature store ({type(exc).__name__}: {exc}); fix: pass a "
                           "directory written by 'vlselect features ...' (recompute it if it is damaged) or a .npy "
                           "file") from None


def load_input(role: str, path: str | os.PathLike[str], array: str | None = None,
               store_arrays: Sequence[str] = ()) -> LoadedInput:
    """Load one role input: a FeatureStore directory (``array``, else the first of the method's ``store_arrays``
    the store has, else the role's default array), a ``.npy`` file (memory-mapped, never copied) or a ``.json``
    list (1-D or 2-D numbers)."""
    p = Path(path)
    if not p.exists():
        raise FeatureError(f"input {role}={path}: no such file or directory; check the path (give ROLE=PATH)")
    if p.is_dir():
        store = _open_store(p)
        names = list(store.names())
        if array is None and store_arrays:
            array = next((a for a in store_arrays if a in names), None)
            if array is None:
                raise FeatureError(
                    f"input {role}={path}: the method reads array {' or '.join(map(repr, store_arrays))} for role "
                    f"{role!r} and this feature store has none (it has: {', '.join(names) or 'none'}); extract it "
                    f"(see 'vlselect select --list') or pick an array with {role}={path}:NAME"
                )
        name = array or _default_array_for(role)
        if name is None:
            if len(names) == 1:
                name = names[0]
            else:
                raise FeatureError(
                    f"input {role}={path}: no default array for role {role!r}; pick one with {role}={path}:NAME "
                    f"(the store has: {', '.join(names) or 'none'})"
                )
        if name not in names:
            raise FeatureError(
                f"input {role}={path}: the feature store has no array {name!r} (it has: {', '.join(names) or 'none'}); "
                f"pick one with {role}={path}:NAME"
            )
        meta: dict[str, Any] = {}
        arr = store.array(name)  # carries the store's missing-row mask (a corrupt missing.npy is a FeatureError)
        mask = np.asarray(arr.missing, dtype=bool)
        if mask.any():
            meta["missing_rows"] = {"count": int(mask.sum()), "first": np.flatnonzero(mask)[:10].tolist()}
        fp = store.manifest.get("pool_fingerprint")
        li = LoadedInput(role, arr, str(p), "feature_store", name, fp, meta)
        if mask.any():
            li.missing = mask
        return li
    if array is not None:
        raise FeatureError(f"input {role}={path}:{array}: ':{array}' picks an array of a feature store directory, and {path} is a file")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise FeatureError(f"input {role}={path}: not a readable .npy array ({exc}); save it with numpy.save") from None
        return LoadedInput(role, arr, str(p), "npy", None, None, _file_digest(p))
    if suffix == ".json":
        try:
            data = json.loads(p.read_text())
            arr = np.asarray(data, dtype=np.float64)
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
            raise FeatureError(f"input {role}={path}: expected a JSON list of numbers ({exc})") from None
        if arr.ndim == 0:
            raise FeatureError(f"input {role}={path}: expected a JSON list of numbers, one per row")
        return LoadedInput(role, arr, str(p), "json", None, None, _file_digest(p))
    raise FeatureError(f"input {role}={path}: unknown file type {suffix or '(none)'}; give a .npy, a .json list or a FeatureStore directory")


def load_inputs(
    specs: Sequence[str],
    *,
    aligned_roles: Mapping[str, bool],
    n_rows: int | None = None,
    rows_source: str | None = None,
    pool_fingerprint: str | None = None,
    pool_path: str | None = None,
    store_arrays: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, LoadedInput]:
    """Load every ``--input ROLE=PATH`` and check alignment: each aligned input must have ``n_rows`` rows (the
    pool's or the task list's, named by ``rows_source``) and the same count as every other aligned input; a
    feature store made for another pool (fingerprint) is refused. ``aligned_roles`` maps each role to whether
    it is row-aligned; ``store_arrays`` maps a role to the arrays the method reads from a store (see
    :func:`load_input`)."""
    loaded: dict[str, LoadedInput] = {}
    for spec in specs:
        role, path, array = parse_input_spec(spec)
        if role in loaded:
            raise ConfigError(f"--input {role} given twice ({loaded[role].path} and {path}); give each role once")
        li = load_input(role, path, array, (store_arrays or {}).get(role, ()))
        loaded[role] = li
        if (aligned_roles.get(role, True) and pool_fingerprint and li.pool_fingerprint
                and li.pool_fingerprint != pool_fingerprint):
            raise FeatureError(
                f"input {role}={path} was extracted for a different pool (fingerprint {li.pool_fingerprint}) than "
                f"{pool_path} (fingerprint {pool_fingerprint}); re-run feature extraction on this pool or pass the pool it was made for"
            )
    first: LoadedInput | None = None
    for li in loaded.values():
        if not aligned_roles.get(li.role, True):
            continue
        rows = int(li.array.shape[0])
        if n_rows is not None and rows != n_rows:
            raise FeatureError(
                f"input {li.role}={li.path} has {rows} rows but {rows_source} has {n_rows}; the rows must align "
                "one to one (same records, same order): extract features for this pool, or pass the matching pool"
            )
        if first is not None and rows != int(first.array.shape[0]):
            raise FeatureError(
                f"input {li.role}={li.path} has {rows} rows but {first.role}={first.path} has "
                f"{int(first.array.shape[0])}; aligned inputs need one row per pool row"
            )
        first = first or li
    return loaded


def pool_lengths(pool: Any) -> np.ndarray:
    """Per-row length as the COINCIDE repository measures it (``LazySupervisedDataset.lengths`` in
    ``train.py``): whitespace-separated words over all turns, plus 128 when the record has an image.

    Used by ``vlselect select length --pool FILE`` when no ``lengths`` input is given.
    """
    out = np.empty(len(pool), dtype=np.float64)
    for i in range(len(pool)):
        rec = pool.record(i)
        words = sum(len(str(turn.get("value", "")).split()) for turn in rec.get("conversations", []) or [])
        out[i] = words + (128 if rec.get("image") else 0)
    return out


def load_tasks(path: str | os.PathLike[str]) -> list[str]:
    """A ``--tasks`` file: a JSON list with one task label per row (read by
    :func:`vlselect.pool.io.read_task_labels`, the one reader of task-label files)."""
    from vlselect.pool.io import read_task_labels

    return read_task_labels(path).tolist()


def output_dirs(out: str | os.PathLike[str], selections: Sequence[Selection]) -> list[Path]:
    """Where each budget's files go: ``out`` itself for one budget, ``out/<budget.label>`` for several."""
    base = Path(out)
    if len(selections) == 1:
        return [base]
    labels = [s.budget.label for s in selections]
    if len(set(labels)) != len(labels):
        raise SelectionError(f"the budgets {', '.join(labels)} repeat; give each budget once")
    return [base / lab for lab in labels]


def task_counts(tasks: Sequence[str] | np.ndarray, indices: np.ndarray) -> list[tuple[str, int, int]]:
    """``(task, rows in pool, rows in subset)`` per task, sorted by task name."""
    from vlselect.select.base import factorize_labels

    names, inv = factorize_labels(tasks)  # = np.unique of the labels as str, by one dict pass
    pool_c = np.bincount(inv, minlength=len(names))
    sub_c = np.bincount(inv[np.asarray(indices, dtype=np.int64)], minlength=len(names)) if len(indices) else np.zeros(len(names), int)
    return [(str(n), int(p), int(s)) for n, p, s in zip(names, pool_c, sub_c)]


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def write_selection(
    sel: Selection,
    out_dir: str | os.PathLike[str],
    *,
    pool: Any = None,
    pool_path: str | None = None,
    tasks_path: str | None = None,
    inputs: Mapping[str, LoadedInput] | None = None,
    n_rows: int | None = None,
    tasks: Sequence[str] | np.ndarray | None = None,
    overwrite: bool = False,
) -> Path:
    """Write one budget's files into ``out_dir`` (atomically, file by file, ``manifest.json`` last) and return the
    folder.

    The folder is an artifact (:mod:`vlselect.artifact`): locked while written, keyed by the method, its
    parameters, the budget, the seed, the pool fingerprint and the inputs; a folder holding a selection of other
    inputs is an :class:`~vlselect.artifact.ArtifactMismatchError` (exit 2) unless ``overwrite``. The old
    ``manifest.json`` is removed before anything is rewritten, so a half-written folder never looks finished.

    ``indices.npy`` (int64, priority order), ``scores.npy`` (float64, one per pool row; NaN where the method
    gives no score), ``manifest.json``, and with a ``pool``: ``subset.json`` (``write_llava_subset``) and
    ``ids.txt`` (``write_dataoptim_ids``).

    The manifest is the project's one format (:func:`vlselect.pool.write_manifest`): ``pool`` (path,
    fingerprint, rows), ``method``, ``params`` (defaults included), ``budget``, ``seed``, ``versions``, and under
    ``extra``: ``strict_official``, ``seeds`` (every seed used, by name: ``seed``, ``kmeans_seed``, ...),
    ``selected``, ``shortfall``, ``excluded_rows``, ``inputs`` (path, kind,
    array, shape, dtype, md5 or the store's pool fingerprint), ``info``, ``task_counts``, ``tasks`` and ``files``.
    """
    from vlselect.artifact import Artifact, code_version, ids_digest

    d = Path(out_dir)
    n = n_rows if n_rows is not None else sel.budget.n
    config = {"method": sel.method, "params": _jsonable(sel.params), "budget": sel.budget.given, "seed": sel.seed,
              "strict_official": sel.strict_official, "n_rows": n}
    key_inputs = {"pool": getattr(pool, "fingerprint", None), "pool_path": pool_path,
                  "inputs": {r: _jsonable(li.describe()) for r, li in (inputs or {}).items()},
                  "tasks": None if tasks is None else ids_digest(str(t) for t in tasks), "tasks_path": tasks_path}
    art = Artifact(d, stage="select", config=config, inputs=key_inputs, code=code_version("vlselect.select"),
                   done_marker="manifest.json")
    with art.writing(overwrite=overwrite):
        (d / "manifest.json").unlink(missing_ok=True)  # from here on the folder does not look finished
        _write_selection_files(sel, d, n, pool=pool, tasks_path=tasks_path, inputs=inputs, tasks=tasks)
    return d


def _write_selection_files(sel: Selection, d: Path, n: int, *, pool, tasks_path, inputs, tasks) -> None:
    from vlselect.artifact import atomic_save_npy

    atomic_save_npy(d / "indices.npy", np.asarray(sel.indices, dtype=np.int64))
    kill = os.environ.get("VLSELECT_TEST_KILL_IN_EXPORT")
    if kill:  # fault-injection tests: die between two files of the export
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    scores = np.full(n, np.nan, dtype=np.float64) if sel.scores is None else np.asarray(sel.scores, dtype=np.float64)
    atomic_save_npy(d / "scores.npy", scores)
    extra: dict[str, Any] = {
        "strict_official": sel.strict_official,
        "seeds": _jsonable(sel.seeds or {"seed": sel.seed}),
        "selected": sel.count,
        "shortfall": sel.shortfall,
        "excluded_rows": _jsonable(sel.info.get("excluded_rows", {"count": 0, "rows": []})),
        "inputs": {r: li.describe() for r, li in (inputs or {}).items()},
        "info": _jsonable({k: v for k, v in sel.info.items() if k != "excluded_rows"}),
        "files": ["indices.npy", "scores.npy", "manifest.json"],
    }
    if tasks_path is not None:
        extra["tasks"] = {"path": tasks_path, **_file_digest(Path(tasks_path))}
    if tasks is not None:
        extra["task_counts"] = {t: {"pool": p, "subset": s} for t, p, s in task_counts(tasks, sel.indices)}
    from vlselect import pool as pool_mod

    if pool is not None:
        idx = np.asarray(sel.indices, dtype=np.int64)
        pool_mod.write_llava_subset(pool, idx, d / "subset.json")
        pool_mod.write_dataoptim_ids(pool, idx, d / "ids.txt")
        extra["files"] += ["subset.json", "ids.txt"]
    budget = {"given": sel.budget.given, "count": sel.budget.count, "fraction": sel.budget.fraction,
              "pool_rows": sel.budget.n, "label": sel.budget.label}
    pool_mod.write_manifest(d / "manifest.json", pool=pool, method=sel.method, params=_jsonable(sel.params),
                            budget=budget, seed=sel.seed, extra=extra)
