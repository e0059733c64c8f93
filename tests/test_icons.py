"""ICONS (specs/icons.md §4, §5, §8, §10): the official packs in strict mode, the default's fixes and tie-break,
the percentile/budget relation, sub-tasks, memmaps, bad input and agreement with the benchmark reference."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from vlselect.errors import SelectionError
from vlselect.select import run_method
from vlselect.select.icons import icons_mean_rank, icons_targets, icons_task_scores, icons_votes

PACKS = ["n3000_4tasks_mme3_top20", "n5000_5tasks_nomme_top15"]
REPO = Path(__file__).resolve().parents[1]


def md5(a: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(a).tobytes()).hexdigest()


def load_pack(vectors_dir: Path, name: str):
    d = vectors_dir / "icons" / name
    P = json.loads((d / "params.json").read_text())
    E = json.loads((d / "expected.json").read_text())
    inputs = {"train": np.load(d / "inputs" / "train_grads.npy", mmap_mode="r")}
    for t in P["regular_tasks"]:
        inputs[f"val/{t['name']}"] = np.load(d / t["val_file"])
    for t in P["mme_subtasks"]:
        inputs[f"val/mme/{t['name']}"] = np.load(d / t["val_file"])
    out = {p.stem: np.load(p) for p in (d / "outputs").glob("*.npy")}
    return P, E, inputs, out


def pack_columns(sel, P):
    """Our voting-task order (sorted names) → the pack's column order."""
    return [sel.info["voting_tasks"].index(t) for t in P["voting_tasks"]]


# ------------------------------------------------------------------------------------------- the packs


@pytest.mark.parametrize("pack", PACKS)
def test_strict_reproduces_pack(vectors_dir, pack):
    P, E, inputs, out = load_pack(vectors_dir, pack)
    k = E["k"]
    sel = run_method("icons", inputs, k, strict_official=True, params={"top_percent": P["top_percent"]})[0]
    votes = sel.scores.astype(np.int64)
    assert np.array_equal(votes, out["votes"]), np.flatnonzero(votes != out["votes"])[:10]
    tie = out["selected_tie_decided"]
    assert sel.count == k == out["selected_indices"].size
    assert set(out["selected_indices"][~tie].tolist()) <= set(sel.indices.tolist())
    assert md5(np.sort(out["selected_indices"][~tie])) == E["non_tied_selected_sorted_md5"]
    info = sel.info
    assert info["boundary_vote"] == E["boundary_vote"]
    assert info["n_rows_vote_above_boundary"] == E["n_rows_vote_above_boundary"]
    assert info["n_selected_from_boundary_group"] == E["n_selected_from_boundary_group"] == int(tie.sum())
    assert info["vote_histogram"] == E["vote_histogram"]
    json.dumps(info)  # manifest-ready
    assert [info["marks_per_task"][t] for t in P["voting_tasks"]] == [E["marks_per_task"][t] for t in P["voting_tasks"]]
    cols = pack_columns(sel, P)
    got_thr = np.asarray(info["thresholds"], dtype=np.float32)[cols]
    assert got_thr.tobytes() == out["thresholds"].tobytes()
    # official order: ascending votes; the top of the list are the highest-vote rows
    assert np.all(np.diff(votes[sel.indices]) >= 0)


@pytest.mark.parametrize("pack", PACKS)
def test_strict_scores_are_bit_identical_and_default_scores_close(vectors_dir, pack):
    P, E, inputs, out = load_pack(vectors_dir, pack)
    targets = icons_targets(inputs)
    cols = [[t.name for t in targets].index(v) for v in P["voting_tasks"]]
    gemm, subs = icons_task_scores(inputs["train"], targets, form="gemm", block_rows=700)
    assert gemm.dtype == np.float32
    assert md5(gemm[:, cols]) == md5(out["task_scores"])
    if P["mme_subtasks"]:
        assert md5(subs["mme"]) == md5(out["mme_subtask_scores"])
    matvec, _ = icons_task_scores(inputs["train"], targets, form="matvec", block_rows=1000)
    assert np.abs(matvec[:, cols] - out["task_scores"]).max() < 1e-6
    thr, mark, votes = icons_votes(gemm[:, cols], 100 - P["top_percent"])
    assert np.array_equal(mark, out["task_top_mask"]) and np.array_equal(votes, out["votes"])


