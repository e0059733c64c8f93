"""TIVE (specs/tive.md §5, §8): the official packs in strict mode, the default's bug fixes on hand-checkable
cases, memmaps, budgets, parameters, bad input and agreement with the benchmark reference."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from vlselect.errors import SelectionError, VlselectError
from vlselect.select import run_method
from vlselect.select.tive import (
    tive_fixed_counts,
    tive_instance_scores,
    tive_instance_weights,
    tive_official_counts,
    tive_tasks,
)

PACKS = ["n3000_6tasks_p015_q0001", "n4000_8tasks_p020_q20"]
REPO = Path(__file__).resolve().parents[1]


def md5(a: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(a).tobytes()).hexdigest()


def load_pack(vectors_dir: Path, name: str):
    d = vectors_dir / "tive" / name
    params = json.loads((d / "params.json").read_text())
    expected = json.loads((d / "expected.json").read_text())
    inputs = {
        "train": np.load(d / "inputs" / "features.npy", mmap_mode="r"),
        "norms": np.load(d / "inputs" / "grad_norms.npy"),
    }
    labels = json.loads((d / "inputs" / "task_labels.json").read_text())
    out = {p.stem: np.load(p) for p in (d / "outputs").glob("*.npy")}
    out["task_order"] = json.loads((d / "outputs" / "task_order.json").read_text())
    return d, params, expected, inputs, labels, out


def run_pack(vectors_dir, name, **params):
    d, P, E, inputs, labels, out = load_pack(vectors_dir, name)
    given = {"q": P["q"], "seed": P["numpy_seed"], "excluded_task": P["excluded_task"], **params}
    sel = run_method("tive", inputs, P["p"], tasks=labels, strict_official=True, params=given)[0]
    return sel, P, E, inputs, labels, out


# ------------------------------------------------------------------------------------------- the packs


@pytest.mark.parametrize("pack", PACKS)
def test_strict_reproduces_pack_selection_and_task_table(vectors_dir, pack):
    sel, P, E, inputs, labels, out = run_pack(vectors_dir, pack)
    assert sel.indices.dtype == np.int64
    assert np.array_equal(sel.indices, out["selected_indices"])
    assert md5(sel.indices) == E["md5"]["selected_indices"]
    info = sel.info
    assert info["task_order"] == out["task_order"] == E["task_order"]
    per = [info["per_task"][t] for t in info["task_order"]]
    counts = np.array([[r["n"], r["copies"], r["sampled"], r["rows_out"], r["offset"]] for r in per], dtype=np.int64)
    assert np.array_equal(counts, out["task_counts"])
    assert np.array([r["norm_sum"] for r in per]).tobytes() == out["task_norm_sums"].tobytes()
    assert np.array([r["value"] for r in per]).tobytes() == out["task_values"].tobytes()
    np.testing.assert_allclose([r["quota"] for r in per], out["task_quota"], rtol=1e-12)
    assert info["total_task_value"] == pytest.approx(E["total_task_value"], rel=1e-12)
    assert info["n_unique"] == E["n_unique"]
    json.dumps(info)  # manifest-ready
    # instance values: the O(n·d) form is within the pack's tolerance of the official Gram row means
    ref = out["instance_scores"]
    ours = sel.scores
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
    keep = ~np.isnan(ref)
    assert np.abs(ours[keep] - ref[keep]).max() < 1e-6


@pytest.mark.parametrize("pack", PACKS)
def test_strict_instance_weights_match_pack(vectors_dir, pack):
    sel, P, E, inputs, labels, out = run_pack(vectors_dir, pack)
    ref_w = out["instance_weights"]
    lab = np.asarray(labels)
    for task in out["task_order"]:
        rows = np.flatnonzero(lab == task)
        w = tive_instance_weights(sel.scores[rows].astype(np.float32), P["q"])
        assert w.dtype == np.float32
        np.testing.assert_allclose(w, ref_w[rows], rtol=1e-5)


@pytest.mark.parametrize("pack", PACKS)
def test_gram_form_is_bit_identical_to_the_official_scores(vectors_dir, pack):
    sel, P, E, inputs, labels, out = run_pack(vectors_dir, pack, score_form="gram")
    assert md5(sel.scores.astype(np.float32)) == E["md5"]["instance_scores"]
    assert md5(sel.indices) == E["md5"]["selected_indices"]


def test_sampler_alone_reproduces_pack_from_stored_weights(vectors_dir):
    """The pack README's check: stored weights fed to one legacy choice call per task, in task order."""
    d, P, E, inputs, labels, out = load_pack(vectors_dir, PACKS[1])
    lab = np.asarray(labels)
    rng = np.random.RandomState(P["numpy_seed"])
    got = []
    for t, row in zip(out["task_order"], out["task_counts"]):
        rows = np.flatnonzero(lab == t)
        got += list(rows) * int(row[1])
        got += list(rng.choice(rows, size=int(row[2]), replace=False, p=out["instance_weights"][rows]))
    assert np.array_equal(np.asarray(got), out["selected_indices"])


