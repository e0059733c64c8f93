"""The artifact layer: one atomic write, one content key, one output-folder contract for every stage.

Every stage that writes something (activations, gradients, warm-up, training, evaluation, a selection export, a
bench stage) writes into an **artifact** folder (DESIGN.md, "Stages, artifacts, executors"):

``artifact.json``
    written first: the stage name, its **content key** and what the key was made of (``config``: every option that
    changes the result; ``inputs``: pool fingerprint and the exact sample ids / indices, model and adapter hashes,
    upstream artifact keys; ``code``: the code version of the stage).
``.vlselect.lock``
    held (``flock``) by the process(es) writing the folder; the kernel releases it when a process dies, even by
    SIGKILL, so a stale lock never blocks a rerun.
the stage's own files
    each written atomically (temporary file in the same folder, ``fsync``, ``rename``).
the stage's "done" marker (``DONE``, or the stage's manifest)
    written last, so a half-written folder never looks finished.

An existing folder is resumed (or returned as is, if done) only when its key matches; otherwise
:class:`ArtifactMismatchError` says ``DIR holds a result of other inputs: <what differs>; pass --overwrite or another
--out``. ``overwrite=True`` empties the folder and recomputes.

Examples
--------
>>> art = Artifact("out/run", stage="train", config={"lr": 2e-4}, inputs={"pool": "sha256:..."})  # doctest: +SKIP
>>> with art.writing(overwrite=False):                                                          # doctest: +SKIP
...     if not art.done:
...         ...  # compute, write files with atomic_write_*
...         art.mark_done({"steps": 10})
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from vlselect.errors import VlselectError

FORMAT = "vlselect.artifact/1"
RECORD = "artifact.json"
DONE = "DONE"
LOCK = ".vlselect.lock"


class ArtifactError(VlselectError):
    """An output folder cannot be used: it holds other inputs' result, another process writes it, or a write failed."""


class ArtifactMismatchError(ArtifactError):
    """The folder holds a result made from other inputs (config, pool, sample ids, model, code)."""


class ArtifactBusyError(ArtifactError):
    """Another process is writing the folder."""


