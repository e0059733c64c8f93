"""The fused float16 kernels of ICONS's and TIVE's streaming passes (issue 14, item 4; vlselect.select.kernels).

Every kernel is checked against an independent computation: NumPy's own float16 conversion for all 65,536 bit
patterns, float64 NumPy products, hand-worked rows (3-4-5 triangles), and the torch convert-then-multiply path
(``VLSELECT_FUSED=0``) for whole selections."""

from __future__ import annotations

import numpy as np
import pytest

from vlselect.errors import SelectionError
from vlselect.select import kernels, run_method
from vlselect.select.base import factorize_labels
from vlselect.select.icons import fused_half, icons_targets, icons_task_scores
from vlselect.select.tive import tive_instance_scores, tive_tasks


def test_widening_is_exact_for_every_float16_value():
    bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    out = np.empty(bits.size, dtype=np.float32)
    kernels.widen_half_row(bits, out)
    ref = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(out), nan)  # 2 x 1,023 NaN patterns
    assert np.array_equal(out[~nan].view(np.uint32), ref[~nan].view(np.uint32))  # bit for bit: -0, subnormals, inf


def _half(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float16))


def test_dots_and_norms_hand_worked_and_against_float64():
    # hand-worked: (3, 4) has norm 5; with m = [[1, 0], [0, 1], [1, 1]] the dots are 3, 4, 7 (k=3: padded to 4)
    h = _half([[3, 4], [0, 0], [-6, 8]])
    m = kernels.pad4(np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32))
    assert m.shape == (4, 2) and not m[3].any()
    dots, norms = np.empty((3, 4), np.float32), np.empty(3, np.float32)
    kernels.half_rows_dots_norms(kernels.half_view(h), m, dots, norms)
    assert norms.tolist() == [5.0, 0.0, 10.0]
    assert dots[:, :3].tolist() == [[3, 4, 7], [0, 0, 0], [-6, 8, 2]] and not dots[:, 3].any()
    # float64 reference on rows with subnormals, large values and 9 columns (three groups of four)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((50, 333)) * rng.lognormal(0, 2, (50, 1))).astype(np.float16)
    x[3, :10] = np.float16(3e-7)  # subnormal
    w = rng.standard_normal((9, 333)).astype(np.float32)
    dots, norms = np.empty((50, 12), np.float32), np.empty(50, np.float32)
    kernels.half_rows_dots_norms(kernels.half_view(x), kernels.pad4(w), dots, norms)
    xd = x.astype(np.float64)
    ref = xd @ w.T.astype(np.float64)
    scale = np.linalg.norm(xd, axis=1)[:, None] * np.linalg.norm(w.astype(np.float64), axis=1)[None, :]
    assert np.abs(dots[:, :9] - ref).max() <= 1e-6 * scale.max()
    np.testing.assert_allclose(norms, np.linalg.norm(xd, axis=1), rtol=1e-6)


def test_non_finite_rows_give_non_finite_norms_not_numbers():
    h = _half([[1, np.inf], [np.nan, 0], [1, 1]])
    dots, norms = np.empty((3, 4), np.float32), np.empty(3, np.float32)
    kernels.half_rows_dots_norms(kernels.half_view(h), kernels.pad4(np.ones((1, 2), np.float32)), dots, norms)
    assert np.isinf(norms[0]) and np.isnan(norms[1]) and norms[2] == np.float32(np.sqrt(2))


def test_task_sums_hand_worked():
    # rows: (3,4)/5 and (0,2)/2 to task 0, (6,8)/10 to task 1, a row of no task and a non-finite row: skipped
    h = _half([[3, 4], [0, 2], [6, 8], [1, 1], [np.inf, 0]])
    dest = np.array([0, 0, 1, -1, 0], dtype=np.int64)
    sums = np.zeros((2, 2))
    norms = np.empty(5, np.float32)
    kernels.half_rows_task_sums(kernels.half_view(h), dest, sums, norms, np.full((2, 2), 99, np.float32))
    np.testing.assert_allclose(sums, [[0.6, 1.8], [0.6, 0.8]], rtol=1e-7)
    assert norms[:4].tolist() == [5.0, 2.0, 10.0, np.float32(np.sqrt(2))] and np.isinf(norms[4])
    # a second call adds to the same float64 sums (the scratch is zeroed by the kernel, not by the caller)
    kernels.half_rows_task_sums(kernels.half_view(h[:1]), dest[:1], sums, norms[:1], np.full((2, 2), 7, np.float32))
    np.testing.assert_allclose(sums, [[1.2, 2.6], [0.6, 0.8]], rtol=1e-7)


def test_own_dots_only_for_taken_rows():
    h = _half([[1, 2], [3, 4], [5, 6]])
    cents = np.array([[1, 0], [0, 1]], dtype=np.float32)
    own = np.full(3, -1.0, np.float32)
    kernels.half_rows_own_dots(kernels.half_view(h), np.array([1, 0, 1]), np.array([True, True, False]), cents, own)
    assert own.tolist() == [2.0, 3.0, -1.0]