def test_uniform_weights_would_differ_on_the_peaked_pack(vectors_dir):
    """Instance values matter on the q = 20 pack: uniform weights give another selection (pack README)."""
    d, P, E, inputs, labels, out = load_pack(vectors_dir, PACKS[1])
    lab = np.asarray(labels)
    rng = np.random.RandomState(P["numpy_seed"])
    got = []
    for t, row in zip(out["task_order"], out["task_counts"]):
        rows = np.flatnonzero(lab == t)
        got += list(rows) * int(row[1])
        got += list(rng.choice(rows, size=int(row[2]), replace=False, p=np.full(rows.size, 1 / rows.size)))
    assert not np.array_equal(np.asarray(got), out["selected_indices"])


# ------------------------------------------------------------------------------------------- default fixes


def test_default_meets_the_budget_exactly_without_duplicates(vectors_dir):
    d, P, E, inputs, labels, out = load_pack(vectors_dir, PACKS[0])
    sel = run_method("tive", inputs, P["p"], tasks=labels, params={"seed": P["numpy_seed"], "q": P["q"]})[0]
    assert sel.count == 450 == sel.budget.count  # official: 447, 392 distinct
    assert np.unique(sel.indices).size == 450
    per = sel.info["per_task"]
    assert per["okvqa"]["sampled"] == 60 and per["okvqa"]["copies"] == 0  # capped at the task size
    assert sum(r["sampled"] for r in per.values()) == 450
    assert not np.isin(sel.indices, np.flatnonzero(np.asarray(labels) == "textcaps")).any()
    assert sel.shortfall == 0


def test_fixed_counts_by_hand():
    # values 3:1:1, sizes 2/10/10, budget 10: task 0 wants 6 > 2 rows -> capped at 2; 8 left split 4/4
    assert tive_fixed_counts(np.array([3.0, 1.0, 1.0]), np.array([2, 10, 10]), 10).tolist() == [2, 4, 4]
    # equal values, budget 10 over 3 tasks: 3.33 each -> largest remainder, ties to the earlier task
    assert tive_fixed_counts(np.array([1.0, 1.0, 1.0]), np.array([9, 9, 9]), 10).tolist() == [4, 3, 3]
    # cascading caps: 8:1:1 of 12 -> 9.6 > 3 capped, then 9 over 1:1 -> 4.5 each > 4 capped -> [3, 4, 4] = 11
    assert tive_fixed_counts(np.array([8.0, 1.0, 1.0]), np.array([3, 4, 4]), 12).tolist() == [3, 4, 4]
    # the official truncation on the same inputs: 6 -> 3 copies of task 0; 2 and 2 sampled
    copies, sampled = tive_official_counts(np.array([6.0, 2.0, 2.0]), np.array([2, 10, 10]))
    assert copies.tolist() == [3, 0, 0] and sampled.tolist() == [0, 2, 2]
    copies, sampled = tive_official_counts(np.array([10 / 3] * 3), np.array([9, 9, 9]))
    assert sampled.sum() == 9  # one row short