# ---------------------------------------------------------------------------------------------- atomic writes
def _fail_hook(path: Path) -> None:
    """Test hook: ``VLSELECT_TEST_FAIL_WRITE=<substring>`` makes the write of a file whose name contains it fail
    midway with ENOSPC (a full disk), after part of the bytes were written."""
    pat = os.environ.get("VLSELECT_TEST_FAIL_WRITE")
    if pat and pat in path.name:
        raise OSError(errno.ENOSPC, f"No space left on device (simulated): '{path}'")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path`` for a writer that needs a file name (e.g. a memmap); on a clean exit the
    file is ``fsync``-ed, given shared permissions and renamed onto ``path``; on any error it is removed and
    ``path`` is untouched. The one atomic write of the package: every writer below and every stage goes through it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        _fail_hook(path)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private (0600); outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **open_kwargs) -> Iterator[Any]:
    """A file handle onto a temporary file next to ``path`` (:func:`atomic_path`): renamed onto ``path`` on a clean
    exit; on any error (a full disk included) removed, and ``path`` is untouched."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + fsync + rename)."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, sort_keys: bool = True,
                      default=None) -> None:
    """Write ``obj`` as JSON (plus a final newline) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save ``array`` as ``.npy`` at ``path`` atomically (no pickles)."""
    with atomic_open(path, "wb") as fh:
        np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` to ``path`` atomically."""
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move a fully written temporary folder onto ``final`` (removing an older ``final`` first)."""
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


# ---------------------------------------------------------------------------------------------- content key
_PLAIN = {str, int, float, bool, type(None)}  # JSON scalars that _canonical returns as they are


def _canonical(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if set(map(type, obj)) <= _PLAIN:  # a flat list of ids or labels: no call per element (665K: 1 s -> 0.02 s)
            return list(obj)
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def digest(obj: Any) -> str:
    """``"sha256:…"`` of ``obj`` as canonical JSON (sorted keys); lists of ids or indices hash in order."""
    blob = json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"), default=str).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def ids_digest(ids: Iterable[Any]) -> str:
    """The digest of an exact, ordered list of sample ids or row indices."""
    if isinstance(ids, np.ndarray) and ids.dtype.kind in "iu":
        return digest(ids.tolist())
    ids = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
    if set(map(type, ids)) <= {str, int}:
        return digest(ids)
    return digest([x if isinstance(x, (int, np.integer)) else str(x) for x in ids])


_CODE_CACHE: dict[tuple[str, ...], str] = {}


def code_version(*modules: str) -> str:
    """The code version of a stage: ``vlselect.__version__`` plus a hash of the source of ``modules`` (dotted
    names under ``vlselect``, a package means every file in it); no modules = the whole package. A code change
    in what a stage runs changes its key, so a stale result is never reused."""
    import vlselect

    key = tuple(modules)
    if key in _CODE_CACHE:
        return _CODE_CACHE[key]
    root = Path(vlselect.__file__).parent
    files: list[Path] = []
    for m in modules or ("vlselect",):
        rel = Path(*m.split(".")[1:]) if m.startswith("vlselect") else Path(*m.split("."))
        p = root / rel
        if p.is_dir():
            files += sorted(p.rglob("*.py"))
        elif p.with_suffix(".py").exists():
            files.append(p.with_suffix(".py"))
        # a module that does not exist (moved / renamed) contributes only its name
    h = hashlib.sha256(str(getattr(vlselect, "__version__", "0")).encode())
    for f in files:
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    _CODE_CACHE[key] = out = f"{getattr(vlselect, '__version__', '0')}+{h.hexdigest()[:12]}"
    return out


def content_key(stage: str, config: dict, inputs: dict, code: str) -> str:
    """The one content key: a hash of the stage name, its full config, its input fingerprints and its code."""
    return digest({"stage": stage, "config": config, "inputs": inputs, "code": code})


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        else:
            sa, sb = json.dumps(a, default=str), json.dumps(b, default=str)
            if len(sa) > 40 or len(sb) > 40:
                out.append(f"{prefix}{k}")
            else:
                out.append(f"{prefix}{k} ({sa} there, {sb} now)")
    return out


def describe_difference(old: dict, new: dict) -> str:
    """Which fields of two key records differ, e.g. ``inputs.sample_ids, config.lr (0.1 there, 0.2 now)``."""
    d = _differences(old, new)
    return ", ".join(d[:8]) + (" …" if len(d) > 8 else "") if d else "the key (format changed)"


def mismatch_error(path: str | os.PathLike, what: str) -> ArtifactMismatchError:
    return ArtifactMismatchError(f"{path} holds a result of other inputs: {what}; pass --overwrite or another --out")


# ---------------------------------------------------------------------------------------------- lock
class FolderLock:
    """An ``flock`` on ``DIR/.vlselect.lock``: ``exclusive`` for one writer, shared for cooperating writers (ranks or
    ``--shard`` jobs of one store). Released by the kernel when the process dies. ``wait`` seconds to wait for a
    busy folder (0 = refuse at once with :class:`ArtifactBusyError`)."""

    def __init__(self, folder: str | os.PathLike, *, exclusive: bool = True, wait: float = 0.0, name: str = LOCK):
        self.folder = Path(folder)
        self.name = name
        self.exclusive = exclusive
        self.wait = wait
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / self.name, os.O_RDWR | os.O_CREAT, 0o644)
        op = (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline = time.monotonic() + max(0.0, self.wait)
        while True:
            try:
                fcntl.flock(fd, op)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    try:
                        holder = os.pread(fd, 32, 0).decode().strip() or "?"
                    except OSError:
                        holder = "?"
                    os.close(fd)
                    raise ArtifactBusyError(
                        f"{self.folder} is being written by another vlselect process (pid {holder}); fix: wait for it "
                        "to finish, or pass another --out") from None
                time.sleep(0.1)
        if self.exclusive:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def share(self) -> None:
        """Downgrade an exclusive hold to a shared one (cooperating writers may then join)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


CREATE_LOCK = ".vlselect.create.lock"


def clear_folder(folder: Path, keep: Iterable[str] = (LOCK, CREATE_LOCK)) -> None:
    """Remove everything in ``folder`` except ``keep`` (the locks held by this process)."""
    keep = set(keep)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name in keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


