"""The :class:`FeatureStore`: per-row feature arrays on disk, sharded, resumable, rank-aware and mergeable.

Layout of a store directory::

    plan.json                  the store's content key: arrays {name: [width, dtype]}, n_rows, shard_size, meta
                               (model and adapter hashes, pool fingerprint, options), the digest of the exact
                               sample ids and the code version of the computing stage
    sample_ids.json            row → sample id (a JSON list, pool order)
    shards/<k>.<name>.npy      shard k's rows of array <name> (rows [k·shard_size, (k+1)·shard_size))
    shards/<k>.done.json       shard k is complete; lists its rows recorded missing (--skip-bad)
    <name>.npy                 after finalise: the whole array, rows in pool order (np.load(mmap_mode="r"))
    missing.npy                after finalise: bool per row, True where the row could not be computed
    manifest.json              written last, atomically: the store is finished

A folder is resumed (or reused, if finished) only when its plan equals the new one; otherwise
:meth:`FeatureStore.create` raises :class:`StoreMismatchError` ("DIR holds a result of other inputs: <what differs>;
pass --overwrite or another --out"), and ``overwrite=True`` empties it first. Writers hold a shared lock on the
folder (ranks and ``--shard`` jobs cooperate); ``--overwrite`` needs it alone.

Every file is written to a temporary name and renamed (:mod:`vlselect.artifact`), and a shard's ``done`` marker is written only after all
its arrays, so a run killed at any point (even SIGKILL) resumes from the finished shards and produces byte-identical
arrays. Which shards a process computes is decided outside the computation (DESIGN.md, "From datatrove"):
:meth:`FeatureStore.pending` takes ``rank`` / ``world_size`` (``torchrun``) or a ``--shard i/N`` pair (SLURM
arrays); shard ``k`` belongs to rank ``k % world_size``. Rows of a 1-D array (``width=None``) are scalars.

Examples
--------
>>> store = FeatureStore.create("out", arrays={"loss": (None, "float32")}, n_rows=10, shard_size=4,
...                             meta={"pool_fingerprint": "abc"}, sample_ids=[str(i) for i in range(10)])
>>> for shard in store.pending():                       # doctest: +SKIP
...     store.write_shard(shard.index, {"loss": compute(shard.start, shard.stop)})
>>> store.finalise()                                    # doctest: +SKIP
>>> FeatureStore.open("out").array("loss")               # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from vlselect.artifact import CREATE_LOCK, ArtifactMismatchError, FolderLock, atomic_path, clear_folder
from vlselect.artifact import atomic_save_npy as _atomic_save_npy
from vlselect.artifact import atomic_write_bytes as _atomic_write_bytes
from vlselect.artifact import atomic_write_json as _atomic_write_json
from vlselect.artifact import describe_difference, ids_digest, mismatch_error
from vlselect.errors import FeatureError
from vlselect.executor import parse_shard

FORMAT = "vlselect.features/1"
_PLAN = "plan.json"
_MANIFEST = "manifest.json"
_IDS = "sample_ids.json"


class StoreArray(np.memmap):
    """A finished store's array (a read-only memmap) that carries the store's missing-row mask as ``missing``
    (bool per row, True where the row could not be computed and holds zeros).

    :func:`vlselect.select.run_method` reads the mask, so an array handed straight from
    :meth:`FeatureStore.array` to a selection method never has a missing row selected. Slices, copies and
    arithmetic results do not inherit the mask (their rows are no longer the store's).
    """

    missing: np.ndarray | None = None

    def __array_finalize__(self, obj) -> None:
        super().__array_finalize__(obj)
        self.missing = None


@dataclass(frozen=True)
class Shard:
    """A block of rows ``[start, stop)`` with its index."""

    index: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreMismatchError(FeatureError, ArtifactMismatchError):
    """The store folder holds (part of) a store of other inputs: other settings, pool, sample ids or code."""


def _normalise_arrays(arrays) -> dict[str, tuple[int | None, str]]:
    out = {}
    for name, spec in arrays.items():
        width, dtype = spec
        out[str(name)] = (None if width is None else int(width), np.dtype(dtype).str)
    return out


class FeatureStore:
    """A directory of per-row arrays (see the module docstring for the layout and the guarantees).

    Use :meth:`create` to start or resume writing and :meth:`open` to read a finished store.
    """

    def __init__(self, path, plan: dict, manifest: dict | None = None):
        self.path = Path(path)
        self.plan = plan
        self._manifest = manifest
        self._lock = None

    # ------------------------------------------------------------------ writing
    @classmethod
    def create(cls, path, *, arrays: dict, n_rows: int, shard_size: int = 1024, meta: dict | None = None,
               sample_ids: Iterable[str] | None = None, code: str | None = None,
               overwrite: bool = False) -> "FeatureStore":
        """Start a store, or reopen an unfinished (or finished) one of the same inputs to resume (or reuse) it.

        The store's content key is its plan: the arrays, ``n_rows``, ``shard_size``, ``meta``, the digest of the
        exact sample ids and the code version. A folder holding a store of another plan is refused
        (:class:`StoreMismatchError`, naming what differs) unless ``overwrite``.

        Parameters
        ----------
        path : path-like
            The store directory.
        arrays : dict
            ``{name: (width, dtype)}``; ``width=None`` for one scalar per row.
        n_rows : int
            Number of rows (the pool's length).
        shard_size : int
            Rows per shard (the unit of resumption and of work split between ranks).
        meta : dict
            Recorded in the manifest (model, model_hash, layers, pooling, pool_fingerprint, …). A resumed run must
            pass the same ``meta`` (compared as JSON).
        sample_ids : iterable of str, optional
            Row → sample id; length ``n_rows``. Compared (as a digest) when resuming.
        code : str, optional
            The computing stage's code version (:func:`vlselect.artifact.code_version`).
        overwrite : bool
            Empty the folder first and recompute (refused while another process writes it).

        Raises
        ------
        StoreMismatchError
            The directory holds a store of other inputs (a :class:`FeatureError`).
        ArtifactBusyError
            ``overwrite`` while another process writes the folder.
        """
        path = Path(path)
        if n_rows < 0 or shard_size < 1:
            raise FeatureError(f"feature store '{path}': bad n_rows={n_rows} or shard_size={shard_size}; fix: "
                               "n_rows >= 0 and shard_size >= 1")
        ids = None if sample_ids is None else [str(s) for s in sample_ids]
        if ids is not None and len(ids) != n_rows:
            raise FeatureError(f"feature store '{path}': {len(ids)} sample ids for {n_rows} rows")
        plan = {
            "format": FORMAT,
            "arrays": {k: [w, d] for k, (w, d) in _normalise_arrays(arrays).items()},
            "n_rows": int(n_rows),
            "shard_size": int(shard_size),
            "meta": json.loads(json.dumps(meta or {})),
            "sample_ids": None if ids is None else ids_digest(ids),
            "code": code,
        }
        existing = path / _PLAN
        # one process at a time checks / creates the plan; the writers then share the folder (ranks, --shard jobs),
        # and --overwrite needs it to itself
        creating = FolderLock(path, exclusive=True, wait=60.0, name=CREATE_LOCK).acquire()
        try:
            lock = FolderLock(path, exclusive=overwrite, wait=0.0).acquire()
        except BaseException:
            creating.release()
            raise
        try:
            if overwrite:
                clear_folder(path)
            if existing.exists():
                try:
                    old = json.loads(existing.read_text())
                except ValueError as exc:
                    raise FeatureError(f"feature store '{path}': plan.json is corrupt ({exc}); fix: pass --overwrite "
                                       "to recompute it, or another --out") from exc
                if old != plan:
                    raise StoreMismatchError(str(mismatch_error(path, describe_difference(old, plan))))
            else:
                others = [p.name for p in path.iterdir() if not p.name.startswith(".")]
                if others:
                    raise StoreMismatchError(str(mismatch_error(
                        path, f"it is not a feature store (it has {', '.join(sorted(others)[:4])})")))
                if ids is not None:
                    _atomic_write_json(path / _IDS, ids)
                _atomic_write_json(existing, plan)
        except BaseException:
            lock.release()
            raise
        finally:
            creating.release()
        lock.share()
        manifest = None
        if (path / _MANIFEST).exists():
            manifest = json.loads((path / _MANIFEST).read_text())
        store = cls(path, plan, manifest)
        store._lock = lock
        return store

    def close(self) -> None:
        """Release this process's hold on the folder (also released when the process ends)."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
            self._lock = None

    @property
    def n_rows(self) -> int:
        return self.plan["n_rows"]

    @property
    def shard_size(self) -> int:
        return self.plan["shard_size"]

    @property
    def n_shards(self) -> int:
        return -(-self.n_rows // self.shard_size)

    def shard(self, k: int) -> Shard:
        start = k * self.shard_size
        return Shard(k, start, min(start + self.shard_size, self.n_rows))

    def shards(self) -> list[Shard]:
        return [self.shard(k) for k in range(self.n_shards)]

    def _shard_file(self, k: int, name: str) -> Path:
        return self.path / "shards" / f"{k:06d}.{name}.npy"

    def _done_file(self, k: int) -> Path:
        return self.path / "shards" / f"{k:06d}.done.json"

    def is_done(self, k: int) -> bool:
        return self._done_file(k).exists()

    def done_shards(self) -> list[int]:
        return [k for k in range(self.n_shards) if self.is_done(k)]

    def pending(self, rank: int = 0, world_size: int = 1) -> list[Shard]:
        """The unfinished shards that belong to ``rank`` of ``world_size`` (shard k → rank k % world_size)."""
        if self.finished:
            return []
        return [s for s in self.shards() if s.index % world_size == rank and not self.is_done(s.index)]

    @property
    def finished(self) -> bool:
        return self._manifest is not None or (self.path / _MANIFEST).exists()

    def write_shard(self, k: int, arrays: dict[str, np.ndarray], missing: Iterable[int] = ()) -> None:
        """Write shard ``k``'s rows of every array, then mark it done.

        Parameters
        ----------
        k : int
        arrays : dict
            ``{name: array}`` with ``len(shard)`` rows each, for every array of the plan.
        missing : iterable of int
            Absolute row indices of this shard that could not be computed (their rows should be zeros).
        """
        if (self.path / _MANIFEST).exists():
            return  # another process (same inputs, same key) finished the store meanwhile: nothing to add
        shard = self.shard(k)
        specs = self.plan["arrays"]
        if set(arrays) != set(specs):
            raise FeatureError(f"feature store '{self.path}': shard {k} got arrays {sorted(arrays)}, expected "
                               f"{sorted(specs)}")
        checked = {}
        for name, a in arrays.items():
            width, dtype = specs[name]
            shape = (len(shard),) if width is None else (len(shard), width)
            a = np.asarray(a)
            if a.shape != shape:
                raise FeatureError(f"feature store '{self.path}': array '{name}' of shard {k} has shape {a.shape}, "
                                   f"expected {shape}")
            checked[name] = a.astype(np.dtype(dtype), copy=False)
        miss = sorted(int(r) for r in missing)
        if any(not shard.start <= r < shard.stop for r in miss):
            raise FeatureError(f"feature store '{self.path}': missing rows {miss} are outside shard {k}")
        try:
            for name, a in checked.items():
                _atomic_save_npy(self._shard_file(k, name), a)
            _atomic_write_json(self._done_file(k), {"rows": [shard.start, shard.stop], "missing": miss})
        except FileNotFoundError:
            # another process (same inputs, same key) finalised the store while this one wrote a duplicate shard:
            # the finaliser removed the shards folder and this write's temporary file with it. Nothing is lost.
            if (self.path / _MANIFEST).exists():
                return
            raise

    def finalise(self, extra: dict | None = None) -> bool:
        """Join the shards into whole arrays and write the manifest, if every shard is done.

        Returns True if the store is (now) finished, False if shards are still missing (another process will
        finalise, or ``vlselect features merge`` will). Safe to call from several processes: one wins a lock.
        """
        if self.finished:
            if (self.path / "shards").exists() and (self.path / _MANIFEST).exists():
                shutil.rmtree(self.path / "shards", ignore_errors=True)  # a late duplicate writer's leftovers
            return True
        if len(self.done_shards()) != self.n_shards:
            return False
        lock = self.path / ".finalise.lock"
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(lock.read_text() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and _alive(holder):
                return False  # another process is finalising
            fd = os.open(lock, os.O_WRONLY | os.O_TRUNC)  # stale lock of a killed finaliser: finalising is idempotent
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        missing = np.zeros(self.n_rows, dtype=bool)
        for k in range(self.n_shards):
            info = json.loads(self._done_file(k).read_text())
            missing[info["missing"]] = True
        arrays_info = {}
        for name, (width, dtype) in self.plan["arrays"].items():
            shape = (self.n_rows,) if width is None else (self.n_rows, width)
            final = self.path / f"{name}.npy"
            with atomic_path(final) as tmp:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=shape)
                for s in self.shards():
                    out[s.start:s.stop] = np.load(self._shard_file(s.index, name), mmap_mode="r")
                out.flush()
                del out
            arrays_info[name] = {"file": final.name, "shape": list(shape), "dtype": np.dtype(dtype).str}
        _atomic_save_npy(self.path / "missing.npy", missing)
        if "has_image" in self.plan["arrays"]:  # activation stores: count text-only rows (coincide.md §1.5)
            n_img = int(np.load(self.path / "has_image.npy", mmap_mode="r").astype(bool).sum())
            extra = {"n_with_image": n_img, "n_text_only": self.n_rows - n_img - int(missing.sum()), **(extra or {})}
        manifest = {
            "format": FORMAT,
            "n_rows": self.n_rows,
            "shard_size": self.shard_size,
            "arrays": arrays_info,
            "n_missing": int(missing.sum()),
            "missing_rows": [int(r) for r in np.flatnonzero(missing)],
            "sample_ids_file": _IDS if (self.path / _IDS).exists() else None,
            **self.plan["meta"],
            **(extra or {}),
        }
        _atomic_write_json(self.path / _MANIFEST, manifest)
        self._manifest = manifest
        shutil.rmtree(self.path / "shards", ignore_errors=True)
        lock.unlink(missing_ok=True)
        return True

    # ------------------------------------------------------------------ reading
    @classmethod
    def open(cls, path) -> "FeatureStore":
        """Open a finished store.

        Raises
        ------
        FeatureError
            The directory is missing, unfinished (names the done / total shards) or corrupt.
        """
        path = Path(path)
        if not path.is_dir():
            raise FeatureError(f"feature store '{path}' does not exist; fix: run 'vlselect features activations "
                               f"--out {path} ...' first, or check the path")
        mpath = path / _MANIFEST
        if not mpath.exists():
            plan_path = path / _PLAN
            if plan_path.exists():
                try:
                    st = cls(path, json.loads(plan_path.read_text()))
                    done = f"{len(st.done_shards())}/{st.n_shards} shards done"
                except (ValueError, KeyError):
                    done = "plan.json is corrupt"
                raise FeatureError(f"feature store '{path}' is unfinished ({done}); fix: run the same command "
                                   "again to resume it, or 'vlselect features merge' the parts")
            raise FeatureError(f"'{path}' is not a feature store (no manifest.json); fix: point to a directory "
                               "written by 'vlselect features ...'")
        try:
            manifest = json.loads(mpath.read_text())
            plan = json.loads((path / _PLAN).read_text())
            for name, info in manifest["arrays"].items():
                if not (path / info["file"]).exists():
                    raise FeatureError(f"feature store '{path}': array file '{info['file']}' is missing; fix: "
                                       "recompute the store")
        except (ValueError, KeyError, OSError, TypeError, AttributeError) as exc:
            raise FeatureError(f"feature store '{path}' is corrupt ({type(exc).__name__}: {exc} in manifest.json or "
                               "plan.json); fix: delete it and recompute") from exc
        return cls(path, plan, manifest)

    @property
    def manifest(self) -> dict:
        if self._manifest is None:
            raise FeatureError(f"feature store '{self.path}' is not finalised yet")
        return self._manifest

    def names(self) -> list[str]:
        """The array names, e.g. ``["activations", "loss", ...]``."""
        return list(self.manifest["arrays"])

    def array(self, name: str) -> np.ndarray:
        """The whole array ``name`` as a read-only memmap, rows in pool order, carrying the store's missing-row
        mask as ``.missing`` (:class:`StoreArray`)."""
        info = self.manifest["arrays"].get(name)
        if info is None:
            raise FeatureError(f"feature store '{self.path}' has no array '{name}' (it has: "
                               f"{', '.join(self.names())}); fix: compute it, e.g. with --losses for loss/el2n")
        try:
            a = np.load(self.path / info["file"], mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise FeatureError(f"feature store '{self.path}': '{info['file']}' is not a readable .npy file ({exc}); "
                               "fix: delete the store and recompute it") from None
        if list(a.shape) != info["shape"] or a.dtype.str != info["dtype"]:
            raise FeatureError(f"feature store '{self.path}': '{info['file']}' has shape {a.shape} / {a.dtype}, the "
                               f"manifest says {info['shape']} / {info['dtype']}; fix: recompute the store")
        out = a.view(StoreArray)
        out.missing = self.missing()
        return out

    def sample_ids(self) -> list[str]:
        """Row → sample id."""
        f = self.path / _IDS
        if not f.exists():
            raise FeatureError(f"feature store '{self.path}' has no sample ids")
        return json.loads(f.read_text())

    def missing(self) -> np.ndarray:
        """Bool mask: True for rows recorded missing (e.g. a bad image under --skip-bad).

        Raises
        ------
        FeatureError
            ``missing.npy`` is absent, unreadable, not one bool per row, or disagrees with the manifest's
            ``n_missing`` / ``missing_rows`` (the message names the file and the fix).
        """
        f = self.path / "missing.npy"
        fix = "fix: delete the store and recompute it"
        try:
            mask = np.load(f, allow_pickle=False)
        except FileNotFoundError:
            raise FeatureError(f"feature store '{self.path}': '{f.name}' is missing (every finished store has one); "
                               f"{fix}") from None
        except (OSError, ValueError, EOFError) as exc:
            raise FeatureError(f"feature store '{self.path}': '{f}' is not a readable .npy file ({exc}); {fix}") from None
        if mask.dtype != np.bool_ or mask.shape != (self.n_rows,):
            raise FeatureError(f"feature store '{self.path}': '{f}' holds {mask.dtype} {mask.shape}, expected bool "
                               f"({self.n_rows},), one entry per row; {fix}")
        man = self.manifest
        rows = np.flatnonzero(mask)
        if ("n_missing" in man and int(man["n_missing"]) != rows.size) or (
                "missing_rows" in man and [int(r) for r in man["missing_rows"]] != rows.tolist()):
            raise FeatureError(f"feature store '{self.path}': '{f}' marks {rows.size} row(s) missing but "
                               f"manifest.json records {man.get('n_missing')}; the store is inconsistent; {fix}")
        return mask


def merge(dirs, out) -> FeatureStore:
    """Join partial stores of the same plan (e.g. SLURM ``--shard i/N`` runs into separate dirs) into ``out``.

    Every shard must be done in at least one input; the result is byte-identical to a single run.

    Raises
    ------
    FeatureError
        The inputs have different plans, or some shards are done nowhere (named).
    """
    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise FeatureError("merge needs at least one input directory")
    plans = []
    for d in dirs:
        p = d / _PLAN
        if not p.exists():
            raise FeatureError(f"'{d}' is not a feature store (no plan.json); fix: pass the --out directories of "
                               "the partial runs")
        plans.append(json.loads(p.read_text()))
    for d, p in zip(dirs[1:], plans[1:]):
        if p != plans[0]:
            raise FeatureError(f"cannot merge '{d}' with '{dirs[0]}': they were computed with different settings; "
                               "fix: merge only parts of one run")
    plan = plans[0]
    w = {k: (v[0], v[1]) for k, v in plan["arrays"].items()}
    ids = None
    for d in dirs:
        if (d / _IDS).exists():
            ids = json.loads((d / _IDS).read_text())
            break
    dest = FeatureStore.create(out, arrays=w, n_rows=plan["n_rows"], shard_size=plan["shard_size"],
                               meta=plan["meta"], sample_ids=ids, code=plan.get("code"))
    if dest.plan != plan:
        raise FeatureError(f"cannot merge into '{out}': the parts' plan.json differs from the store they describe "
                           "(sample ids); fix: merge only parts of one run")
    if dest.finished:
        return FeatureStore.open(out)
    srcs = [FeatureStore(d, plan) for d in dirs]
    finished_srcs = [s for s in srcs if (s.path / _MANIFEST).exists()]
    absent = []
    for k in range(dest.n_shards):
        if dest.is_done(k):
            continue
        src = next((s for s in srcs if s.path.resolve() != dest.path.resolve() and s.is_done(k)), None)
        if src is not None:
            for name in plan["arrays"]:
                _atomic_write_bytes(dest._shard_file(k, name), src._shard_file(k, name).read_bytes())
            _atomic_write_bytes(dest._done_file(k), src._done_file(k).read_bytes())
        elif finished_srcs:
            fs = FeatureStore.open(finished_srcs[0].path)
            sh = dest.shard(k)
            miss = np.flatnonzero(fs.missing()[sh.start:sh.stop]) + sh.start
            dest.write_shard(k, {n: np.asarray(fs.array(n)[sh.start:sh.stop]) for n in plan["arrays"]}, miss)
        else:
            absent.append(k)
    if absent:
        rows = ", ".join(f"{k} (rows {dest.shard(k).start}-{dest.shard(k).stop - 1})" for k in absent[:10])
        raise FeatureError(f"cannot merge into '{out}': shards {rows}{' …' if len(absent) > 10 else ''} are not done "
                           "in any input; fix: run the missing --shard jobs first")
    dest.finalise()
    return FeatureStore.open(out)