def small_pool():
    """Three tasks: 'a' (2 rows, large norms), 'b' and 'c' (10 rows each), and 2 'textcaps' rows."""
    rng = np.random.default_rng(0)
    labels = ["a"] * 2 + ["b"] * 10 + ["c"] * 10 + ["textcaps"] * 2
    norms = np.array([3.0] * 2 + [1.0] * 10 + [1.0] * 10 + [5.0] * 2)
    X = rng.standard_normal((24, 8)).astype(np.float32)
    return X, norms, labels


def test_duplicates_strict_versus_default_by_hand():
    X, norms, labels = small_pool()
    # budget 0.5 of 24 rows = 12; values 3:1:1 (textcaps excluded but counted in N)
    strict = run_method("tive", {"train": X, "norms": norms}, 0.5, tasks=labels, strict_official=True)[0]
    per = strict.info["per_task"]
    assert per["a"]["quota"] == pytest.approx(7.2) and per["a"]["copies"] == 3 and per["a"]["sampled"] == 1
    assert per["b"]["sampled"] == 2 and per["c"]["sampled"] == 2  # 2.4 truncated
    assert strict.count == 11 and np.unique(strict.indices).size == 6  # 3 whole copies of rows 0, 1 (+1 draw)
    assert strict.indices[:6].tolist() == [0, 1, 0, 1, 0, 1]
    default = run_method("tive", {"train": X, "norms": norms}, 0.5, tasks=labels)[0]
    per = default.info["per_task"]
    assert [per[t]["sampled"] for t in "abc"] == [2, 5, 5]  # 'a' capped at 2, 10 left split 5/5
    assert default.count == 12 and np.unique(default.indices).size == 12
    assert set(default.indices[:2].tolist()) == {0, 1}


def test_shortfall_strict_versus_default_by_hand():
    X, norms, labels = small_pool()
    norms = norms.copy()
    norms[:2] = 1.0  # equal values: 10 rows over 3 tasks = 3.33 each
    strict = run_method("tive", {"train": X, "norms": norms}, 10, tasks=labels, strict_official=True)[0]
    assert strict.count == 9 and strict.info["official_shortfall"] == 1
    default = run_method("tive", {"train": X, "norms": norms}, 10, tasks=labels)[0]
    assert default.count == 10 and [default.info["per_task"][t]["sampled"] for t in "abc"] == [2, 4, 4]


def test_budget_larger_than_eligible_rows_takes_all_and_reports():
    X, norms, labels = small_pool()
    sel = run_method("tive", {"train": X, "norms": norms}, 23, tasks=labels)[0]
    assert sel.count == 22 and sel.shortfall == 1 and "eligible" in sel.info["note"]
    assert sorted(sel.indices.tolist()) == list(range(22))


def test_nan_rows_excluded_by_default_and_rejected_in_strict():
    X, norms, labels = small_pool()
    X = X.copy()
    X[5, 3] = np.nan
    norms = norms.copy()
    norms[7] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sel = run_method("tive", {"train": X, "norms": norms}, 0.5, tasks=labels)[0]
        assert sel.count == 11 and not np.isin([5, 7], sel.indices).any()  # 0.5 of the 22 selectable rows
        assert np.isnan(sel.scores[[5, 7]]).all() and np.isfinite(sel.scores[8:22]).all()
        with pytest.raises(SelectionError, match="official code crashes"):
            run_method("tive", {"train": X, "norms": norms}, 0.5, tasks=labels, strict_official=True)


def test_nan_feature_row_in_direct_scores_never_poisons_the_task():
    X, norms, labels = small_pool()
    X = X.copy()
    X[4] = np.nan
    tt = tive_tasks(norms, labels)
    scores, finite = tive_instance_scores(X, tt.codes, len(tt.names), block_rows=5)
    assert not finite[4] and np.isnan(scores[4])
    assert np.isfinite(scores[np.r_[2:4, 5:12]]).all()