@pytest.mark.parametrize("pack", PACKS)
def test_default_on_pack_same_votes_deterministic_order(vectors_dir, pack):
    P, E, inputs, out = load_pack(vectors_dir, pack)
    k = E["k"]
    sel = run_method("icons", inputs, k, params={"percentile": 100 - P["top_percent"]})[0]
    votes = np.floor(sel.scores).astype(np.int64)
    assert np.array_equal(votes, out["votes"])
    tie = out["selected_tie_decided"]
    assert sel.count == k
    assert set(out["selected_indices"][~tie].tolist()) <= set(sel.indices.tolist())
    assert sel.info["n_selected_from_boundary_group"] == int(tie.sum())
    # priority order: scores (votes + mean rank) strictly descending or equal with ascending index
    s = sel.scores[sel.indices]
    assert np.all(np.diff(s) <= 0)
    again = run_method("icons", inputs, k, params={"top_percent": P["top_percent"]})[0]
    assert np.array_equal(again.indices, sel.indices)


# ------------------------------------------------------------------------------------------- percentile


def test_top_percent_percentile_and_budget_tie(vectors_dir):
    P, E, inputs, out = load_pack(vectors_dir, PACKS[0])
    a = run_method("icons", inputs, 600, params={"top_percent": 20})[0]
    b = run_method("icons", inputs, 600, params={"percentile": 80})[0]
    c = run_method("icons", inputs, 0.2)[0]  # tied: 100 - 100 × 0.2 = 80
    assert a.info["percentile"] == b.info["percentile"] == c.info["percentile"] == 80
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.indices, c.indices)
    assert "note" not in c.info
    # untied: the budget gives k, the percentile stays
    d = run_method("icons", inputs, 300, params={"percentile": 80})[0]
    assert d.count == 300 and d.info["percentile"] == 80 and "not tied" in d.info["note"]
    assert np.array_equal(d.indices, a.indices[:300])
    # two budgets, tied percentiles: each one equals its own run
    e, f = run_method("icons", inputs, "0.1,0.2")
    assert e.info["percentile"] == 90 and f.info["percentile"] == 80
    assert np.array_equal(f.indices, c.indices)
    with pytest.raises(SelectionError, match="disagree"):
        run_method("icons", inputs, 600, params={"top_percent": 20, "percentile": 70})
    with pytest.raises(SelectionError, match="outside"):
        run_method("icons", inputs, 600, params={"top_percent": 120})


# ------------------------------------------------------------------------------------------- by hand


def test_tie_break_by_mean_rank_then_index():
    # 2 tasks, 6 rows, percentile 50 -> each task marks its top 3.
    # task A scores: rows 0..5 = 6,5,4,3,2,1 ; task B: 1,2,3,6,5,4
    # marks A: {0,1,2}; B: {3,4,5} -> every row has 1 vote; mean rank decides:
    # ranks A (0-based/6): 5,4,3,2,1,0 ; B: 0,1,2,5,4,3 -> sums 5,5,5,7,5,3
    scores = np.array([[6, 1], [5, 2], [4, 3], [3, 6], [2, 5], [1, 4]], dtype=np.float64)
    valid = np.ones(6, dtype=bool)
    thr, mark, votes = icons_votes(scores, 50, valid=valid)
    assert votes.tolist() == [1] * 6
    mr = icons_mean_rank(scores, valid)
    np.testing.assert_allclose(mr * 12, [5, 5, 5, 7, 5, 3])
    # the same through the method: rows (A, B, c) of equal length 10, so the normalised scores are A/10, B/10
    c = np.sqrt(100 - scores[:, 0] ** 2 - scores[:, 1] ** 2)
    train = np.column_stack([scores, c]).astype(np.float32)
    ex = np.eye(3, dtype=np.float32)
    sel = run_method("icons", {"train": train, "val/a": ex[:1], "val/b": ex[1:2]}, 4, params={"percentile": 50})[0]
    # row 3 has the highest mean rank; rows 0, 1, 2 tie on it (5) and go by index; rows 4 (5) and 5 (3) miss
    assert sel.indices.tolist() == [3, 0, 1, 2]


def test_identical_rows_get_identical_scores_and_order_by_index():
    rng = np.random.default_rng(1)
    train = rng.standard_normal((50, 6)).astype(np.float32)
    train[10] = train[20] = train[30] = train[7]
    val = rng.standard_normal((4, 6)).astype(np.float32)
    sel = run_method("icons", {"train": train, "val/x": val}, 10)[0]
    assert sel.scores[7] == sel.scores[10] == sel.scores[20] == sel.scores[30]
    pos = [int(np.flatnonzero(sel.indices == i)[0]) for i in (7, 10, 20, 30) if i in sel.indices]
    assert pos == sorted(pos)


