"""The artifact layer (issue 11): one atomic write that leaves nothing behind when a write fails midway (a full disk,
simulated), one content key whose mismatch names what differs, a folder lock that refuses a second writer, a done
marker written last, and one parser of rank / world / --shard. No models: these run in well under a second."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest

from vlselect.artifact import (Artifact, ArtifactBusyError, ArtifactMismatchError, FolderLock, atomic_save_npy,
                               atomic_write_json, atomic_write_text, content_key, describe_difference)
from vlselect.errors import ConfigError, FeatureError, VlselectError
from vlselect.executor import current, parse_shard
from vlselect.features import FeatureStore


def _full_disk_write_array(fh, arr, **kw):
    """np.lib.format.write_array on a full disk: part of the header goes out, then ENOSPC."""
    fh.write(b"\x93NUMPY")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    f = tmp_path / "a.json"
    atomic_write_json(f, {"v": 1})
    before = f.read_bytes()
    monkeypatch.setenv("VLSELECT_TEST_FAIL_WRITE", "a.json")
    with pytest.raises(OSError) as exc:
        atomic_write_json(f, {"v": 2, "long": "x" * 10_000})
    assert exc.value.errno == errno.ENOSPC
    assert f.read_bytes() == before  # the old content, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temporary file left
    monkeypatch.delenv("VLSELECT_TEST_FAIL_WRITE")
    atomic_write_text(f, "new\n")
    assert f.read_text() == "new\n" and (f.stat().st_mode & 0o777) != 0o600  # shared, not mkstemp's private mode


def _store(path, **kw):
    return FeatureStore.create(path, arrays={"x": (3, "float32"), "loss": (None, "float32")}, n_rows=5, shard_size=2,
                               meta={"pool_fingerprint": "fp"}, sample_ids=[f"s{i}" for i in range(5)], **kw)


def _fill(st):
    rng = np.random.default_rng(0)
    for sh in st.pending():
        st.write_shard(sh.index, {"x": rng.normal(size=(len(sh), 3)), "loss": rng.normal(size=len(sh))})


def test_a_store_whose_finalise_hits_a_full_disk_does_not_look_finished(tmp_path, monkeypatch):
    st = _store(tmp_path / "s")
    _fill(st)
    real = np.lib.format.write_array
    monkeypatch.setattr(np.lib.format, "write_array", _full_disk_write_array)
    with pytest.raises(OSError):
        st.finalise()
    assert not (tmp_path / "s" / "manifest.json").exists()
    with pytest.raises(FeatureError, match="unfinished"):
        FeatureStore.open(tmp_path / "s")
    assert not [p for p in (tmp_path / "s").iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(np.lib.format, "write_array", real)
    st.close()
    again = _store(tmp_path / "s")
    assert again.pending() == [] and again.finalise()  # the finished shards were kept: only the join is redone
    ref = _store(tmp_path / "ref")
    _fill(ref)
    ref.finalise()
    for name in ("x.npy", "loss.npy", "missing.npy"):
        assert (tmp_path / "s" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()


def test_a_store_of_other_sample_ids_is_refused_naming_them_and_overwrite_recomputes(tmp_path):
    _store(tmp_path / "s").close()
    with pytest.raises(FeatureError, match=r"s holds a result of other inputs: sample_ids; pass --overwrite or "
                                           r"another --out") as exc:
        FeatureStore.create(tmp_path / "s", arrays={"x": (3, "float32"), "loss": (None, "float32")}, n_rows=5,
                            shard_size=2, meta={"pool_fingerprint": "fp"}, sample_ids=list("abcde"))
    assert isinstance(exc.value, ArtifactMismatchError)
    st = FeatureStore.create(tmp_path / "s", arrays={"x": (3, "float32"), "loss": (None, "float32")}, n_rows=5,
                             shard_size=2, meta={"pool_fingerprint": "fp"}, sample_ids=list("abcde"), overwrite=True)
    assert json.loads((tmp_path / "s" / "sample_ids.json").read_text()) == list("abcde")
    _fill(st)
    st.finalise()
    assert FeatureStore.open(tmp_path / "s").sample_ids() == list("abcde")
    # code version is part of the key too
    with pytest.raises(ArtifactMismatchError, match=r"code \(null there, \"v2\" now\)"):
        FeatureStore.create(tmp_path / "s", arrays={"x": (3, "float32"), "loss": (None, "float32")}, n_rows=5,
                            shard_size=2, meta={"pool_fingerprint": "fp"}, sample_ids=list("abcde"), code="v2")


def test_artifact_key_resume_mismatch_done_marker_and_overwrite(tmp_path):
    def art(**cfg):
        return Artifact(tmp_path / "run", stage="train", config={"lr": 0.1, **cfg}, inputs={"pool": "p1"}, code="c1")

    a = art()
    with a.writing():
        (tmp_path / "run" / "part.bin").write_bytes(b"half")
    assert not a.done  # no done marker yet: a half-written folder never looks finished
    with art().writing() as again:  # same key: resumed, the partial file is kept
        assert (tmp_path / "run" / "part.bin").exists()
        again.mark_done({"steps": 3})
    assert art().done
    with pytest.raises(ArtifactMismatchError, match=r"run holds a result of other inputs: config.lr \(0.1 there, "
                                                    r"0.2 now\); pass --overwrite or another --out"):
        with art(lr=0.2).writing():
            pass
    other = Artifact(tmp_path / "run", stage="train", config={"lr": 0.1}, inputs={"pool": "p2"}, code="c1")
    with pytest.raises(ArtifactMismatchError, match=r"inputs.pool \(\"p1\" there, \"p2\" now\)"):
        with other.writing():
            pass
    with other.writing(overwrite=True):
        assert not (tmp_path / "run" / "part.bin").exists()  # recomputed from scratch
    assert not art().done and not other.done
    # a folder of unknown files (not written by this layer) is never taken for a result
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "weights.bin").write_bytes(b"?")
    with pytest.raises(ArtifactMismatchError, match="no artifact.json"):
        with Artifact(tmp_path / "junk", stage="x", config={}, inputs={}, code="c").writing():
            pass


def test_a_failed_first_run_leaves_no_folder(tmp_path):
    with pytest.raises(RuntimeError):
        with Artifact(tmp_path / "new", stage="x", config={}, inputs={}, code="c").writing():
            raise RuntimeError("model failed to load")
    assert not (tmp_path / "new").exists()


def test_content_key_changes_with_every_part_and_not_with_key_order():
    base = ("s", {"a": 1, "b": [1, 2]}, {"pool": "p"}, "c")
    k = content_key(*base)
    assert k == content_key("s", {"b": [1, 2], "a": 1}, {"pool": "p"}, "c")
    assert len({k, content_key("t", *base[1:]), content_key("s", {"a": 2, "b": [1, 2]}, *base[2:]),
                content_key("s", base[1], {"pool": "q"}, "c"), content_key(*base[:3], "d"),
                content_key("s", {"a": 1, "b": [2, 1]}, *base[2:])}) == 6  # order of ids matters
    assert describe_difference({"config": {"x": 1, "y": 2}}, {"config": {"x": 1, "y": 3}}) == "config.y (2 there, 3 now)"


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path):
    holder = FolderLock(tmp_path / "out").acquire()
    try:
        with pytest.raises(ArtifactBusyError, match=r"out is being written by another vlselect process \(pid \d+\)"):
            with Artifact(tmp_path / "out", stage="x", config={}, inputs={}, code="c").writing():
                pass
        assert isinstance(ArtifactBusyError("x"), VlselectError)
    finally:
        holder.release()
    with Artifact(tmp_path / "out", stage="x", config={}, inputs={}, code="c").writing():
        pass  # free again (the kernel also frees it when the holder dies, even by SIGKILL)


def test_executor_parses_shard_and_torchrun_env_once(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    ex = current()
    assert (ex.rank, ex.world_size, ex.slot, ex.slots, ex.distributed, ex.is_main) == (0, 1, 0, 1, False, True)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ex = current("2/3")
    assert (ex.slot, ex.slots, ex.local_rank, ex.distributed, ex.is_main, ex.finalises) == (5, 6, 1, True, False,
                                                                                            False)
    named = current(rank=1, world_size=2)  # a caller naming its rank runs without a process group
    assert not named.distributed and named.finalises and named.slot == 1
    assert parse_shard((1, 4)) == (1, 4)
    with pytest.raises(ConfigError, match="bad --shard value '4/4'"):
        current("4/4")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="rank 2 of world size 2"):
        current()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two'"):
        current()


def test_npy_write_is_atomic_and_loadable(tmp_path):
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    atomic_save_npy(tmp_path / "a.npy", a)
    assert np.array_equal(np.load(tmp_path / "a.npy"), a)


def test_digests_of_long_flat_lists_are_the_bytes_of_their_json():
    """The fast paths for flat lists of ids/labels hash the same canonical JSON as the general path, so keys
    written before them still match: checked against hashlib over json.dumps written out here."""
    import hashlib

    from vlselect.artifact import digest, ids_digest

    def by_hand(obj) -> str:
        return "sha256:" + hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    labels = [f"task{i % 7}" for i in range(1000)]
    assert ids_digest(labels) == ids_digest(np.asarray(labels)) == by_hand(labels)
    assert ids_digest(np.arange(5)) == ids_digest([0, 1, 2, 3, 4]) == ids_digest([np.int64(i) for i in range(5)])
    assert ids_digest(np.arange(5)) == by_hand([0, 1, 2, 3, 4])
    assert ids_digest(["a", 3, np.str_("b")]) == by_hand(["a", 3, "b"])
    nested = {"ids": labels[:3], "cfg": {"k": [1, 2.5, None, True]}, "arr": np.arange(3)}
    assert digest(nested) == by_hand({"ids": labels[:3], "cfg": {"k": [1, 2.5, None, True]}, "arr": [0, 1, 2]})