# ------------------------------------------------------------------------------------------- scores, inputs


def test_instance_scores_by_hand():
    # task t: rows e1, e1, e2 -> unit rows; centroid (2/3, 1/3); s = (2/3, 2/3, 1/3)
    X = np.array([[2.0, 0.0], [5.0, 0.0], [0.0, 3.0], [1.0, 1.0]], dtype=np.float32)
    codes = np.array([0, 0, 0, -1])
    s, finite = tive_instance_scores(X, codes, 1, block_rows=2)
    np.testing.assert_allclose(s[:3], [2 / 3, 2 / 3, 1 / 3], rtol=1e-6)
    assert np.isnan(s[3]) and finite.all()


def test_memmap_float16_blocks_match_in_memory(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3000, 32)).astype(np.float16)
    labels = list(rng.choice(["x", "y", "z", "textcaps"], size=3000))
    norms = rng.lognormal(0, 0.3, 3000)
    np.save(tmp_path / "x.npy", X)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    tt = tive_tasks(norms, labels)
    a, _ = tive_instance_scores(X, tt.codes, len(tt.names), block_rows=3000)
    b, _ = tive_instance_scores(mm, tt.codes, len(tt.names), block_rows=257)
    np.testing.assert_allclose(a, b, atol=1e-6, equal_nan=True)
    s1 = run_method("tive", {"train": X, "norms": norms}, 0.1, tasks=labels, params={"seed": 5})[0]
    s2 = run_method("tive", {"train": mm, "norms": norms}, 0.1, tasks=labels, params={"seed": 5})[0]
    assert np.array_equal(s1.indices, s2.indices) and s1.count == 300


def test_several_budgets_one_call_equal_separate_calls():
    X, norms, labels = small_pool()
    both = run_method("tive", {"train": X, "norms": norms}, "0.25,10", tasks=labels, params={"seed": 9})
    for b, sel in zip(["0.25", "10"], both):
        one = run_method("tive", {"train": X, "norms": norms}, b, tasks=labels, params={"seed": 9})[0]
        assert np.array_equal(sel.indices, one.indices)
    assert [s.count for s in both] == [6, 10]


def test_seed_names_and_parameters():
    X, norms, labels = small_pool()
    a = run_method("tive", {"train": X, "norms": norms}, 12, tasks=labels, params={"seed": 3})[0]
    b = run_method("tive", {"train": X, "norms": norms}, 12, tasks=labels, params={"numpy_seed": 3})[0]
    c = run_method("tive", {"train": X, "norms": norms}, 12, tasks=labels, seed=3)[0]
    d = run_method("tive", {"train": X, "norms": norms}, 12, tasks=labels, seed=4)[0]
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.indices, c.indices)
    assert not np.array_equal(a.indices, d.indices)
    # excluded_task=none lets textcaps take part
    e = run_method("tive", {"train": X, "norms": norms}, 12, tasks=labels, params={"excluded_task": "none"})[0]
    assert "textcaps" in e.info["task_order"] and e.info["per_task"]["textcaps"]["sampled"] > 0
    with pytest.raises(SelectionError, match="no parameter"):
        run_method("tive", {"train": X, "norms": norms}, 12, tasks=labels, params={"temperature": 1})
    with pytest.raises(SelectionError, match="task labels"):
        run_method("tive", {"train": X, "norms": norms}, 12)
    with pytest.raises(VlselectError):
        run_method("tive", {"train": X, "norms": norms[:5]}, 12, tasks=labels)
    with pytest.raises(SelectionError):
        run_method("tive", {"train": X, "norms": norms}, 30, tasks=labels)


def test_first_appearance_order_skips_excluded_rows():
    tt = tive_tasks(np.ones(5), ["textcaps", "b", "a", "b", "textcaps"])
    assert tt.names == ["b", "a"] and tt.codes.tolist() == [-1, 0, 1, 0, -1]
    assert [r.tolist() for r in tt.rows] == [[1, 3], [2]]