def test_subtasks_are_raw_and_maxed_regular_tasks_normalised():
    rng = np.random.default_rng(2)
    train = rng.standard_normal((200, 16)).astype(np.float32)
    v1 = rng.standard_normal((5, 16)).astype(np.float32)
    v2 = rng.standard_normal((7, 16)).astype(np.float32)
    t = icons_targets({"train": train, "val/m/a": v1, "val/m/b": v2, "val/r": v1})
    assert [x.name for x in t] == ["m", "r"] and t[0].subtasks == ["a", "b"]
    s, subs = icons_task_scores(train, t)
    g = train / np.linalg.norm(train, axis=1, keepdims=True)
    np.testing.assert_allclose(subs["m"][:, 0], g @ v1.mean(0), atol=1e-6)
    np.testing.assert_allclose(s[:, 0], np.maximum(g @ v1.mean(0), g @ v2.mean(0)), atol=1e-6)
    v1n = v1 / np.linalg.norm(v1, axis=1, keepdims=True)
    np.testing.assert_allclose(s[:, 1], g @ v1n.mean(0), atol=1e-6)
    # scaling a regular task's validation rows changes nothing; scaling a sub-task's does
    s2, subs2 = icons_task_scores(train, icons_targets({"val/m/a": 3 * v1, "val/m/b": v2, "val/r": 3 * v1}))
    np.testing.assert_allclose(s2[:, 1], s[:, 1], atol=1e-6)
    np.testing.assert_allclose(subs2["m"][:, 0], 3 * subs["m"][:, 0], atol=1e-5)


def test_nan_row_excluded_by_default_but_zeroes_votes_in_strict():
    """Q15: one NaN training row makes every official percentile NaN and every vote zero."""
    rng = np.random.default_rng(4)
    train = rng.standard_normal((400, 12)).astype(np.float32)
    train[17, 2] = np.nan
    vals = {f"val/t{i}": rng.standard_normal((6, 12)).astype(np.float32) for i in range(3)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        strict = run_method("icons", {"train": train, **vals}, 0.2, strict_official=True)[0]
        assert strict.scores.max() == 0 and strict.info["vote_histogram"][0] == 400
        default = run_method("icons", {"train": train, **vals}, 0.2)[0]
    assert 17 not in default.indices and np.isnan(default.scores[17])
    assert default.count == 79 and np.nanmax(default.scores) >= 3  # 0.2 of the 399 selectable rows
    assert default.info["excluded_rows"]["count"] == 1
    # direct call without the dispatcher: the method itself excludes the row
    direct, = run_method.__globals__["get_method"]("icons").fn(
        {"train": train, **vals}, None, [run_method.__globals__["resolve_budget"](0.2, 400)], top_percent=None,
        percentile=None, score_form=None)
    assert 17 not in direct.indices and direct.info["invalid_rows"]["count"] == 1


def test_budget_beyond_voted_rows_is_filled_in_priority_order():
    rng = np.random.default_rng(5)
    train = rng.standard_normal((100, 8)).astype(np.float32)
    val = rng.standard_normal((3, 8)).astype(np.float32)
    sel = run_method("icons", {"train": train, "val/x": val}, 60, params={"top_percent": 10})[0]
    assert sel.count == 60 and np.unique(sel.indices).size == 60
    assert np.all(np.diff(sel.scores[sel.indices]) <= 0)


def test_memmap_float16_blocks_match_in_memory(tmp_path):
    rng = np.random.default_rng(6)
    train = rng.standard_normal((2500, 24)).astype(np.float16)
    np.save(tmp_path / "t.npy", train)
    mm = np.load(tmp_path / "t.npy", mmap_mode="r")
    t = icons_targets({"val/a": rng.standard_normal((9, 24)), "val/b/x": rng.standard_normal((4, 24))})
    a, _ = icons_task_scores(train, t, block_rows=2500)
    b, _ = icons_task_scores(mm, t, block_rows=333)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)  # float64; BLAS blocking may move the last bit


def test_bad_roles_and_shapes():
    rng = np.random.default_rng(7)
    train = rng.standard_normal((50, 8)).astype(np.float32)
    v = rng.standard_normal((3, 8)).astype(np.float32)
    with pytest.raises(SelectionError, match="both"):
        run_method("icons", {"train": train, "val/m": v, "val/m/a": v}, 10)
    with pytest.raises(SelectionError, match="neither"):
        run_method("icons", {"train": train, "val/m/a/b": v}, 10)
    with pytest.raises(SelectionError, match="wide"):
        run_method("icons", {"train": train, "val/m": v[:, :4]}, 10)
    with pytest.raises(SelectionError, match="val/\\*"):
        run_method("icons", {"train": train}, 10)
    with pytest.raises(SelectionError, match="larger than the pool"):
        run_method("icons", {"train": train, "val/m": v}, 51)


