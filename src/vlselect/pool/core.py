"""Reading a pool: :func:`open_pool` and :class:`Pool`.

A pool is read in one streaming pass (orjson, one record at a time). What is kept per row is a compact index, never
the parsed records: the byte span of the record in its file, the id, the task label (as a code), the number of
rounds, images, characters and words, and a running hash for the fingerprint — about 60 bytes a row, so a 7 M-row
pool fits in well under 1 GB. Records are re-read from disk on demand (``pool[i]``, iteration, subset export).

Formats (``specs/dataoptim.md`` §3, §11.1):

``json``
    A LLaVA JSON array (``llava_v1_5_mix665k.json``). Each top-level record's byte span is found by a scanner that
    skips strings, so records can be written back byte-exact.
``jsonl``
    One record per line.
``vision-flan``
    Vision-Flan's ``annotation_191-task_1k.json``: a JSON array of LLaVA records that carry ``task_name``.
``dataoptim``
    A DataOptim ``data/`` directory (one JSON array per dataset, the file stem is the task) read into one pool with
    a global id index; or one file whose ids are DataOptim ids (``coco_0``, ``llava_v1.5_3``).

Auto-detection: a directory is ``dataoptim``; ``.jsonl``/``.ndjson`` is ``jsonl``; otherwise the first non-blank
byte decides (``[`` → JSON array, ``{`` → JSONL) and the first record refines a JSON array into ``vision-flan``
(a ``task_name`` field) or ``dataoptim`` (a DataOptim id).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from array import array
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import orjson

from vlselect.errors import PoolError
from vlselect.pool.sample import Sample
from vlselect.pool.tasks import (KIND_TEXT, SOURCE_FIELDS, classify_record, dataoptim_task, decide_layout,
                                 text_only_label)

_TEXT_PENDING = "\x00text-only"  # label of inferred text-only rows until the pool's layout is known

FORMATS = ("json", "jsonl", "vision-flan", "dataoptim")
_FORMAT_ALIASES = {"llava": "json", "llava-json": "json", "ndjson": "jsonl", "visionflan": "vision-flan",
                   "vision_flan": "vision-flan"}  # fmt: skip

#: Accepted values of a turn's ``from`` and what they mean (LLaVA itself accepts only human/gpt; the OpenAI-style
#: names are normalised in :attr:`Sample.conversations`, the record keeps what the file says).
ROLE_ALIASES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "system": "system"}

_CHUNK = 16 << 20
_MAX_RECORD = 512 << 20
_MAX_EXAMPLES = 5
_FP_VERSION = b"vlselect-pool-fingerprint-v1\n"

if sys.version_info >= (3, 11):
    # a run of non-structural bytes or whole strings, then one structural byte; possessive: no backtracking
    _STRUCT = re.compile(rb'(?:[^"{}\[\]]++|"(?:[^"\\]++|\\.)*+")*+([{}\[\]])', re.S)
else:  # pragma: no cover - Python 3.10 has no possessive quantifiers; one byte at a time stays linear
    _STRUCT = re.compile(rb'(?:[^"{}\[\]]|"(?:[^"\\]|\\.)*")*([{}\[\]])', re.S)


def _bounded_object_regex(depth: int) -> re.Pattern | None:
    """One regex for a whole JSON object nested at most ``depth`` levels (a LLaVA record is 3: record →
    conversations → turn), so the common record is found with a single C-level match; deeper records fall back to
    the structural-byte loop. Possessive quantifiers keep it linear (Python ≥ 3.11)."""
    if sys.version_info < (3, 11):  # pragma: no cover
        return None
    atom = rb'(?:[^"{}\[\]]++|"(?:[^"\\]++|\\.)*+")'
    content = atom + rb"*+"
    for _ in range(depth - 1):
        content = rb"(?:" + atom + rb"|\{" + content + rb"\}|\[" + content + rb"\])*+"
    return re.compile(rb"\{" + content + rb"\}", re.S)


_RECORD = _bounded_object_regex(5)


class _BadRecord(Exception):
    def __init__(self, reason: str, message: str, record_id: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.record_id = record_id


def _record_id(rec: dict) -> str | None:
    rid = rec.get("id")
    if rid is None or isinstance(rid, (dict, list)):
        return None
    return rid if isinstance(rid, str) else str(rid)


def _images_of(rec: dict) -> list[str]:
    img = rec.get("image")
    if img is None:
        img = rec.get("images")
    if img is None:
        return []
    if isinstance(img, str):
        return [img]
    if isinstance(img, list) and all(isinstance(x, str) for x in img):
        return list(img)
    raise _BadRecord("bad_image", f"its 'image' is {type(img).__name__}, not a path or a list of paths")


def check_record(rec: Any) -> tuple[list[str], list[dict], int, int, int]:
    """Validate one parsed record (``specs/dataoptim.md`` §11.1).

    Returns ``(images, conversations, rounds, chars, words)``: the image paths, the turns with roles normalised to
    ``human``/``gpt``/``system`` (only ``from``/``value`` kept), the number of assistant answers, and the number of
    characters and whitespace-separated words in all turns (the ``<image>`` placeholder not counted).
    Raises ``_BadRecord`` (internal) with a reason code.
    """
    _, images, turns, _, rounds, chars, words = _inspect(rec, True)
    return images, turns, rounds, chars, words


def _inspect(rec: Any, want_turns: bool) -> tuple:
    """(id, images, turns or None, first human text, rounds, chars, words) of a record; raises _BadRecord."""
    if type(rec) is not dict:
        raise _BadRecord("not_an_object", f"it is a JSON {type(rec).__name__}, not an object")
    rid = rec.get("id")
    if type(rid) is not str:
        rid = _record_id(rec)
    conv = rec.get("conversations")
    if type(conv) is not list or not conv:
        what = "no 'conversations' key" if conv is None else "an empty or non-list 'conversations'"
        raise _BadRecord("no_conversations", f"it has {what}; every record needs a list of "
                         "{'from': 'human'|'gpt', 'value': text} turns", rid)  # fmt: skip
    turns: list | None = [] if want_turns else None
    first_human = None
    rounds = chars = words = 0
    roles = ROLE_ALIASES
    for t, turn in enumerate(conv):
        if type(turn) is not dict:
            raise _BadRecord("bad_turn", f"its turn {t} is not an object", rid)
        role = turn.get("from")
        norm = roles.get(role) if type(role) is str else None
        if norm is None:
            raise _BadRecord("unknown_role", f"its turn {t} has unknown role 'from': {role!r} (accepted: "
                             + ", ".join(roles) + ")", rid)  # fmt: skip
        value = turn.get("value")
        if type(value) is not str:
            raise _BadRecord("bad_value", f"its turn {t} has no text 'value'", rid)
        if norm == "gpt":
            rounds += 1
        elif first_human is None and norm == "human":
            first_human = value
        if "<image>" in value:
            n_img = value.count("<image>")
            chars += len(value) - 7 * n_img
            words += len(value.split()) - n_img
        else:
            chars += len(value)
            words += len(value.split())
        if turns is not None:
            turns.append({"from": norm, "value": value})
    img = rec.get("image")
    if type(img) is str:
        images = [img]
    else:
        try:
            images = _images_of(rec)
        except _BadRecord as exc:
            exc.record_id = rid
            raise
    return rid, images, turns, first_human or "", rounds, chars, words


def _first_human(turns: list[dict]) -> str:
    for t in turns:
        if t["from"] == "human":
            return t["value"]
    return ""


class _Examples:
    """First few problems of each kind, for messages."""

    def __init__(self) -> None:
        self.items: dict[str, list[str]] = {}

    def add(self, reason: str, text: str) -> None:
        lst = self.items.setdefault(reason, [])
        if len(lst) < _MAX_EXAMPLES:
            lst.append(text)


def _normalise_format(fmt: str | None) -> str | None:
    if fmt is None:
        return None
    f = _FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    if f not in FORMATS:
        raise PoolError(f"unknown pool format {fmt!r}; use one of: {', '.join(FORMATS)} (or leave it out to detect)")
    return f


def _sniff(path: Path) -> str:
    """'json' or 'jsonl' from the extension or the first non-blank byte."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    head = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if not head:
        return "json"
    if head[:1] == b"[":
        return "json"
    if head[:1] == b"{":
        return "jsonl"
    raise PoolError(f"{path}: does not look like a pool (a JSON array of records or one JSON record per line): it "
                    f"starts with {head[:20]!r}. Pass the LLaVA JSON/JSONL file, or force the format with --format.")  # fmt: skip


