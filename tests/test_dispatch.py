"""The dispatcher (run_method): NaN / inf rows reported and excluded, indices mapped back, strict pass-through,
block-wise scanning, the ``seed`` parameter, caller exclusions (issue 5, items 2 and 9)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from vlselect.errors import SelectionError
from vlselect.select import find_nonfinite_rows, run_method


def test_find_nonfinite_rows_blockwise_on_a_memmap(tmp_path):
    a = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float16, shape=(1000, 8))
    a[:] = 1
    a[3, 2] = np.nan
    a[517, 0] = np.inf
    a[999, 7] = -np.inf
    a[400] = 60000  # large but finite float16: the float64 row sum must not flag it
    a.flush()
    m = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert find_nonfinite_rows(m, block_rows=64).tolist() == [3, 517, 999]
    assert find_nonfinite_rows(np.array([1.0, np.nan, 2.0])).tolist() == [1]
    assert find_nonfinite_rows(np.arange(5)).tolist() == []


def test_nan_rows_are_excluded_and_indices_mapped_back():
    el2n = np.array([0.5, np.nan, 0.1, np.inf, 0.3, 0.2])
    with pytest.warns(RuntimeWarning, match=r"2 pool row\(s\) with NaN or inf excluded"):
        (sel,) = run_method("el2n", {"el2n": el2n}, 3)
    assert sel.indices.tolist() == [2, 5, 4]  # lowest first, among rows 0, 2, 4, 5
    assert np.isnan(sel.scores[[1, 3]]).all() and sel.scores[2] == 0.1
    ex = sel.info["excluded_rows"]
    assert ex["count"] == 2 and ex["rows"] == [1, 3] and ex["by_role"] == {"el2n": 2}
    assert sel.budget.n == 6 and sel.budget.count == 3


def test_a_nan_row_does_not_poison_a_task():
    # LESS on 2-D gradients: one NaN training row must not turn every score NaN
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 4))
    train[7, 1] = np.nan
    val = rng.normal(size=(5, 4))
    with pytest.warns(RuntimeWarning):
        (sel,) = run_method("less", {"train": train, "val/a": val}, 10)
    assert 7 not in sel.indices.tolist()
    assert np.isfinite(np.delete(sel.scores, 7)).all()
    ok = np.delete(np.arange(50), 7)
    (ref,) = run_method("less", {"train": train[ok], "val/a": val}, 10)
    assert sel.indices.tolist() == ok[ref.indices].tolist()


def test_nan_validation_rows_are_dropped_too():
    train = np.eye(3)
    val = np.array([[1.0, 0, 0], [np.nan, 0, 0]])
    with pytest.warns(RuntimeWarning, match="val/a"):
        (sel,) = run_method("less", {"train": train, "val/a": val}, 1)
    assert sel.indices.tolist() == [0]
    assert sel.info["excluded_rows"]["count"] == 0  # no pool row lost


def test_strict_mode_passes_nan_rows_through_with_a_warning():
    el2n = np.array([0.5, np.nan, 0.1])
    with pytest.warns(RuntimeWarning, match="passed through"):
        (sel,) = run_method("el2n", {"el2n": el2n}, 2, strict_official=True)
    assert sel.indices.tolist() == [1, 2]  # official: NaN → 0, the lowest
    assert sel.info["excluded_rows"]["passed_through"] is True


def test_budgets_count_only_the_selectable_rows():
    el2n = np.array([np.nan, np.nan, 0.1, 0.2])
    with pytest.warns(RuntimeWarning):
        with pytest.raises(SelectionError, match=r"larger than the 2 selectable rows \(2 of the 4 pool rows"):
            run_method("el2n", {"el2n": el2n}, 3)
    with pytest.warns(RuntimeWarning):
        (sel,) = run_method("el2n", {"el2n": el2n}, 0.5)  # half of the 2 finite rows, not of the 4
    assert sel.indices.tolist() == [2] and sel.shortfall == 0
    assert (sel.budget.count, sel.budget.n) == (1, 4)
    assert sel.info["excluded_rows"]["selectable"] == 2 and sel.info["excluded_rows"]["nonfinite"] == 2


def test_caller_exclusions_apply_in_every_mode():
    el2n = np.array([0.1, 0.2, 0.3, 0.4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (a,) = run_method("el2n", {"el2n": el2n}, 2, exclude=np.array([True, False, False, False]))
        (b,) = run_method("el2n", {"el2n": el2n}, 2, exclude=[0], strict_official=True)
    assert a.indices.tolist() == [1, 2] and b.indices.tolist() == [1, 2]


def test_clean_memmap_is_not_copied(tmp_path):
    np.save(tmp_path / "f.npy", np.arange(12, dtype=np.float32).reshape(6, 2))
    m = np.load(tmp_path / "f.npy", mmap_mode="r")
    seen = {}

    from vlselect.select import base

    def spy(arrays, tasks, budgets, *, seed, strict_official):
        seen["type"] = type(arrays["features"])
        return [base.Selection(np.arange(b.count), None, "spy", b) for b in budgets]

    base.REGISTRY["_spy"] = base.MethodInfo("_spy", spy, (base.Role("features", "x"),), (), "test")
    try:
        run_method("_spy", {"features": m}, 2)
    finally:
        del base.REGISTRY["_spy"]
    assert seen["type"] is np.memmap


def test_seed_param_sets_the_run_seed_and_unknown_params_list_the_valid_ones():
    (a,) = run_method("random", {}, 3, tasks=["t"] * 10, params={"seed": "5"})
    assert a.seed == 5 and a.indices.tolist() == np.random.default_rng(5).permutation(10)[:3].tolist()
    with pytest.raises(SelectionError, match="prune_subset"):
        run_method("el2n", {"el2n": np.ones(3)}, 1, params={"bogus": 1})


def test_method_without_rows_or_tasks_is_an_error():
    with pytest.raises(SelectionError, match="pool size"):
        run_method("random", {}, 3)


def test_large_memmap_with_bad_rows_is_filtered_through_a_temporary_memmap(tmp_path, monkeypatch):
    import vlselect.select as sel_mod

    monkeypatch.setattr(sel_mod, "_COPY_LIMIT_BYTES", 0)
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    x[2, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    m = np.load(tmp_path / "x.npy", mmap_mode="r")
    seen = {}

    from vlselect.select import base

    def spy(arrays, tasks, budgets, *, seed, strict_official):
        a = arrays["features"]
        seen["type"], seen["rows"] = type(a), np.asarray(a)[:, 0].tolist()
        return [base.Selection(np.arange(b.count), None, "spy", b) for b in budgets]

    base.REGISTRY["_spy2"] = base.MethodInfo("_spy2", spy, (base.Role("features", "x"),), (), "test")
    try:
        with pytest.warns(RuntimeWarning):
            (s,) = run_method("_spy2", {"features": m}, 3)
    finally:
        del base.REGISTRY["_spy2"]
    assert seen["type"] is np.memmap
    assert seen["rows"] == [0.0, 4.0, 12.0, 16.0, 20.0, 24.0, 28.0, 32.0, 36.0]
    assert s.indices.tolist() == [0, 1, 3]  # positions 0, 1, 2 of the finite rows → pool rows 0, 1, 3
