"""The streaming passes of TIVE and ICONS (issue 14, item 4): cache-sized chunks converted into one reused
buffer, read-ahead groups, one torch thread, 16-column padding of skinny products. Each result is checked
against an independent computation (NumPy's own conversion, a float64 Gram matrix, scipy's ranks)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

import vlselect.select.icons as icons_mod
from vlselect.select.icons import (
    chunk_rows_for,
    icons_mean_rank,
    icons_targets,
    icons_task_scores,
    iter_row_blocks,
    pad_columns,
    row_parts,
    row_workers,
    torch_threads,
)
from vlselect.select.tive import tive_instance_scores


@pytest.fixture
def small_groups(monkeypatch):
    """Read-ahead / release groups of ~2 KB, so a few hundred rows span many groups."""
    monkeypatch.setattr(icons_mod, "_IO_BYTES", 2048)


@pytest.mark.parametrize("reverse", [False, True])
def test_row_blocks_convert_exactly_into_one_reused_buffer_each_row_once(tmp_path, small_groups, reverse):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1000, 24)) * 100).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    seen = np.zeros(1000, dtype=np.int64)
    out = np.full((1000, 24), np.nan, dtype=np.float32)
    addresses = set()
    starts = []
    for a, b, block in iter_row_blocks(mm, 37, np.float32, reverse=reverse):
        assert block.dtype == np.float32 and block.shape == (b - a, 24)
        seen[a:b] += 1
        out[a:b] = block
        addresses.add(block.ctypes.data)
        starts.append(a)
    assert (seen == 1).all()
    np.testing.assert_array_equal(out, x.astype(np.float32))  # NumPy's conversion: exact widening, same values
    assert len(addresses) == 1  # every block lives in the same buffer
    assert (np.diff(starts) < 0).all() if reverse else (np.diff(starts) > 0).all()


def test_row_blocks_of_the_stored_dtype_are_views_not_copies():
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    blocks = list(iter_row_blocks(x, 6, np.float32))
    assert [(a, b) for a, b, _ in blocks] == [(0, 6), (6, 12), (12, 18), (18, 20)]
    assert all(np.shares_memory(blk, x) for _, _, blk in blocks)


def test_chunks_are_cache_sized():
    assert chunk_rows_for(5120) == 256  # 5 MiB of float32 at the official width
    assert chunk_rows_for(5120, 8) == 128
    assert chunk_rows_for(10**7) == 64  # never fewer rows than that


def test_pad_columns_to_sixteen_only_above_eight():
    m = np.arange(30, dtype=np.float32).reshape(10, 3)
    p = pad_columns(m)
    assert p.shape == (16, 3) and np.array_equal(p[:10], m) and not p[10:].any()
    assert pad_columns(m[:8]).shape == (8, 3) and pad_columns(np.zeros((17, 2))).shape == (32, 2)


def test_torch_threads_sets_and_restores_even_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def _gram_mean_cosines(x: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The definition (spec §5.3) in float64: mean cosine of each row with every row of its task, itself included."""
    out = np.full(x.shape[0], np.nan)
    for t in np.unique(codes[codes >= 0]):
        r = np.flatnonzero(codes == t)
        g = x[r].astype(np.float64)
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        out[r] = (g @ g.T).mean(axis=1)
    return out


@pytest.mark.parametrize("block_rows,workers", [(29, 1), (7, 1), (7, 2)])  # block 7: 100 blocks, 4 row parts
def test_tive_streamed_scores_equal_the_float64_gram_definition(tmp_path, small_groups, block_rows, workers):
    rng = np.random.default_rng(1)
    n, d, T = 700, 40, 11  # 11 tasks: the centroid product is padded to 16 columns
    centres = rng.standard_normal((T, d))
    codes = rng.integers(0, T, n)
    x = (centres[codes] + rng.standard_normal((n, d))).astype(np.float16)
    codes[::50] = -1  # rows of no task
    x[123, 5] = np.nan  # a non-finite row: out of every sum, no score
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    scores, finite = tive_instance_scores(mm, codes, T, block_rows=block_rows, workers=workers)
    assert np.flatnonzero(~finite).tolist() == [123]
    keep = codes.copy()
    keep[123] = -1
    ref = _gram_mean_cosines(x, keep)
    assert np.array_equal(np.isnan(scores), np.isnan(ref))
    np.testing.assert_allclose(scores, ref, atol=2e-6, equal_nan=True)


@pytest.mark.parametrize("precision,atol,block_rows,workers",
                         [("float32", 1e-6, 31, 1), ("float64", 1e-12, 31, 1), ("float32", 1e-6, 7, 2)])
