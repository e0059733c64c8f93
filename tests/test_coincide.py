"""COINCIDE (vlselect.select.coincide) against the official packs, the reference re-creation, and each fix of a
documented official bug (specs/coincide.md §2-§5, §8)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from vlselect.errors import SelectionError
from vlselect.select import REGISTRY, resolve_budget, run_method
from vlselect.select.coincide import (
    GreedyMMD,
    allocate_budget,
    cluster_density,
    cluster_transferability,
    coincide_select,
    coincide_stages,
)

PACKS = ["n2000_k40_frac020_temp010", "n3000_k60_frac015_temp005"]
REPO = Path(__file__).resolve().parents[1]


def _reference():
    spec = importlib.util.spec_from_file_location("_reference_coincide", REPO / "benchmarks" / "_reference_coincide.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_reference_coincide", mod)
    spec.loader.exec_module(mod)
    return mod


def _pack(vectors_dir, name):
    d = vectors_dir / "coincide" / name
    p = json.loads((d / "params.json").read_text())
    out = {f.stem: np.load(f) for f in (d / "outputs").glob("*.npy")}
    return np.load(d / "inputs" / "features.npy"), p, out


def _params(p):
    return {
        "n_clusters": p["kmeans"]["n_clusters"], "niter": p["kmeans"]["niter"], "seed": p["kmeans"]["seed"],
        "knn_k": p["transferability"]["knn_k"],
        "near_duplicate_cosine_cut": p["transferability"]["near_duplicate_cosine_cut"],
        "temp": p["prune"]["temp"], "sigma": p["prune"]["sigma"], "num_layers": p["num_layers"],
        "hidden_size": p["hidden_size"],
    }


def _layout_rows(raw: np.ndarray, num_layers: int, hidden: int) -> np.ndarray:
    """Official feature shape: per part tanh, L2-normalise, / sqrt(2L) (unit rows)."""
    n = raw.shape[0]
    x = np.tanh(raw).reshape(n, 2 * num_layers, hidden)
    x = x / np.linalg.norm(x, axis=2, keepdims=True) / np.sqrt(2 * num_layers)
    return x.reshape(n, -1).astype(np.float32)


def _mixture(n, topics, num_layers, hidden, seed):
    rng = np.random.default_rng(seed)
    d = 2 * num_layers * hidden
    lab = rng.choice(topics, size=n, p=rng.dirichlet([0.7] * topics))
    means = rng.normal(0, 1, d) + rng.normal(0, 0.8, (topics, d))
    raw = means[lab] + rng.uniform(0.3, 1.5, topics)[lab, None] * rng.normal(0, 1, (n, d))
    return _layout_rows(raw, num_layers, hidden)


# ------------------------------------------------------------------------------------------- the packs


@pytest.mark.parametrize("pack", PACKS)
def test_strict_run_from_raw_features_reproduces_the_pack(vectors_dir, pack):
    # From raw features the k-means runs in faiss, whose BLAS kernels differ by CPU (AVX2 vs AVX-512): centroids
    # move by an ulp, so the floats downstream compare to float32 rounding; every index is still exact.
    x, p, out = _pack(vectors_dir, pack)
    sel, = run_method("coincide", {"features": x}, p["prune"]["fraction"], strict_official=True, params=_params(p))
    np.testing.assert_array_equal(sel.indices, out["selected_indices"])
    np.testing.assert_array_equal(np.array(sel.info["budget_table"]), out["budget_table"])
    np.testing.assert_allclose(sel.info["step_ratio"], out["step_ratio"], rtol=1e-5, atol=0)
    assert sel.count == len(out["selected_indices"]) and sel.shortfall == 0 and sel.info["official_shortfall"] == 0
    assert sel.params["kmeans_seed"] == 1234 and sel.strict_official
    # every intermediate, from the raw features
    st = coincide_stages(x, knn_k=4, strict_official=True, **{k: v for k, v in _params(p).items()
                                                              if k not in ("seed", "knn_k")}, kmeans_seed=1234)
    np.testing.assert_array_equal(st.assignment, out["cluster_assignment"])
    np.testing.assert_allclose(st.centroids, out["centroids"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(st.assigned_centroid_ip, out["assigned_centroid_ip"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(st.transferability, out["transferability"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(st.knn_indices, out["knn_indices"])
    np.testing.assert_allclose(st.knn_similarity, out["knn_similarity"], rtol=0, atol=1e-6)
    for name in ("cluster_density", "cluster_score", "initial_ratio"):
        np.testing.assert_allclose(getattr(st, name), out[name], rtol=1e-5, atol=0, err_msg=name)
    alloc = allocate_budget(st.cluster_score, st.sizes, int(p["prune"]["fraction"] * x.shape[0]),
                            temp=p["prune"]["temp"])
    np.testing.assert_array_equal(alloc.order, out["processing_order"])
    np.testing.assert_array_equal(alloc.table(st.sizes), out["budget_table"])
    # the score of a row is its cluster's softmax probability
    np.testing.assert_allclose(sel.scores, out["initial_ratio"][out["cluster_assignment"]], rtol=1e-5)


@pytest.mark.parametrize("pack", PACKS)
def test_strict_run_from_the_stored_kmeans_and_transferability_reproduces_the_pack(vectors_dir, pack):
    x, p, out = _pack(vectors_dir, pack)
    prm = _params(p)
    st = coincide_stages(x, assignment=out["cluster_assignment"], centroids=out["centroids"],
                         transferability=out["transferability"], temp=prm["temp"], sigma=prm["sigma"],
                         num_layers=prm["num_layers"], hidden_size=prm["hidden_size"], strict_official=True)
    np.testing.assert_allclose(st.cluster_density, out["cluster_density"], rtol=1e-12, atol=0)
    budget = resolve_budget(p["prune"]["fraction"], x.shape[0])
    sel, = coincide_select(x, st, [budget], temp=prm["temp"], sigma=prm["sigma"], strict_official=True)
    np.testing.assert_array_equal(sel.indices, out["selected_indices"])
    # stage 2 alone from the stored centroids
    t, _, _ = cluster_transferability(out["centroids"], num_layers=prm["num_layers"], hidden_size=prm["hidden_size"])
    np.testing.assert_allclose(t, out["transferability"], rtol=0, atol=1e-6)
    # the allocation alone from the stored scores and sizes
    sizes = np.bincount(out["cluster_assignment"], minlength=len(out["cluster_score"]))
    a = allocate_budget(out["cluster_score"], sizes, budget.count, temp=prm["temp"])
    np.testing.assert_array_equal(a.table(sizes), out["budget_table"])
    np.testing.assert_allclose(a.step_ratio, out["step_ratio"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(cluster_density(x, out["cluster_assignment"], len(sizes)), out["cluster_density"],
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("pack", PACKS)
def test_default_mode_equals_strict_on_the_packs_where_no_bug_is_triggered(vectors_dir, pack):
    x, p, out = _pack(vectors_dir, pack)
    sel, = run_method("coincide", {"features": x}, p["prune"]["fraction"], params=_params(p))
    np.testing.assert_array_equal(sel.indices, out["selected_indices"])
    assert not sel.strict_official and sel.info["shortfall_fill_rounds"] == []


def test_aliases_global_seed_and_several_budgets(vectors_dir):
    x, p, out = _pack(vectors_dir, PACKS[0])
    base = {"K": 40, "temperature": 0.1, "num_layers": 4, "hidden_size": 16}
    # no kmeans seed given: 1234 + the global seed, so the default global seed 0 is the official 1234
    sels = run_method("coincide", {"features": x}, "0.2,100,0.05", params=base, strict_official=True)
    assert [s.params["kmeans_seed"] for s in sels] == [1234] * 3
    np.testing.assert_array_equal(sels[0].indices, out["selected_indices"])
    assert [s.count for s in sels] == [400, 100, 100]
    # one pass for three budgets = three separate runs
    for s, b in zip(sels[1:], ["100", "0.05"]):
        alone, = run_method("coincide", {"features": x}, b, params=base, strict_official=True)
        np.testing.assert_array_equal(s.indices, alone.indices)
    shifted, = run_method("coincide", {"features": x}, 0.2, params=base, seed=5)
    assert shifted.params["kmeans_seed"] == 1239 and shifted.seed == 5
    explicit, = run_method("coincide", {"features": x}, 0.2, params={**base, "seed": 1234}, seed=5)
    assert explicit.params["kmeans_seed"] == 1234
    np.testing.assert_array_equal(explicit.indices, out["selected_indices"])
    info = REGISTRY["coincide"]
    assert {q.name for q in info.params} >= {"n_clusters", "niter", "kmeans_seed", "knn_k", "temp", "sigma",
                                             "near_duplicate_cosine_cut", "num_layers", "hidden_size"}
    assert [r.name for r in info.roles] == ["features"]
    json.dumps(sels[0].info)  # the manifest can hold it


# ------------------------------------------------------------------------------------- reference re-creation


def test_reference_recreation_agrees_with_the_pack_and_with_strict_mode_on_duplicates(vectors_dir):
    ref = _reference()
    x, p, out = _pack(vectors_dir, PACKS[0])
    # the pack from its stored k-means (the reference's prune and transferability stages)
    got, times = ref.reference_coincide(x, n_clusters=40, fraction=0.2, temp=0.1, num_layers=4, hidden_size=16,
                                        assignment=out["cluster_assignment"], centroids=out["centroids"])
    np.testing.assert_array_equal(got, out["selected_indices"])
    assert set(times) == {"kmeans_s", "transferability_s", "prune_s", "total_s"}
    # exact duplicate rows and small clusters: mathematically tied greedy steps, decided by rounding noise
    x = _mixture(300, 12, 2, 8, seed=7)
    rng = np.random.default_rng(1)
    x[rng.choice(300, 20, replace=False)] = x[rng.choice(300, 20, replace=False)]
    prm = {"K": 24, "num_layers": 2, "hidden_size": 8}
    want, _ = ref.reference_coincide(x, n_clusters=24, fraction=0.2, temp=0.1, num_layers=2, hidden_size=8)
    strict, = run_method("coincide", {"features": x}, 0.2, params=prm, strict_official=True)
    assert strict.info["greedy_tie_steps"] > 0
    np.testing.assert_array_equal(strict.indices, want)
    default, = run_method("coincide", {"features": x}, 0.2, params=prm)
    assert default.count == strict.count
    # the default differs from strict only by swapping identical rows
    same = {tuple(r) for r in x[default.indices]} == {tuple(r) for r in x[strict.indices]}
    assert same


# ----------------------------------------------------------------------------------- fixes of official bugs


def _two_clusters():
    """Cluster 0 = the singleton row 0; cluster 1 = rows 1..10 around another point. Layout 1 x [2 | 2]."""
    rng = np.random.default_rng(0)
    raw = np.concatenate([np.array([[3.0, -3.0, 3.0, -3.0]]), np.array([[0.5, 0.4, 0.3, 0.6]]) +
                          0.3 * rng.normal(size=(10, 4))])
    x = _layout_rows(raw, 1, 2)
    assignment = np.array([0] + [1] * 10)
    centroids = np.stack([x[0], x[1:].mean(0) / np.linalg.norm(x[1:].mean(0))]).astype(np.float32)
    return x, assignment, centroids


def test_shortfall_fix_selects_exactly_the_budget_by_continuing_the_greedy_sequence():
    x, assignment, centroids = _two_clusters()
    st = coincide_stages(x, assignment=assignment, centroids=centroids, transferability=np.array([1.0, 1.0]),
                         temp=1.0, num_layers=1, hidden_size=2, strict_official=True)
    # cluster 1 has density < 1, cluster 0 (singleton) density 1: s = (1, 1/d1), p1 = 1/(1 + e^(1 - 1/d1)) in (.5, .625)
    assert 0.5 < st.initial_ratio[1] < 0.625
    budget = resolve_budget(4, 11)
    strict, = coincide_select(x, st, [budget], temp=1.0, strict_official=True)
    # official: cluster 1 asked round(4 p1) = 2, cluster 0 then asked 2 > its size 1 -> takes 1: total 3
    assert strict.info["budget_table"] == [[1, 10, 4, 2, 2], [0, 1, 2, 2, 1]]
    assert strict.count == 3 and strict.shortfall == 1
    fixed, = coincide_select(x, st, [budget], temp=1.0, strict_official=False)
    assert fixed.count == 4 and fixed.shortfall == 0 and fixed.info["official_shortfall"] == 1
    assert fixed.info["shortfall_fill_rounds"] == [[1, 1]]
    g = GreedyMMD(lambda: x[1:], st.kernels[1], float(st.cluster_density[1]), 1.0)
    greedy3 = (1 + np.array(g.extend(3))).tolist()
    assert fixed.indices.tolist() == greedy3 + [0]
    assert strict.indices.tolist() == greedy3[:2] + [0]


def test_empty_cluster_crashes_strict_and_is_skipped_by_default():
    rng = np.random.default_rng(2)
    x = _layout_rows(np.concatenate([rng.normal(1, 0.2, (6, 8)), rng.normal(-1, 0.2, (6, 8))]), 2, 2)
    assignment = np.array([0] * 6 + [2] * 6)  # cluster 1 has no member
    c0, c2 = x[:6].mean(0), x[6:].mean(0)
    centroids = np.stack([c0, -c0 - c2, c2]).astype(np.float32)
    with pytest.raises(SelectionError, match="empty"):
        coincide_stages(x, assignment=assignment, centroids=centroids, num_layers=2, hidden_size=2,
                        strict_official=True)
    st = coincide_stages(x, assignment=assignment, centroids=centroids, num_layers=2, hidden_size=2)
    assert st.sizes.tolist() == [6, 0, 6] and np.isnan(st.cluster_density[1]) and st.initial_ratio[1] == 0
    sel, = coincide_select(x, st, [resolve_budget(5, 12)])
    assert sel.count == 5 and sel.info["empty_clusters"] == [1]
    assert [row[0] for row in sel.info["budget_table"]] == sorted([0, 2], key=lambda c: -st.initial_ratio[c])
    # same as the official run on the relabelled assignment without the empty cluster
    st2 = coincide_stages(x, assignment=np.where(assignment == 2, 1, 0), centroids=centroids[[0, 2]],
                          transferability=st.transferability[[0, 2]], num_layers=2, hidden_size=2,
                          strict_official=True)
    ref, = coincide_select(x, st2, [resolve_budget(5, 12)], strict_official=True)
    np.testing.assert_array_equal(sel.indices, ref.indices)


def test_transferability_division_by_zero_raises_strict_and_is_zero_by_default():
    c = np.array([[1.0, 0.0, 0.6, 0.8], [0.0, 1.0, 0.6, 0.8]], dtype=np.float32)  # same text half: cos 1 > 0.9
    with pytest.raises(SelectionError, match="divides by zero"):
        cluster_transferability(c, num_layers=1, hidden_size=2, strict_official=True)
    t, _, _ = cluster_transferability(c, num_layers=1, hidden_size=2, strict_official=False)
    assert t.tolist() == [0.0, 0.0]
    c[1, 2:] = [0.8, 0.6]  # cos 0.96: still cut; vs [0, 1]: cos 0.8 kept
    c = np.concatenate([c, [[0.0, 0.0, 0.0, 1.0]]]).astype(np.float32)
    t, _, _ = cluster_transferability(c, num_layers=1, hidden_size=2, strict_official=False)
    np.testing.assert_allclose(t, [0.8, 0.6, (0.8 + 0.6) / 2], rtol=1e-6)


def test_softmax_overflow_raises_strict_and_uses_the_max_subtracted_softmax_by_default():
    with pytest.raises(SelectionError, match="overflows"):
        allocate_budget(np.array([100.0, 50.0]), np.array([10, 10]), 4, temp=0.1, strict_official=True)
    a = allocate_budget(np.array([100.0, 50.0]), np.array([10, 10]), 4, temp=0.1, strict_official=False)
    assert a.table(np.array([10, 10])).tolist() == [[0, 10, 4, 4, 4], [1, 10, 0, 0, 0]]


def test_two_member_cluster_tie_goes_to_the_lower_row_index_by_default():
    x, _, _ = _two_clusters()
    pair = x[[3, 5]]  # two members asked for one: both candidates have the same MMD up to rounding
    st = coincide_stages(pair, assignment=np.array([0, 0]), centroids=pair[:1] / np.linalg.norm(pair[:1]),
                         transferability=np.array([0.5]), num_layers=1, hidden_size=2)
    g = GreedyMMD(lambda: pair, st.kernels[0], float(st.cluster_density[0]), 1.0, ties="lowest")
    assert g.extend(1) == [0] and g.tie_steps == 1
    g = GreedyMMD(lambda: pair[::-1], st.kernels[0], float(st.cluster_density[0]), 1.0, ties="lowest")
    assert g.extend(1) == [0]


# ---------------------------------------------------------------------------------------------- bad input


def test_non_finite_rows_raise_a_selection_error_naming_them(vectors_dir):
    x, p, _ = _pack(vectors_dir, PACKS[0])
    x = x.copy()
    x[17, 3] = np.inf
    fn = REGISTRY["coincide"]  # the dispatcher (run_method, the CLI) excludes such rows before calling the method
    budgets = [resolve_budget(0.2, x.shape[0])]
    with pytest.raises(SelectionError, match=r"\[17\]"):
        fn.fn({"features": x}, None, budgets, seed=0, strict_official=False, **fn.resolve_params(_params(p)))


def test_layout_mismatch_is_a_clear_error_through_the_cli(vectors_dir, tmp_path, capsys):
    from vlselect.cli import main

    feats = vectors_dir / "coincide" / PACKS[0] / "inputs" / "features.npy"
    with pytest.raises(SystemExit) as exc:
        main(["select", "coincide", "--input", f"features={feats}", "--budget", "0.2", "--param", "K=40",
              "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "num_layers" in err and "hidden_size" in err and "128" in err


# ---------------------------------------------------------------------------------- out of core (issue 14)


def test_out_of_core_selection_equals_the_in_memory_one(tmp_path, monkeypatch):
    import vlselect.cluster as cl

    x = _mixture(9000, 14, 2, 32, seed=11).astype(np.float16)  # 9000 x 128; K=15 -> faiss subsamples 3840 rows
    np.save(tmp_path / "f.npy", x)
    mm = np.load(tmp_path / "f.npy", mmap_mode="r")
    monkeypatch.setattr(cl, "DEFAULT_CHUNK_ROWS", 4096)  # three assignment chunks
    common = dict(n_clusters=15, num_layers=2, hidden_size=32)
    a = coincide_stages(mm, out_of_core=False, **common)
    b = coincide_stages(mm, out_of_core=True, **common)
    for key in ("assignment", "centroids", "sizes", "transferability", "cluster_density", "initial_ratio"):
        np.testing.assert_array_equal(getattr(b, key), getattr(a, key), err_msg=key)
    budgets = [resolve_budget(f, 9000) for f in (0.05, 0.2)]
    sa = coincide_select(mm, a, budgets)
    sb = coincide_select(mm, b, budgets)
    for p, q in zip(sa, sb):
        np.testing.assert_array_equal(q.indices, p.indices)
        assert p.count == q.count == p.budget.count
    assert sb[0].info["kmeans_out_of_core"] and not sa[0].info["kmeans_out_of_core"]
    assert sb[0].info["kmeans_train_rows"] == 15 * 256


def test_strict_mode_states_the_memory_of_the_exact_path_before_kmeans(capfd):
    x = _mixture(600, 5, 2, 16, seed=3)
    run_method("coincide", {"features": x}, 0.2, strict_official=True,
               params={"K": 6, "num_layers": 2, "hidden_size": 16})
    err = capfd.readouterr().err
    assert "k-means of 600 x 64 rows into K=6 trains on 600 rows" in err and "official script needs" in err


def test_readme_world_k20_prints_no_faiss_warning_and_records_the_note(capfd):
    x = _mixture(400, 8, 2, 16, seed=5)
    sel, = run_method("coincide", {"features": x}, 0.25, params={"K": 20, "num_layers": 2, "hidden_size": 16})
    err = capfd.readouterr().err
    assert "please provide" not in err and "WARNING" not in err
    assert any("400 rows for 20 clusters" in note for note in sel.info["kmeans_notes"])


def _cli(argv):
    from vlselect.cli import main

    try:
        main(argv)
    except SystemExit as exc:
        return exc.code or 0
    return 0


def test_dry_run_prints_the_kmeans_estimate_and_does_no_work(vectors_dir, tmp_path, capsys, monkeypatch):
    import vlselect.cluster as cl

    monkeypatch.setattr(cl, "kmeans", lambda *a, **k: pytest.fail("--dry-run ran k-means"))
    feats = vectors_dir / "coincide" / PACKS[0] / "inputs" / "features.npy"  # 2000 x 128 float32
    code = _cli(["select", "coincide", "--input", f"features={feats}", "--param", "K=40", "--param", "num_layers=4",
                 "--param", "hidden_size=16", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    # by hand: 2000 <= 40 x 256 rows, so every row trains; 2 x 2000 x 128 x 40 FLOP per search, 50 + 1 searches
    assert f"{2 * 2000 * 128 * 40 * 51:.3g}" in out and "trains on 2,000 rows" in out
    assert "2,000 x 128 float32" in out
    assert not (tmp_path / "o").exists()


def test_repeated_budgets_fail_before_kmeans(vectors_dir, tmp_path, capsys, monkeypatch):
    import vlselect.cluster as cl

    monkeypatch.setattr(cl, "kmeans", lambda *a, **k: pytest.fail("k-means ran before the budget check"))
    feats = vectors_dir / "coincide" / PACKS[0] / "inputs" / "features.npy"
    code = _cli(["select", "coincide", "--input", f"features={feats}", "--budget", "0.2,400,0.2", "--param", "K=40",
                 "--param", "num_layers=4", "--param", "hidden_size=16", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "frac0.2, n400, frac0.2 repeat" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