# ---------------------------------------------------------------------------------------------- the folder
class Artifact:
    """One stage's output folder with its content key (see the module docstring).

    Parameters
    ----------
    path : path-like
        The folder (``--out``).
    stage : str
        The stage name (``"train"``, ``"warmup"``, ``"gradients"``...).
    config : dict
        Every option that changes the result.
    inputs : dict
        Input fingerprints: pool fingerprint, sample-id / index digests, model / adapter hashes, upstream keys.
    code : str, optional
        The stage's code version (:func:`code_version`); default: the whole package.
    done_marker : str
        The file written last (``DONE`` unless the stage has its own manifest).
    """

    def __init__(self, path: str | os.PathLike, *, stage: str, config: dict, inputs: dict, code: str | None = None,
                 done_marker: str = DONE):
        self.path = Path(path)
        self.stage = stage
        self.record = {"format": FORMAT, "stage": stage, "config": _canonical(config), "inputs": _canonical(inputs),
                       "code": code if code is not None else code_version()}
        self.key = content_key(stage, self.record["config"], self.record["inputs"], self.record["code"])
        self.record["key"] = self.key
        self.done_marker = done_marker
        self._lock: FolderLock | None = None

    # -------------------------------------------------------------- state
    def saved_record(self) -> dict | None:
        f = self.path / RECORD
        if not f.exists():
            return None
        try:
            rec = json.loads(f.read_text())
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except (ValueError, OSError) as exc:
            raise ArtifactError(f"{f} is corrupt ({exc}); fix: pass --overwrite to recompute, or another --out") from exc
        return rec

    @property
    def done(self) -> bool:
        """The folder holds the finished result of these inputs."""
        rec = self.saved_record()
        return bool(rec and rec.get("key") == self.key and (self.path / self.done_marker).exists())

    def check(self) -> None:
        """Raise :class:`ArtifactMismatchError` if the folder holds (part of) a result of other inputs.

        A folder with stage files but no ``artifact.json`` (written by an older version) is also refused."""
        rec = self.saved_record()
        if rec is None:
            others = [p.name for p in self.path.iterdir() if p.name not in (LOCK,)] if self.path.is_dir() else []
            if others:
                raise mismatch_error(self.path, f"it has no {RECORD} (files of an unknown run: "
                                                f"{', '.join(sorted(others)[:4])})")
            return
        if rec.get("key") != self.key:
            old = {k: rec.get(k) for k in ("stage", "config", "inputs", "code")}
            new = {k: self.record[k] for k in ("stage", "config", "inputs", "code")}
            raise mismatch_error(self.path, describe_difference(old, new))

    # -------------------------------------------------------------- writing
    @contextlib.contextmanager
    def writing(self, *, overwrite: bool = False, exclusive: bool = True, wait: float = 0.0,
                lock: bool = True) -> Iterator["Artifact"]:
        """Lock the folder, check (or with ``overwrite``, clear) it, record the key; yield ``self``.

        ``exclusive=False`` lets cooperating processes (ranks, ``--shard`` jobs) write at once; ``overwrite`` always
        takes the folder exclusively. ``lock=False``: the caller (e.g. a non-zero torchrun rank) does not write.
        """
        created = not self.path.exists()
        held = None
        try:
            if lock:
                held = FolderLock(self.path, exclusive=True, wait=wait).acquire()
            else:
                self.path.mkdir(parents=True, exist_ok=True)
            if overwrite:
                clear_folder(self.path)
            else:
                self.check()
            if self.saved_record() is None:
                atomic_write_json(self.path / RECORD, self.record)
            if held is not None and not exclusive:  # downgrade: cooperating writers may join
                held.share()
            self._lock = held
            yield self
        except BaseException:
            if created and self.path.is_dir() and not any(p.name not in (LOCK, RECORD) for p in self.path.iterdir()):
                shutil.rmtree(self.path, ignore_errors=True)  # a failed first run leaves no empty folder
            raise
        finally:
            if held is not None:
                held.release()
            self._lock = None

    def mark_done(self, summary: dict | None = None) -> None:
        """Write the done marker (last)."""
        atomic_write_json(self.path / self.done_marker, {"key": self.key, **(summary or {})})


__all__ = ["Artifact", "ArtifactBusyError", "ArtifactError", "ArtifactMismatchError", "FolderLock", "atomic_open",
           "atomic_path",
           "atomic_save_npy", "atomic_torch_save", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "clear_folder", "code_version", "content_key", "describe_difference", "digest", "ids_digest",
           "mismatch_error", "replace_dir"]