# ------------------------------------------------------------------------------------------- reference


def test_reference_and_strict_agree(vectors_dir):
    path = REPO / "benchmarks" / "_reference_icons.py"
    spec = importlib.util.spec_from_file_location("_reference_icons", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    P, E, inputs, out = load_pack(vectors_dir, PACKS[0])
    regular = {t["name"]: inputs[f"val/{t['name']}"] for t in P["regular_tasks"]}
    mme = {t["name"]: inputs[f"val/mme/{t['name']}"] for t in P["mme_subtasks"]}
    ref = mod.official_icons_select(np.asarray(inputs["train"]), regular, mme, top_percent=20)
    ours = run_method("icons", inputs, ref["k"], strict_official=True, params={"top_percent": 20})[0]
    assert np.array_equal(ref["votes"], ours.scores.astype(np.int64))
    assert np.array_equal(ref["votes"], out["votes"])
    # same votes, same NumPy argsort on this machine: the same ordered list
    assert np.array_equal(ref["selected"], ours.indices)


def test_strict_hybrid_equals_full_official_gemm(vectors_dir):
    """The strict default recomputes only the rows near each threshold officially; thresholds, votes and the
    ordered list equal the all-rows GEMM at every budget, also with a split task."""
    P, E, inputs, out = load_pack(vectors_dir, PACKS[0])
    hyb = run_method("icons", inputs, "0.05,0.2,0.5", strict_official=True)
    full = run_method("icons", inputs, "0.05,0.2,0.5", strict_official=True, params={"score_form": "gemm"})
    for h, f in zip(hyb, full):
        assert h.info["score_form"] == "hybrid" and not h.info["full_gemm"]
        assert 0 < h.info["rows_recomputed"] < 600
        assert h.info["thresholds"] == f.info["thresholds"]
        assert np.array_equal(h.scores, f.scores) and np.array_equal(h.indices, f.indices)
    rng = np.random.default_rng(8)
    train = (rng.standard_normal((4000, 64)) * rng.lognormal(0, 0.7, (4000, 1))).astype(np.float16)
    vals = {"val/a": 100 * rng.standard_normal((30, 64)), "val/s/x": 3 * rng.standard_normal((20, 64)),
            "val/s/y": rng.standard_normal((10, 64))}
    h = run_method("icons", {"train": train, **vals}, 0.3, strict_official=True)[0]
    f = run_method("icons", {"train": train, **vals}, 0.3, strict_official=True, params={"score_form": "gemm"})[0]
    assert h.info["thresholds"] == f.info["thresholds"] and np.array_equal(h.scores, f.scores)
    assert not h.info["full_gemm"] and h.info["rows_recomputed"] < 400  # regular rows are unit: no norm-scaled δ


# ------------------------------------------------------------------------------------------- CLI


def _cli(args):
    from vlselect.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code


def test_cli_strict_pack_as_the_vectors_readme_says(vectors_dir, tmp_path):
    P, E, inputs, out = load_pack(vectors_dir, PACKS[0])
    d = vectors_dir / "icons" / PACKS[0]
    args = ["select", "icons", "--input", f"train={d}/inputs/train_grads.npy"]
    for t in P["regular_tasks"]:
        args += ["--input", f"val/{t['name']}={d}/{t['val_file']}"]
    for t in P["mme_subtasks"]:
        args += ["--input", f"val/mme/{t['name']}={d}/{t['val_file']}"]
    args += ["--budget", str(E["k"]), "--param", f"top_percent={P['top_percent']}", "--strict-official",
             "--out", str(tmp_path / "o")]
    assert _cli(args) in (0, None)
    got = np.load(tmp_path / "o" / "indices.npy")
    tie = out["selected_tie_decided"]
    assert got.size == E["k"] and set(out["selected_indices"][~tie].tolist()) <= set(got.tolist())
    assert np.isin(got, np.flatnonzero(out["votes"] == E["boundary_vote"])).sum() == int(tie.sum())


def test_cli_conflicting_percentiles_exit_2(vectors_dir, tmp_path, capsys):
    d = vectors_dir / "icons" / PACKS[1]
    code = _cli(["select", "icons", "--input", f"train={d}/inputs/train_grads.npy", "--input",
                 f"val/gqa={d}/inputs/val_gqa.npy", "--budget", "0.15", "--param", "top_percent=15",
                 "--param", "percentile=80", "--out", str(tmp_path / "o")])
    assert code == 2 and "disagree" in capsys.readouterr().err