def test_icons_streamed_matvec_equals_a_float64_reference(tmp_path, small_groups, precision, atol, block_rows,
                                                          workers):
    rng = np.random.default_rng(2)
    n, d = 900, 48
    x = rng.standard_normal((n, d)).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    vals = {f"val/t{i:02d}": rng.standard_normal((5, d)) for i in range(10)}  # 10 + 2 sub-task columns: padded
    vals["val/s/a"], vals["val/s/b"] = rng.standard_normal((3, d)), rng.standard_normal((4, d))
    targets = icons_targets(vals)
    scores, subs = icons_task_scores(mm, targets, block_rows=block_rows, precision=precision, workers=workers)
    g = x.astype(np.float64)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    for j, t in enumerate(targets):
        # validation rows as the official merge_info prepares them: float32, regular tasks' rows normalised by torch
        if t.is_split:
            ref = np.max([g @ v.astype(np.float32).mean(axis=0, dtype=np.float64) for v in t.vals], axis=0)
        else:
            v = torch.nn.functional.normalize(torch.from_numpy(t.vals[0].astype(np.float32)), dim=1).numpy()
            ref = g @ v.mean(axis=0, dtype=np.float64)
        np.testing.assert_allclose(scores[:, j], ref, rtol=0, atol=atol, err_msg=t.name)


def test_row_parts_are_whole_blocks_and_only_for_long_inputs():
    # 100 blocks of 10 rows: 4 parts of 25 blocks; 101 blocks (the last one short): 25/25/25/26 blocks
    assert row_parts(1000, 10) == [(0, 250), (250, 500), (500, 750), (750, 1000)]
    assert row_parts(1005, 10) == [(0, 250), (250, 500), (500, 750), (750, 1005)]
    assert row_parts(480, 10) == [(0, 160), (160, 320), (320, 480)]  # 48 blocks: 3 parts of 16
    assert row_parts(159, 10) == [(0, 159)]  # 16 blocks: one part
    assert row_parts(0, 10) == []


def test_row_workers_from_the_argument_the_environment_or_the_cpus(monkeypatch):
    from vlselect.errors import SelectionError

    monkeypatch.setenv("VLSELECT_ROW_WORKERS", "1")
    assert row_workers() == 1 and row_workers(3) == 3 and row_workers(99) == 4
    monkeypatch.setenv("VLSELECT_ROW_WORKERS", "two")
    with pytest.raises(SelectionError, match="VLSELECT_ROW_WORKERS='two'"):
        row_workers()
    monkeypatch.delenv("VLSELECT_ROW_WORKERS")
    import os

    assert row_workers() == min(4, len(os.sched_getaffinity(0)))


def test_workers_do_not_change_a_bit_of_tive_or_icons(tmp_path, small_groups):
    """Fixed row parts of whole blocks, per-part sums added in a fixed order: 1, 2 and 4 workers give the same
    bytes (and the parts really run in other threads: a worker's thread is not the caller's)."""
    import threading

    rng = np.random.default_rng(5)
    n, d, T = 2000, 32, 5
    codes = rng.integers(0, T, n)
    x = rng.standard_normal((n, d)).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    targets = icons_targets({f"val/t{i}": rng.standard_normal((4, d)) for i in range(3)})
    threads = set()
    real = icons_mod.iter_row_blocks

    def spy(*a, **k):
        threads.add(threading.get_ident())
        return real(*a, **k)

    out = {}
    for w in (1, 2, 4):
        icons_mod.iter_row_blocks = spy
        try:
            out[w] = (tive_instance_scores(mm, codes, T, block_rows=10, workers=w)[0],
                      icons_task_scores(mm, targets, block_rows=10, workers=w)[0])
        finally:
            icons_mod.iter_row_blocks = real
    for w in (2, 4):
        assert out[w][0].tobytes() == out[1][0].tobytes() and out[w][1].tobytes() == out[1][1].tobytes()
    assert len(threads - {threading.get_ident()}) >= 2


def test_mean_rank_equals_scipy_average_ranks_with_ties_and_invalid_rows():
    rng = np.random.default_rng(3)
    s = rng.integers(0, 7, size=(300, 3)).astype(np.float64)  # many ties
    s[10] = np.nan
    valid = np.isfinite(s).all(axis=1)
    valid[20] = False
    got = icons_mean_rank(s, valid)
    m = int(valid.sum())
    ref = np.mean([(scipy.stats.rankdata(s[valid, t]) - 1) / m for t in range(3)], axis=0)
    assert np.isnan(got[~valid]).all()
    np.testing.assert_allclose(got[valid], ref, rtol=0, atol=1e-15)


def test_tive_with_no_task_rows_scores_nothing_and_skips_the_second_pass(tmp_path):
    x = np.ones((10, 4), dtype=np.float16)
    x[3, 1] = np.inf
    scores, finite = tive_instance_scores(x, -np.ones(10, dtype=np.int64), 0)
    assert np.isnan(scores).all() and finite.tolist() == [i != 3 for i in range(10)]
    scores, finite = tive_instance_scores(x, np.where(np.arange(10) == 3, 0, -1), 1)  # its only row is not finite
    assert np.isnan(scores).all()


def test_tive_never_writes_into_the_callers_float32_rows():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 16)).astype(np.float32)  # same dtype: the blocks are views of x
    before = x.copy()
    codes = rng.integers(0, 3, 300)
    scores, _ = tive_instance_scores(x, codes, 3, block_rows=64)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_allclose(scores, _gram_mean_cosines(x, codes), atol=1e-6)