def _where_line(path: Path, line: int) -> str:
    return f"{path}: line {line}"


def _where_json(path: Path, k: int, offset: int) -> str:
    return f"{path}: record {k} (0-based, at byte {offset})"


def _where(loc: tuple) -> str:
    """A location tuple (path, line) or (path, record index, byte offset) as text."""
    return _where_line(*loc) if len(loc) == 2 else _where_json(*loc)


class Pool:
    """An ordered, streamable instruction pool (see :func:`open_pool`).

    Attributes
    ----------
    path : Path
        The file (or DataOptim directory) read.
    files : list[Path]
        The files, in the order their records appear.
    format : str
        ``json``, ``jsonl``, ``vision-flan`` or ``dataoptim``.
    skipped : dict[str, int]
        Records (or lines) left out, by reason; empty unless ``skip_invalid=True`` (or blank JSONL lines).
    skipped_examples : dict[str, list[str]]
        The first few skipped records of each reason, as ``where: what``.
    renamed : int
        Ids made unique by position (``unique_ids=True``).
    fingerprint : str
        SHA-256 (hex) of the ids and the records' content (key-sorted canonical JSON), independent of the file's
        formatting: the same records as JSON or JSONL give the same fingerprint.
    image_root : Path or None
        Where image paths are resolved (``pool check``).
    task_names : list[str]
        The distinct task labels in order of first appearance.
    rounds, chars, words, n_images : numpy arrays
        Per row: assistant answers, characters and words of text (``<image>`` not counted), number of images.
    """

    def __init__(self) -> None:  # built by open_pool
        self.path: Path
        self.files: list[Path] = []
        self.format = "json"
        self.image_root: Path | None = None
        self.skipped: dict[str, int] = {}
        self.skipped_examples: dict[str, list[str]] = {}
        self.renamed = 0
        self.fingerprint = ""
        self.task_names: list[str] = []
        self.task_source: dict[str, int] = {}
        #: How the task labels were found (:data:`vlselect.pool.tasks.LAYOUTS`); ``"unknown"`` when the rows'
        #: sources could not be inferred (give ``--task-field`` or ``--tasks``).
        self.task_layout = "llava665k"
        self._file_idx: np.ndarray | None = None
        self._start = np.zeros(0, np.int64)
        self._end = np.zeros(0, np.int64)
        self._id_blob = b""
        self._id_off = np.zeros(1, np.int64)
        self._id_hash = np.zeros(0, np.int64)
        self._renamed_rows: dict[int, str] = {}
        self._task_codes = np.zeros(0, np.int32)
        self.rounds = np.zeros(0, np.int32)
        self.chars = np.zeros(0, np.int64)
        self.words = np.zeros(0, np.int64)
        self.n_images = np.zeros(0, np.int16)
        self._layout: tuple[bytes, bytes, bytes, bytes] = (b"\n", b",\n", b"\n", b"\n")
        self._handles: dict[int, int] = {}
        self._stats: list[tuple[int, int]] = []
        self._ids_cache: list[str] | None = None
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ basic access
    def __len__(self) -> int:
        return int(self._start.shape[0])

    def __repr__(self) -> str:
        return f"Pool({str(self.path)!r}, format={self.format!r}, n={len(self)}, tasks={len(self.task_names)})"

    def __getitem__(self, i: int) -> Sample:
        return self.sample(i)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self.sample(i)

    def __getstate__(self) -> dict:  # file descriptors do not travel to another process
        state = self.__dict__.copy()
        state["_handles"] = {}
        state["_ids_cache"] = None
        state["_sorted"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __del__(self) -> None:  # pragma: no cover
        self.close()

    def close(self) -> None:
        """Close the file handles used for on-demand reads (re-opened when needed)."""
        for fd in getattr(self, "_handles", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._handles = {}

    def _row(self, i: int) -> int:
        n = len(self)
        ii = int(i)
        if ii < 0:
            ii += n
        if not 0 <= ii < n:
            raise IndexError(f"row {i} is out of range for a pool of {n} records ({self.path})")
        return ii

    def id(self, i: int) -> str:
        """The id of row ``i`` (a string; integer ids are given as ``str(id)``)."""
        i = self._row(i)
        if i in self._renamed_rows:
            return self._renamed_rows[i]
        return self._id_blob[self._id_off[i] : self._id_off[i + 1]].decode("utf-8")

    def original_id(self, i: int) -> str:
        """The id as written in the file (before ``unique_ids`` renaming)."""
        i = self._row(i)
        return self._id_blob[self._id_off[i] : self._id_off[i + 1]].decode("utf-8")

    @property
    def ids(self) -> list[str]:
        """All ids in row order (built on first use and cached)."""
        if self._ids_cache is None:
            blob, off = self._id_blob, self._id_off
            out = [blob[off[k] : off[k + 1]].decode("utf-8") for k in range(len(self))]
            for r, new in self._renamed_rows.items():
                out[r] = new
            self._ids_cache = out
        return self._ids_cache

    @property
    def tasks(self) -> np.ndarray:
        """The task label of every row (numpy array of str)."""
        names = np.array(self.task_names if self.task_names else [""], dtype=str)
        return names[self._task_codes]

    @property
    def task_codes(self) -> np.ndarray:
        """Row → index into :attr:`task_names` (int32)."""
        return self._task_codes

    def task(self, i: int) -> str:
        return self.task_names[int(self._task_codes[self._row(i)])]

    @property
    def renamed_rows(self) -> dict[int, str]:
        """Rows whose id was made unique: row → new id."""
        return dict(self._renamed_rows)

    def location(self, i: int) -> tuple[Path, int, int]:
        """``(file, start byte, end byte)`` of row ``i``."""
        i = self._row(i)
        f = 0 if self._file_idx is None else int(self._file_idx[i])
        return self.files[f], int(self._start[i]), int(self._end[i])

    def raw_record(self, i: int) -> bytes:
        """The record's exact bytes in its file (for a JSON array: from ``{`` to ``}``, inner formatting kept).

        Reads with ``os.pread`` (no shared file offset), so it is safe in forked DataLoader workers."""
        i = self._row(i)
        f = 0 if self._file_idx is None else int(self._file_idx[i])
        fd = self._handles.get(f)
        if fd is None:
            fd = os.open(self.files[f], os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._handles[f] = fd
        start, end = int(self._start[i]), int(self._end[i])
        if hasattr(os, "pread"):
            data = os.pread(fd, end - start, start)
        else:  # pragma: no cover - Windows
            os.lseek(fd, start, os.SEEK_SET)
            data = os.read(fd, end - start)
        if len(data) != end - start:
            raise PoolError(f"{self.files[f]}: changed on disk since it was read (record {i} at byte {start} is "
                            "cut short); open the pool again")  # fmt: skip
        return data

    def check_unchanged(self) -> None:
        """Raise :class:`PoolError` if a pool file changed (size or modification time) since it was read."""
        for q, (size, mtime) in zip(self.files, self._stats):
            st = q.stat() if q.exists() else None
            if st is None or st.st_size != size or st.st_mtime_ns != mtime:
                raise PoolError(f"{q}: changed on disk since the pool was read; the byte offsets no longer match. "
                                "Open the pool again.")  # fmt: skip

    def record(self, i: int) -> dict:
        """The parsed record of row ``i`` (key order kept)."""
        return orjson.loads(self.raw_record(i))

    def sample(self, i: int) -> Sample:
        """Row ``i`` as a :class:`Sample`."""
        i = self._row(i)
        rec = self.record(i)
        try:
            images, turns, *_ = check_record(rec)
        except _BadRecord as exc:  # the file changed since the scan
            raise PoolError(f"{self.location(i)[0]}: record {i} ({exc.message}) changed since the pool was "
                            "read; open the pool again") from None  # fmt: skip
        return Sample(id=self.id(i), images=images, conversations=turns, task=self.task(i), record=rec)

    def image_paths(self, i: int) -> list[Path]:
        """Row ``i``'s image paths resolved under :attr:`image_root` (or the pool file's folder)."""
        root = self.image_root if self.image_root is not None else self.files[0].parent
        return [root / p for p in self.sample(i).images]

    # ------------------------------------------------------------------ id index
    def indices_of(self, ids: Sequence[str], *, source: str | Path | None = None) -> np.ndarray:
        """Rows of the given ids, through the pool's global id index (``specs/dataoptim.md`` §2.2).

        Parameters
        ----------
        ids:
            Ids to look up; repeats give repeated rows.
        source:
            Where the ids came from, for the error message.

        Raises
        ------
        PoolError
            Some ids are not in the pool (the first few are named, with their position in ``ids``).
        """
        if self._sorted is None:
            hashes = self._row_hashes()
            order = np.argsort(hashes, kind="stable")
            self._sorted = (hashes[order], order)
        sh, order = self._sorted
        out = np.empty(len(ids), np.int64)
        missing: list[tuple[int, str]] = []
        n_missing = 0
        for k, rid in enumerate(ids):
            h = _hash_id(rid)
            lo = int(np.searchsorted(sh, h, side="left"))
            found = -1
            while lo < len(sh) and sh[lo] == h:
                r = int(order[lo])
                if self.id(r) == rid:
                    found = r
                    break
                lo += 1
            if found < 0:
                n_missing += 1
                if len(missing) < _MAX_EXAMPLES:
                    missing.append((k, rid))
            out[k] = found
        if n_missing:
            where = f"{source}: " if source is not None else ""
            ex = ", ".join(f"{rid!r} (line {k + 1})" for k, rid in missing)
            raise PoolError(f"{where}{n_missing} id(s) are not in the pool {self.path}, e.g. {ex}. Check that the "
                            "ids belong to this pool (DataOptim ids are looked up in all of its files).")  # fmt: skip
        return out

    def _row_hashes(self) -> np.ndarray:
        h = self._id_hash.copy()
        for r, new in self._renamed_rows.items():
            h[r] = _hash_id(new)
        return h


def _hash_id(rid: str) -> int:
    return int.from_bytes(hashlib.blake2b(rid.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


class _Builder:
    """Accumulates the compact per-row index during the scan."""

    def __init__(self, *, task_field: str | None, unique_ids: bool, skip_invalid: bool, dataoptim_single: bool):
        self.task_field = task_field
        self.unique_ids = unique_ids
        self.skip_invalid = skip_invalid
        self.dataoptim_single = dataoptim_single
        self.file_idx = array("i")
        self.start = array("q")
        self.end = array("q")
        self.id_blob = bytearray()
        self.id_off = array("q", [0])
        self.id_hash = array("q")
        self.missing_id_rows: list[int] = []
        self.codes = array("i")
        self.rounds = array("i")
        self.chars = array("q")
        self.words = array("q")
        self.n_images = array("h")
        self.task_index: dict[str, int] = {}
        self.task_names: list[str] = []
        self.task_source: Counter = Counter()
        self.inferred_kinds: Counter = Counter()
        self.skipped: Counter = Counter()
        self.examples = _Examples()
        self.content_hash = hashlib.sha256()
        self.ids_hash = hashlib.sha256()

    def skip_or_raise(self, reason: str, where: str, message: str, fix: str) -> None:
        if not self.skip_invalid:
            raise PoolError(f"{where}: {message}. {fix}")
        self.skipped[reason] += 1
        self.examples.add(reason, f"{where}: {message}")

    def add(self, raw: bytes, file_no: int, start: int, end: int, loc: tuple, file_task: str | None) -> None:
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self.skip_or_raise("malformed_json", _where(loc), f"malformed JSON ({exc})",
                               "Fix the record, or pass --skip-invalid (skip_invalid=True) to skip and count bad "
                               "records.")  # fmt: skip
            return
        try:
            rid, images, _, first_human, rounds, chars, words = _inspect(rec, False)
        except _BadRecord as exc:
            ident = f" id {exc.record_id!r}" if exc.record_id is not None else ""
            self.skip_or_raise(exc.reason, _where(loc) + ident, exc.message,
                               "Fix the record, or pass --skip-invalid (skip_invalid=True) to skip and count bad "
                               "records.")  # fmt: skip
            return
        row = len(self.start)
        task = self._task(rec, rid, images, first_human, file_task, loc)
        if task is None:
            return
        if rid is None:
            if not self.unique_ids:
                raise PoolError(f"{_where(loc)}: the record has no 'id'. Give every record an id, or pass --unique-ids "
                                "(unique_ids=True) to name id-less records by position ('#<row>').")  # fmt: skip
            self.missing_id_rows.append(row)
            rid = ""
        rid_b = rid.encode("utf-8")
        self.ids_hash.update(rid_b + b"\n")
        self.id_blob += rid_b
        self.id_off.append(len(self.id_blob))
        self.id_hash.append(_hash_id(rid))
        self.file_idx.append(file_no)
        self.start.append(start)
        self.end.append(end)
        code = self.task_index.get(task)
        if code is None:
            code = self.task_index[task] = len(self.task_names)
            self.task_names.append(task)
        self.codes.append(code)
        self.rounds.append(rounds)
        self.chars.append(chars)
        self.words.append(words)
        self.n_images.append(min(len(images), 32767))
        self.content_hash.update(orjson.dumps(rec, option=orjson.OPT_SORT_KEYS))
        self.content_hash.update(b"\n")

    def _task(self, rec: dict, rid: str | None, images, first_human: str, file_task: str | None, loc: tuple
              ) -> str | None:  # fmt: skip
        if self.task_field is not None:
            val = rec.get(self.task_field)
            if val is None or isinstance(val, (dict, list)):
                ident = f" id {rid!r}" if rid is not None else ""
                self.skip_or_raise("no_task_field", _where(loc) + ident, f"the record has no {self.task_field!r} field "
                                   "(asked for with --task-field)",
                                   f"Add {self.task_field!r} to every record, or leave --task-field out to infer "
                                   "tasks.")  # fmt: skip
                return None
            self.task_source["task_field"] += 1
            return str(val)
        val = rec.get("task")
        if isinstance(val, str) and val:
            self.task_source["task"] += 1
            return val
        val = rec.get("task_name")
        if isinstance(val, str) and val:
            self.task_source["task_name"] += 1
            return val
        for key in SOURCE_FIELDS:
            val = rec.get(key)
            if isinstance(val, str) and val:
                self.task_source["data_source"] += 1
                return val
        if file_task is not None:
            self.task_source["dataoptim_file"] += 1
            return file_task
        if self.dataoptim_single and rid is not None:
            t = dataoptim_task(rid)
            if t is not None:
                self.task_source["dataoptim_id"] += 1
                return t
        label, kind = classify_record(images, first_human)
        self.inferred_kinds[kind] += 1
        return _TEXT_PENDING if kind == KIND_TEXT else label

    def settle_tasks(self) -> str:
        """After the scan: decide the inferred rows' layout, name the text-only rows by it, and return the pool's
        task layout (:data:`vlselect.pool.tasks.LAYOUTS`)."""
        inferred = sum(self.inferred_kinds.values())
        layout = decide_layout(self.inferred_kinds)
        if inferred:
            self.task_source[layout] += inferred
        if _TEXT_PENDING in self.task_index:
            pending = self.task_index.pop(_TEXT_PENDING)
            final = text_only_label(layout)
            if final in self.task_index:  # merge into the existing label; later codes move down by one
                target = self.task_index[final]
                codes = np.frombuffer(self.codes, np.int32).copy()
                codes[codes == pending] = target
                codes[codes > pending] -= 1
                self.codes = array("i", codes.tobytes())
                del self.task_names[pending]
                self.task_index = {n: k for k, n in enumerate(self.task_names)}
            else:
                self.task_names[pending] = final
                self.task_index[final] = pending
        rule_layout = {"task_field": "task_field", "task": "task", "task_name": "vision-flan",
                       "data_source": "data_source", "dataoptim_file": "dataoptim", "dataoptim_id": "dataoptim"}
        found = {rule_layout[k] for k, v in self.task_source.items() if v and k in rule_layout}
        if inferred:
            found.add(layout)
        if "unknown" in found:
            return "unknown"
        return found.pop() if len(found) == 1 else ("mixed" if found else "llava665k")


def _progress(enabled: bool, total: int, label: str):
    if not enabled:
        return None
    from vlselect.progress import progress_bar

    prog = progress_bar(label, unit="bytes", transient=True).__enter__()
    task = prog.add_task("", total=total)
    return prog, task


def _scan_jsonl(path: Path, file_no: int, b: _Builder, file_task: str | None, progress) -> None:
    with open(path, "rb", buffering=1 << 20) as f:
        pos = 0
        lineno = 0
        last_report = 0
        for line in f:
            lineno += 1
            start = pos
            pos += len(line)
            if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
                start += 3
                line = line[3:]
            body = line.rstrip()
            if not body:
                b.skipped["blank_line"] += 1
                b.examples.add("blank_line", f"{path}: line {lineno}: blank line")
                continue
            lead = len(body) - len(body.lstrip())
            if lineno == 1 and body[lead:] == b"{":
                raise PoolError(f"{path}: line 1 opens a JSON object that spans several lines; a pool is a JSON "
                                "array of records or JSONL (one complete record per line)")  # fmt: skip
            if lineno == 1 and body[lead:lead + 1] == b"[" and not body.rstrip().endswith(b"]"):
                raise PoolError(f"{path}: line 1 starts a JSON array, not a JSONL record; read it as a JSON array "
                                "(leave out --format jsonl, or use --format json)")  # fmt: skip
            b.add(body[lead:], file_no, start + lead, start + len(body), (path, lineno), file_task)
            if progress is not None and pos - last_report > (8 << 20):
                progress[0].update(progress[1], advance=pos - last_report)
                last_report = pos
        if progress is not None:
            progress[0].update(progress[1], advance=pos - last_report)


def _scan_json_array(path: Path, file_no: int, b: _Builder, file_task: str | None, progress
                     ) -> tuple[bytes, bytes, bytes, bytes]:  # fmt: skip
    """Scan a JSON array record by record; returns its layout (lead, separator, trail, tail) for writing back."""
    match = _STRUCT.match
    layout = [b"\n", b",\n", b"\n", b"\n"]
    with open(path, "rb", buffering=0) as f:
        buf = b""
        base = 0  # file offset of buf[0]
        eof = False

        def more() -> bool:
            nonlocal buf, eof
            if eof:
                return False
            chunk = f.read(_CHUNK)
            if not chunk:
                eof = True
                return False
            buf += chunk
            if progress is not None:
                progress[0].update(progress[1], advance=len(chunk))
            return True

        more()
        if buf.startswith(b"\xef\xbb\xbf"):
            buf = buf[3:]
            base = 3
        stripped = buf.lstrip()
        while not stripped and more():
            stripped = buf.lstrip()
        if not stripped:
            raise PoolError(f"{path}: the file is empty; a pool is a JSON array of records (or JSONL)")
        pos = len(buf) - len(stripped)
        if buf[pos : pos + 1] != b"[":
            raise PoolError(f"{path}: byte {base + pos}: expected '[' (a JSON array of records), found "
                            f"{buf[pos:pos + 20]!r}. Use --format jsonl for one record per line.")  # fmt: skip
        pos += 1
        k = 0
        prev_end = pos  # position (in buf) after the previous record or after '['
        while True:
            # find the next structural byte: '{' starts a record, ']' ends the array
            m = match(buf, pos)
            while m is None:
                if not more():
                    raise PoolError(f"{path}: the file ends after record {k - 1 if k else 'none'} without the "
                                    "closing ']' of the array (truncated file?)")  # fmt: skip
                m = match(buf, pos)
            c = buf[m.end() - 1]
            gap = buf[prev_end : m.end() - 1]
            at = base + m.end() - 1
            if c == 0x5D:  # ']'
                if gap.strip():
                    raise PoolError(f"{path}: byte {base + prev_end}: unexpected {gap.strip()[:30]!r} before the "
                                    "closing ']'; remove it (a trailing comma is not valid JSON)")  # fmt: skip
                if k:
                    layout[2] = gap
                rest = buf[m.end() :]
                while more():
                    rest = buf[m.end() :]
                if rest.strip():
                    raise PoolError(f"{path}: byte {base + m.end()}: unexpected data after the closing ']' of the "
                                    f"array: {rest.strip()[:30]!r}")  # fmt: skip
                layout[3] = rest
                break
            if c != 0x7B:  # not '{'
                raise PoolError(f"{_where_json(path, k, at)}: expected a record object '{{', found "
                                f"{buf[m.end() - 1:m.end() + 19]!r}")  # fmt: skip
            expected = b"," if k else b""
            if gap.strip() != expected:
                what = "a ',' between records" if k else "nothing before the first record"
                raise PoolError(f"{_where_json(path, k, at)}: malformed JSON before the record: expected {what}, "
                                f"found {gap.strip()[:30]!r}")  # fmt: skip
            if k == 0:
                layout[0] = gap
            elif k == 1:
                layout[1] = gap
            rstart = m.end() - 1
            whole = _RECORD.match(buf, rstart) if _RECORD is not None else None
            depth = 0 if whole is not None else 1
            p = whole.end() if whole is not None else m.end()
            while depth:
                m = match(buf, p)
                if m is None:
                    if p - rstart > _MAX_RECORD:
                        raise PoolError(f"{_where_json(path, k, base + rstart)}: no end of the record within "
                                        f"{_MAX_RECORD >> 20} MB (malformed JSON: unbalanced quotes or braces?)")  # fmt: skip
                    if not more():
                        raise PoolError(f"{_where_json(path, k, base + rstart)}: malformed JSON: the file ends "
                                        "inside this record (truncated file, or an unbalanced quote or brace)")  # fmt: skip
                    continue
                ch = buf[m.end() - 1]
                depth += 1 if ch in (0x7B, 0x5B) else -1
                p = m.end()
            b.add(buf[rstart:p], file_no, base + rstart, base + p, (path, k, base + rstart), file_task)
            k += 1
            pos = prev_end = p
            if p > (_CHUNK >> 1):  # drop consumed bytes now and then
                buf = buf[p:]
                base += p
                pos = prev_end = 0
    return tuple(layout)  # type: ignore[return-value]


def _detect_json_flavour(path: Path) -> str:
    """'vision-flan', 'dataoptim' or 'json' from the first record of a JSON array."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    m = _STRUCT.match(head, head.find(b"[") + 1) if b"[" in head else None
    if m is None or head[m.end() - 1] != 0x7B:
        return "json"
    start = m.end() - 1
    depth, p = 1, m.end()
    while depth:
        m = _STRUCT.match(head, p)
        if m is None:
            return "json"
        depth += 1 if head[m.end() - 1] in (0x7B, 0x5B) else -1
        p = m.end()
    try:
        rec = orjson.loads(head[start:p])
    except orjson.JSONDecodeError:
        return "json"
    return _flavour_of(rec)


def _flavour_of(rec: Any) -> str:
    if not isinstance(rec, dict):
        return "json"
    if isinstance(rec.get("task_name"), str):
        return "vision-flan"
    rid = _record_id(rec)
    if rid is not None and dataoptim_task(rid) is not None:
        return "dataoptim"
    return "json"


def _first_jsonl_flavour(path: Path) -> str:
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                try:
                    return _flavour_of(orjson.loads(line))
                except orjson.JSONDecodeError:
                    return "json"
    return "json"


def open_pool(
    path: str | os.PathLike,
    *,
    fmt: str | None = None,
    task_field: str | None = None,
    unique_ids: bool = False,
    image_root: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    progress: bool = False,
) -> Pool:
    """Read an instruction pool in one streaming pass (``specs/dataoptim.md`` §2–3, §11).

    Parameters
    ----------
    path:
        A LLaVA JSON array, a JSONL file, Vision-Flan's annotation JSON, or a DataOptim ``data/`` directory.
    fmt:
        Force the format: ``json`` (alias ``llava``), ``jsonl``, ``vision-flan`` or ``dataoptim``; detected when
        ``None`` (see the module docstring).
    task_field:
        Take each record's task label from this field (e.g. ``"dataset"``, as TIVE's annotated 665K copy has); a
        record without it is an error. Otherwise labels come from ``task`` / ``task_name`` fields, the DataOptim
        file or id, or LLaVA-665K inference, in that order (:mod:`vlselect.pool.tasks`).
    unique_ids:
        Duplicate (and missing) ids are an error unless this is set; then every repeat of an id becomes
        ``"<id>#<row>"`` and a missing id ``"#<row>"`` (counted in :attr:`Pool.renamed`). The records themselves
        are not changed.
    image_root:
        Folder that image paths are relative to (LLaVA's ``--image_folder``).
    skip_invalid:
        Skip records that are malformed, lack conversations or have an unknown role instead of raising; every
        skipped record is counted in :attr:`Pool.skipped` by reason.
    progress:
        Show progress on stderr while reading (:mod:`vlselect.progress`).

    Returns
    -------
    Pool

    Raises
    ------
    PoolError
        Missing file; malformed JSON (JSONL: the line; JSON array: the record index and byte offset); a record
        without conversations or with an unknown role (its id and position); duplicate ids (the first few).

    Examples
    --------
    >>> pool = open_pool("llava_v1_5_mix665k.json")          # doctest: +SKIP
    >>> len(pool), pool.tasks[:3], pool[0].conversations[0]["from"]  # doctest: +SKIP
    (665298, array(['llava', 'llava', 'llava'], dtype='<U8'), 'human')
    """
    p = Path(path)
    if not p.exists():
        raise PoolError(f"pool file not found: {p} (check the path; a pool is a LLaVA JSON/JSONL file or a "
                        "DataOptim data/ directory)")  # fmt: skip
    f = _normalise_format(fmt)
    if p.is_dir():
        if f not in (None, "dataoptim"):
            raise PoolError(f"{p} is a directory; only the 'dataoptim' format reads a directory (of *.json files)")
        if f is None and (p / "pool.json").is_file():  # e.g. a `vlselect world make` folder, not DataOptim's data/
            raise PoolError(f"{p} is a directory holding a pool.json; pass that file ({p / 'pool.json'}). A "
                            "directory is read as a DataOptim data/ directory (every *.json in it one dataset) only "
                            "with --format dataoptim or when it has no pool.json")  # fmt: skip
        files = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in (".json", ".jsonl"))
        if not files:
            raise PoolError(f"{p}: no *.json or *.jsonl files in this directory (a DataOptim data/ directory holds "
                            "one JSON array per dataset)")  # fmt: skip
        f = "dataoptim"
        file_tasks: list[str | None] = [q.stem for q in files]
    else:
        files = [p]
        file_tasks = [None]
    image_root_p = Path(image_root) if image_root is not None else None
    pool = Pool()
    pool.path = p
    pool.files = files
    pool._stats = [(q.stat().st_size, q.stat().st_mtime_ns) for q in files]
    pool.image_root = image_root_p
    syntaxes = []
    for q in files:
        if q.stat().st_size == 0:
            raise PoolError(f"{q}: the file is empty; a pool is a JSON array of records (or JSONL)")
        syntaxes.append("jsonl" if f == "jsonl" else ("json" if f in ("json", "vision-flan") else _sniff(q)))
    if f is None:
        flav = _detect_json_flavour(p) if syntaxes[0] == "json" else _first_jsonl_flavour(p)
        f = syntaxes[0] if flav == "json" else flav
    pool.format = f
    b = _Builder(task_field=task_field, unique_ids=unique_ids, skip_invalid=skip_invalid,
                 dataoptim_single=(f == "dataoptim" and not p.is_dir()))  # fmt: skip
    total = sum(q.stat().st_size for q in files)
    prog = _progress(progress, total, f"reading {p.name}")
    layout = None
    try:
        for no, (q, syn) in enumerate(zip(files, syntaxes)):
            if syn == "jsonl":
                _scan_jsonl(q, no, b, file_tasks[no], prog)
            else:
                lay = _scan_json_array(q, no, b, file_tasks[no], prog)
                if layout is None:
                    layout = lay
    finally:
        if prog is not None:
            prog[0].stop()

    if f == "vision-flan" and b.task_source.get("task_name", 0) == 0 and task_field is None and len(b.start):
        raise PoolError(f"{p}: read as Vision-Flan but no record has a 'task_name' field; use --format json, or "
                        "--task-field NAME")  # fmt: skip
    if not len(b.start):
        skipped = sum(b.skipped.values())
        why = (f"all {skipped:,} records were skipped as invalid ({dict(sorted(b.skipped.items()))})" if skipped
               else "it holds no records")
        raise PoolError(f"{p}: {why}; a pool needs at least one record (a LLaVA JSON array of records, or JSONL "
                        "with one record per line)")
    pool.task_layout = b.settle_tasks()
    _finish(pool, b, layout, unique_ids)
    return pool


def _finish(pool: Pool, b: _Builder, layout, unique_ids: bool) -> None:
    n = len(b.start)

    def arr(a: array, dtype) -> np.ndarray:  # a view on the array's buffer: no copy at the peak
        return np.frombuffer(a, dtype) if len(a) else np.zeros(0, dtype)

    pool._file_idx = arr(b.file_idx, np.int32) if len(pool.files) > 1 else None
    pool._start = arr(b.start, np.int64)
    pool._end = arr(b.end, np.int64)
    pool._id_blob = b.id_blob
    pool._id_off = arr(b.id_off, np.int64)
    pool._id_hash = arr(b.id_hash, np.int64)
    pool._task_codes = arr(b.codes, np.int32)
    pool.rounds = arr(b.rounds, np.int32)
    pool.chars = arr(b.chars, np.int64)
    pool.words = arr(b.words, np.int64)
    pool.n_images = arr(b.n_images, np.int16)
    pool.task_names = list(b.task_names)
    pool.task_source = dict(b.task_source)
    pool.skipped = dict(b.skipped)
    pool.skipped_examples = dict(b.examples.items)
    if layout is not None:
        pool._layout = layout
    for r in b.missing_id_rows:
        pool._renamed_rows[r] = f"#{r}"
    _check_duplicates(pool, unique_ids)
    pool.renamed = len(pool._renamed_rows)
    if pool._renamed_rows:  # the final ids differ from the ones hashed during the scan
        ids_hash = hashlib.sha256()
        for i in range(n):
            ids_hash.update(pool.id(i).encode("utf-8") + b"\n")
    else:
        ids_hash = b.ids_hash
    fp = hashlib.sha256(_FP_VERSION)
    fp.update(str(n).encode() + b"\n")
    fp.update(ids_hash.digest())
    fp.update(b.content_hash.digest())
    pool.fingerprint = fp.hexdigest()


def _check_duplicates(pool: Pool, unique_ids: bool) -> None:
    hashes = pool._row_hashes()
    if hashes.shape[0] < 2:
        return
    order = np.argsort(hashes, kind="stable")
    sh = hashes[order]
    eq = np.flatnonzero(sh[1:] == sh[:-1])
    if eq.size == 0:
        return
    # candidate groups of equal hashes: confirm with the strings, keep the first occurrence (lowest row)
    groups: dict[int, list[int]] = {}
    for k in eq:
        h = int(sh[k])
        g = groups.setdefault(h, [int(order[k])])
        g.append(int(order[k + 1]))
    dups: list[tuple[str, list[int]]] = []
    n_dup_rows = 0
    for rows in groups.values():
        by_id: dict[str, list[int]] = {}
        for r in sorted(set(rows)):
            by_id.setdefault(pool.id(r), []).append(r)
        for rid, rs in by_id.items():
            if len(rs) > 1:
                dups.append((rid, rs))
                n_dup_rows += len(rs) - 1
    if not dups:
        return
    if not unique_ids:
        dups.sort(key=lambda d: d[1][0])
        ex = "; ".join(f"{rid!r} at rows {', '.join(map(str, rs[:4]))}{' …' if len(rs) > 4 else ''}"
                       for rid, rs in dups[:_MAX_EXAMPLES])  # fmt: skip
        hint = (" (Vision-Flan annotation ids are known to repeat)" if pool.format == "vision-flan" else "")
        raise PoolError(f"{pool.path}: {len(dups)} id(s) occur more than once ({n_dup_rows} repeats){hint}: {ex}. "
                        "Make the ids unique, or pass --unique-ids (unique_ids=True) to rename repeats to "
                        "'<id>#<row>'.")  # fmt: skip
    for rid, rs in dups:
        for r in rs[1:]:
            pool._renamed_rows[r] = f"{rid}#{r}"
    pool._sorted = None
    # a renamed id could collide with a real one: check once more, strictly
    hashes = pool._row_hashes()
    if np.unique(hashes).shape[0] != hashes.shape[0]:
        ids = pool.ids
        seen: set[str] = set()
        for r, rid in enumerate(ids):
            if rid in seen:
                raise PoolError(f"{pool.path}: making ids unique produced {rid!r} (row {r}), which already "
                                "exists; rename the records' ids")  # fmt: skip
            seen.add(rid)
        pool._ids_cache = None