# ------------------------------------------------------------------------------------------- reference


def _load_reference():
    path = REPO / "benchmarks" / "_reference_tive.py"
    spec = importlib.util.spec_from_file_location("_reference_tive", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("q", [0.001, 20.0])
def test_reference_and_strict_agree_on_a_small_case(q):
    rng = np.random.default_rng(21)
    n, d = 1500, 48
    tasks = np.array(["llava", "vqav2", "okvqa", "gqa", "textcaps"])
    labels = tasks[rng.choice(5, size=n, p=[0.3, 0.3, 0.02, 0.28, 0.1])]
    mu = rng.standard_normal((5, d))
    X = (mu[rng.choice(5, size=n)] + rng.standard_normal((n, d))).astype(np.float32)
    norms = rng.lognormal(0, 0.4, n).astype(np.float16).astype(np.float64)
    norms[labels == "okvqa"] *= 4  # small task with a large value: whole copies
    ref = _load_reference().official_tive_select(X, norms, labels, p=0.15, q=q, seed=77)
    ours = run_method("tive", {"train": X, "norms": norms}, 0.15, tasks=labels, strict_official=True,
                      params={"q": q, "seed": 77})[0]
    assert ref["per_task"]["okvqa"]["copies"] >= 1
    assert ours.indices.tolist() == ref["selected_idx"]
    assert ours.info["task_order"] == ref["task_order"]


# ------------------------------------------------------------------------------------------- CLI


def _cli(args):
    from vlselect.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code


@pytest.mark.parametrize("seed_name", ["seed", "numpy_seed"])
def test_cli_strict_pack_as_the_vectors_readme_says(vectors_dir, tmp_path, seed_name):
    d, P, E, inputs, labels, out = load_pack(vectors_dir, PACKS[1])
    code = _cli([
        "select", "tive", "--input", f"train={d}/inputs/features.npy", "--input", f"norms={d}/inputs/grad_norms.npy",
        "--tasks", f"{d}/inputs/task_labels.json", "--budget", str(P["p"]), "--param", f"q={P['q']}",
        "--param", f"{seed_name}={P['numpy_seed']}", "--param", f"excluded_task={P['excluded_task']}",
        "--strict-official", "--out", str(tmp_path / "o"),
    ])
    assert code in (0, None)
    assert np.array_equal(np.load(tmp_path / "o" / "indices.npy"), out["selected_indices"])


def test_cli_bad_parameter_exits_2(vectors_dir, tmp_path, capsys):
    d = vectors_dir / "tive" / PACKS[0]
    code = _cli([
        "select", "tive", "--input", f"train={d}/inputs/features.npy", "--input", f"norms={d}/inputs/grad_norms.npy",
        "--tasks", f"{d}/inputs/task_labels.json", "--budget", "0.15", "--param", "score_form=dense",
        "--out", str(tmp_path / "o"),
    ])
    assert code == 2 and "score_form" in capsys.readouterr().err


def test_underflowing_weights_strict_error_default_fills_by_score():
    """q so large that softmax(q·s) underflows to 0 for all but the top rows: the official choice call raises."""
    rng = np.random.default_rng(11)
    X = rng.standard_normal((20, 6)).astype(np.float32)
    labels = ["a"] * 10 + ["b"] * 10
    norms = np.ones(20)
    with pytest.raises(SelectionError, match="non-zero weight"):
        run_method("tive", {"train": X, "norms": norms}, 18, tasks=labels, strict_official=True, params={"q": 5000})
    sel = run_method("tive", {"train": X, "norms": norms}, 18, tasks=labels, params={"q": 5000})[0]
    assert sel.count == 18 and np.unique(sel.indices).size == 18
    a = sel.indices[:9]
    s = sel.scores[a]
    w = tive_instance_weights(sel.scores[:10].astype(np.float32), 5000)
    nnz = int((w > 0).sum())
    assert nnz < 9 and np.all(np.diff(s[nnz:]) <= 0)  # the zero-weight rows come last, by instance value
