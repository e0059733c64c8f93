"""How many times TIVE and ICONS read their large input in the default mode (issue 14, item 4).

A float16 memmap subclass counts the rows every read of the original array touches (views and blocks made from it
are not counted again), so the count is the number of passes times the row count: a value, not a time.
"""

from __future__ import annotations

import numpy as np
import pytest

from vlselect.select import run_method


class CountingMemmap(np.memmap):
    """A read-only memmap that adds the number of rows of every ``self[...]`` read to ``self.rows_read``."""

    def __getitem__(self, key):
        counter = self.__dict__.get("_counter")
        if counter is not None:
            k0 = key[0] if isinstance(key, tuple) else key
            if isinstance(k0, slice):
                counter[0] += len(range(*k0.indices(self.shape[0])))
            elif isinstance(k0, (int, np.integer)):
                counter[0] += 1
            else:
                k0 = np.asarray(k0)
                counter[0] += int(k0.sum()) if k0.dtype == bool else int(k0.size)
        out = super().__getitem__(key)
        if isinstance(out, CountingMemmap):
            out.__dict__["_counter"] = None
        return out

    @property
    def rows_read(self) -> int:
        return self.__dict__["_counter"][0]


def _counting(path) -> CountingMemmap:
    mm = np.load(path, mmap_mode="r").view(CountingMemmap)
    mm.__dict__["_counter"] = [0]
    return mm


@pytest.fixture
def grads(tmp_path):
    rng = np.random.default_rng(0)
    n, d = 6000, 64
    x = (rng.standard_normal((n, d)) + rng.standard_normal((8, d))[rng.integers(0, 8, n)]).astype(np.float16)
    np.save(tmp_path / "g.npy", x)
    labels = [f"t{i}" for i in rng.integers(0, 5, n)]
    return tmp_path / "g.npy", labels, rng.lognormal(0, 0.3, n), rng.standard_normal((30, d)).astype(np.float32), x


def test_the_counting_memmap_counts_rows_not_bytes(grads):
    path, *_ = grads
    mm = _counting(path)
    mm[10:20]
    mm[[1, 2, 3]]
    np.asarray(mm[0:100])[5:7]  # a block of rows is counted once, whatever is done with it afterwards
    assert mm.rows_read == 10 + 3 + 100


def test_tive_reads_its_gradients_twice_and_gives_the_in_memory_selection(grads):
    path, labels, norms, _, x = grads
    mm = _counting(path)
    sel, = run_method("tive", {"train": mm, "norms": norms}, 0.2, tasks=labels, params={"seed": 3})
    assert mm.rows_read == 2 * 6000  # the centroid form's two passes; no separate NaN scan
    ref, = run_method("tive", {"train": x, "norms": norms}, 0.2, tasks=labels, params={"seed": 3})
    np.testing.assert_array_equal(sel.indices, ref.indices)


def test_icons_reads_its_gradients_once_and_gives_the_in_memory_selection(grads):
    path, _, _, val, x = grads
    mm = _counting(path)
    sel, = run_method("icons", {"train": mm, "val/a": val[:15], "val/b": val[15:]}, 0.2)
    assert mm.rows_read == 6000
    ref, = run_method("icons", {"train": x, "val/a": val[:15], "val/b": val[15:]}, 0.2)
    np.testing.assert_array_equal(sel.indices, ref.indices)


def test_a_nan_row_is_still_found_and_excluded_within_those_passes(tmp_path, grads):
    _, labels, norms, val, x = grads
    x = x.copy()
    x[123, 7] = np.nan
    np.save(tmp_path / "bad.npy", x)
    for method, extra, passes in (("tive", {"norms": norms}, 2), ("icons", {"val/a": val}, 1)):
        mm = _counting(tmp_path / "bad.npy")
        with pytest.warns(RuntimeWarning, match=r"1 pool row\(s\) with NaN or inf in the train input excluded"):
            sel, = run_method(method, {"train": mm, **extra}, 0.2, tasks=labels if method == "tive" else None)
        assert mm.rows_read == passes * 6000
        # 0.2 of the 5,999 selectable rows (run_method's budget rule), though the methods found the NaN row themselves
        assert 123 not in sel.indices and np.isnan(sel.scores[123]) and sel.count == 1199, method