def test_half_view_refuses_other_blocks():
    with pytest.raises(ValueError, match="float16"):
        kernels.half_view(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        kernels.half_view(np.zeros((4, 4), np.float16)[:, ::2])


def test_fused_switch(monkeypatch):
    x16, x32 = np.zeros((2, 2), np.float16), np.zeros((2, 2), np.float32)
    assert fused_half(x16) and not fused_half(x32) and not fused_half(x16, np.float64)
    monkeypatch.setenv("VLSELECT_FUSED", "0")
    assert not fused_half(x16)
    monkeypatch.setenv("VLSELECT_FUSED", "yes")
    with pytest.raises(SelectionError, match="VLSELECT_FUSED='yes'"):
        fused_half(x16)


@pytest.fixture
def pool16(tmp_path):
    rng = np.random.default_rng(7)
    n, d, T = 3000, 96, 6
    codes = rng.integers(0, T, n)
    x = (rng.standard_normal((T, d))[codes] + rng.standard_normal((n, d))).astype(np.float16)
    x[17, 3] = np.nan
    np.save(tmp_path / "x.npy", x)
    return np.load(tmp_path / "x.npy", mmap_mode="r"), codes, T, rng


def _both(monkeypatch, fn):
    out = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("VLSELECT_FUSED", flag)
        out[flag] = fn()
    return out["1"], out["0"]


@pytest.mark.filterwarnings("ignore:.*NaN or inf in the train input excluded:RuntimeWarning")
def test_fused_and_torch_paths_agree_on_scores_and_selections(monkeypatch, pool16):
    x, codes, T, rng = pool16
    codes = codes.copy()
    codes[::40] = -1
    fused, torch_path = _both(monkeypatch, lambda: tive_instance_scores(x, codes, T, block_rows=64, workers=2))
    assert np.array_equal(fused[1], torch_path[1]) and not fused[1][17]
    np.testing.assert_allclose(fused[0], torch_path[0], atol=2e-6, equal_nan=True)
    targets = icons_targets({f"val/t{i}": rng.standard_normal((5, x.shape[1])) for i in range(5)})
    fused, torch_path = _both(monkeypatch, lambda: icons_task_scores(x, targets, block_rows=64, workers=2)[0])
    assert np.array_equal(np.isnan(fused), np.isnan(torch_path)) and np.isnan(fused[17]).all()
    np.testing.assert_allclose(fused, torch_path, atol=1e-6, equal_nan=True)
    labels = [f"task{c}" for c in np.maximum(codes, 0)]
    vals = {f"val/t{i}": rng.standard_normal((5, x.shape[1])) for i in range(3)}
    sel = _both(monkeypatch, lambda: (run_method("tive", {"train": x, "norms": np.ones(x.shape[0])}, 0.15,
                                                 tasks=labels)[0].indices,
                                      run_method("icons", {"train": x, **vals}, 0.2)[0].indices))
    assert np.array_equal(sel[0][0], sel[1][0]) and np.array_equal(sel[0][1], sel[1][1])


def test_factorize_labels_equals_numpy_unique_of_the_strings():
    labels = ["b", "a", 3, "b", "3", np.str_("a"), 3.0]
    uniq, inv = factorize_labels(labels)
    ref_u, ref_inv = np.unique(np.asarray([str(t) for t in labels], dtype=object), return_inverse=True)
    assert uniq.tolist() == ref_u.tolist() == ["3", "3.0", "a", "b"] and inv.tolist() == ref_inv.tolist()
    # tive_tasks takes the pair as it takes the labels
    norms = np.arange(1.0, 8.0)
    a = tive_tasks(norms, labels, excluded_task="3")
    b = tive_tasks(norms, (uniq, inv), excluded_task="3")
    assert a.names == b.names == ["b", "a", "3.0"] and np.array_equal(a.codes, b.codes)
    assert a.codes.tolist() == [0, 1, -1, 0, -1, 1, 2]


def test_icons_default_path_on_float16_needs_no_torch():
    """torch's import is 1.5 s of a whole `vlselect select icons` command at 665K rows; the fused path does not
    need it (a fresh interpreter: torch must not be in sys.modules after the selection)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from vlselect.select import run_method\n"
            "x = np.random.default_rng(0).standard_normal((400, 40)).astype(np.float16)\n"
            "v = np.random.default_rng(1).standard_normal((5, 40))\n"
            "sel = run_method('icons', {'train': x, 'val/a': v, 'val/b': v[:3]}, 0.2)[0]\n"
            "print(sel.count, 'torch' in sys.modules, 'numba' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "VLSELECT_FUSED": "1"})
    assert out.stdout.split() == ["80", "False", "True"]
