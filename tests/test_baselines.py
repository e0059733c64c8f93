"""Baseline methods on cases small enough to check by hand (specs/coincide.md §7, LESS)."""

from __future__ import annotations

import numpy as np
import pytest

from vlselect.errors import SelectionError
from vlselect.select import REGISTRY, resolve_budget, run_method
from vlselect.select.baselines import largest_remainder, prune_subset_order
from vlselect.select.d2pruning import forward_message_passing, reverse_message_passing
from vlselect.select.semdedup import max_earlier_similarity


def test_every_baseline_is_registered_with_roles_and_params():
    for name in ("random", "random_stratified", "length", "el2n", "perplexity", "semdedup", "d2pruning", "less"):
        assert name in REGISTRY
    assert [p.name for p in REGISTRY["d2pruning"].params][:2] == ["n_neighbors", "gamma"]
    assert REGISTRY["d2pruning"].resolve_params({})["gamma"] == 0.4
    assert {r.name for r in REGISTRY["less"].roles} == {"train", "val/*"}


# ------------------------------------------------------------------------------------------------- random


def test_random_is_a_seeded_permutation_prefix_and_budgets_nest():
    a, b = run_method("random", {}, "3,6", tasks=["t"] * 10, seed=7)
    perm = np.random.default_rng(7).permutation(10)
    assert a.indices.tolist() == perm[:3].tolist()
    assert b.indices.tolist() == perm[:6].tolist()
    # same seed → same subset; another seed → another one
    assert run_method("random", {}, 3, tasks=["t"] * 10, seed=7)[0].indices.tolist() == perm[:3].tolist()
    assert run_method("random", {}, 3, tasks=["t"] * 10, seed=8)[0].indices.tolist() != perm[:3].tolist()
    assert a.scores[perm[0]] == 1.0


def test_largest_remainder_by_hand():
    # 7 rows over sizes 5/3/2 (total 10): quotas 3.5, 2.1, 1.4 → floors 3, 2, 1 (=6), one left → remainder .5 (a)
    assert largest_remainder({"a": 5, "b": 3, "c": 2}, 7) == {"a": 4, "b": 2, "c": 1}
    # equal remainders: the larger task wins, then the name
    assert largest_remainder({"a": 1, "b": 1, "c": 2}, 2) == {"a": 1, "b": 0, "c": 1}
    assert sum(largest_remainder({"x": 333, "y": 333, "z": 334}, 100).values()) == 100


def test_random_stratified_meets_quotas_exactly():
    tasks = ["a"] * 5 + ["b"] * 3 + ["c"] * 2
    (sel,) = run_method("random_stratified", {}, 7, tasks=tasks, seed=3)
    got = [tasks[i] for i in sel.indices]
    assert sel.count == 7 and len(set(sel.indices.tolist())) == 7
    assert (got.count("a"), got.count("b"), got.count("c")) == (4, 2, 1)
    assert sel.info["quota"] == {"a": 4, "b": 2, "c": 1}
    # listed in permutation order: the first pick of every task is its best-ranked row
    perm = np.random.default_rng(3).permutation(10)
    rank = {int(r): i for i, r in enumerate(perm)}
    assert [rank[int(i)] for i in sel.indices] == sorted(rank[int(i)] for i in sel.indices)
    with pytest.raises(SelectionError, match="task labels"):
        run_method("random_stratified", {"features": np.zeros((10, 2))}, 7)


# ------------------------------------------------------------------------------------------ single scores


def test_length_longest_first_ties_by_index():
    (sel,) = run_method("length", {"lengths": np.array([5, 9, 1, 9, 3])}, 3)
    assert sel.indices.tolist() == [1, 3, 0]
    (sel,) = run_method("length", {"lengths": np.array([5, 9, 1, 9, 3])}, 2, params={"order": "shortest"})
    assert sel.indices.tolist() == [2, 4]


def test_prune_subset_rules_by_hand():
    s = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2])  # ascending order: 1, 5, 3, 0, 4, 2
    assert prune_subset_order(s, 2, "bottom").tolist() == [1, 5]
    assert prune_subset_order(s, 2, "top").tolist() == [2, 4]
    assert prune_subset_order(s, 2, "top", strict_official=True).tolist() == [4, 2]  # file order (ascending)
    assert prune_subset_order(s, 2, "middle").tolist() == [3, 0]  # window starts at 6 // 2 - 2 // 2 = 2
    assert prune_subset_order(s, 3, "middle").tolist() == [3, 0, 4]  # 6 // 2 - 3 // 2 = 2, not (6 - 3) // 2 = 1
    assert prune_subset_order(s, 2, "low").tolist() == [1, 5]


def test_el2n_and_perplexity():
    el2n = np.array([0.4, 0.2, 0.8, 0.6])
    assert run_method("el2n", {"el2n": el2n}, 2)[0].indices.tolist() == [1, 0]
    assert run_method("el2n", {"el2n": el2n}, 2, params={"prune_subset": "top"})[0].indices.tolist() == [2, 3]
    losses = np.array([2.0, 0.5, 1.0, 3.0])
    (sel,) = run_method("perplexity", {"losses": losses}, 2, params={"prune_subset": "high"})
    assert sel.indices.tolist() == [3, 0]
    np.testing.assert_allclose(sel.scores, np.exp(losses))
    (sel,) = run_method("perplexity", {"perplexity": np.exp(losses)}, 2, params={"prune_subset": "middle"})
    assert sel.indices.tolist() == [2, 0]
    with pytest.raises(SelectionError, match="prune_subset"):
        run_method("el2n", {"el2n": el2n}, 2, params={"prune_subset": "sideways"})


def test_el2n_strict_mode_turns_nan_into_zero_like_the_official_script():
    el2n = np.array([0.4, np.nan, 0.8, 0.6])
    with pytest.warns(RuntimeWarning, match="passed through"):
        (sel,) = run_method("el2n", {"el2n": el2n}, 2, strict_official=True)
    assert sel.indices.tolist() == [1, 0]  # NaN → 0 is the lowest
    with pytest.warns(RuntimeWarning, match="excluded"):
        (sel,) = run_method("el2n", {"el2n": el2n}, 2)
    assert sel.indices.tolist() == [0, 3]  # default: the NaN row is excluded, not ranked


# ---------------------------------------------------------------------------------------------- SemDeDup


def test_max_earlier_similarity_by_hand():
    x = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], dtype=np.float32)
    m = max_earlier_similarity(x, block_rows=2)
    assert np.isneginf(m[0])
    np.testing.assert_allclose(m[1:], [0.0, 1.0, 0.8], atol=1e-6)


def _two_blobs():
    # cluster A around e0 (4 rows, two exact duplicates), cluster B around e1 (4 rows)
    x = np.array(
        [[1, 0.0, 0], [1, 0.0, 0], [1, 0.3, 0], [1, 0, 0.3],
         [0, 1, 0.0], [0.2, 1, 0], [0, 1, 0.25], [0.1, 1, 0.1]], dtype=np.float32)
    return x


def test_semdedup_drops_the_duplicate_first_and_meets_the_budget():
    x = _two_blobs()
    (sel,) = run_method("semdedup", {"features": x}, 7, params={"n_clusters": 2})
    assert sel.count == 7
    assert 0 in sel.indices or 1 in sel.indices
    assert not (0 in sel.indices and 1 in sel.indices)  # exact duplicates: one of them goes
    assert sel.info["epsilon"] > 0


def test_semdedup_strict_uses_the_eps_list_and_truncates_by_cluster_order():
    x = _two_blobs()
    (sel,) = run_method("semdedup", {"features": x}, 5, params={"n_clusters": 2, "eps_list": "0.0001,0.5"},
                        strict_official=True)
    # eps 1e-4 drops only the duplicate (7 kept ≥ 5): the kept list, cluster by cluster, truncated to 5
    assert sel.info["epsilon"] == 0.0001
    assert sel.info["kept_per_eps"]["0.0001"] == 7
    assert sel.count == 5


def test_semdedup_rejects_more_clusters_than_rows():
    with pytest.raises(SelectionError, match="n_clusters"):
        run_method("semdedup", {"features": np.eye(4, dtype=np.float32)}, 2)


# --------------------------------------------------------------------------------------------- D2-Pruning


def test_forward_message_passing_by_hand():
    nbr = np.array([[1], [0], [1]])
    dist = np.array([[0.0], [np.log(2)], [np.log(4)]])
    s = np.array([1.0, 2.0, -5.0])
    g = forward_message_passing(s, nbr, dist, 1.0)
    # g0 = 1 + 1*2 ; g1 = 2 + 0.5*1 ; g2 = 1e-7 + 0.25*2
    np.testing.assert_allclose(g, [3.0, 2.5, 1e-7 + 0.5])


def test_reverse_message_passing_by_hand():
    # node 0 (g 10) knocks node 1 (g 9) down to 9 - 10*exp(0)=-1, so node 2 (g 5) goes before it
    g0 = np.array([10.0, 9.0, 5.0, 1.0])
    nbr = np.array([[1], [0], [3], [2]])
    dist = np.zeros((4, 1))
    order = reverse_message_passing(g0, nbr, dist, 3, gamma=0.4)
    assert order.tolist() == [0, 2, 1]


def test_d2pruning_runs_on_a_graph_and_budgets_are_prefixes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    s = rng.random(60)
    a, b = run_method("d2pruning", {"features": x, "scores": s}, "10,20")
    assert a.indices.tolist() == b.indices[:10].tolist()
    assert len(set(b.indices.tolist())) == 20
    assert a.scores.shape == (60,) and np.all(a.scores >= s)


# ---------------------------------------------------------------------------------------------------- LESS


def test_less_mean_per_subtask_max_over_subtasks_by_hand():
    train = np.array([[1, 0], [0, 1], [1, 1], [-1, 0]], dtype=np.float32)
    val_a = np.array([[2, 0], [0, 3]], dtype=np.float32)  # normalised mean = (0.5, 0.5)
    val_b1 = np.array([[0, 1]], dtype=np.float32)
    val_b2 = np.array([[-1, 0]], dtype=np.float32)
    (sel,) = run_method("less", {"train": train, "val/a": val_a, "val/b/x": val_b1, "val/b/y": val_b2}, 4)
    r2 = 1 / np.sqrt(2)
    # task a: (0.5, 0.5, 2*0.5*r2, -0.5); task b: max((0,1,r2,0), (-1,0,-r2,1)) = (0, 1, r2, 1)
    np.testing.assert_allclose(sel.scores, [0.5, 1.0, r2, 1.0], atol=1e-12)
    assert sel.indices.tolist() == [1, 3, 2, 0]
    (mean_sel,) = run_method("less", {"train": train, "val/a": val_a, "val/b/x": val_b1, "val/b/y": val_b2}, 4,
                             params={"aggregation": "mean"})
    np.testing.assert_allclose(mean_sel.scores, [0.25, 0.75, r2, 0.25], atol=1e-12)


def test_budget_helper_used_by_methods():
    assert resolve_budget("0.5", 4).count == 2


def test_d2pruning_strict_uses_the_official_ivfpq_graph():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    s = rng.random(300)
    (sel,) = run_method("d2pruning", {"features": x, "scores": s}, 30, strict_official=True,
                        params={"nlist": 4})
    assert sel.info["graph"] == "ivfpq" and sel.count == 30 and len(set(sel.indices.tolist())) == 30
    with pytest.raises(SelectionError, match="IVFPQ"):
        run_method("d2pruning", {"features": x[:50], "scores": s[:50]}, 5, strict_official=True)


def _d2_reference(g, nbr, dist, count, gamma):
    """The official iterative selection, restated plainly (list standby, argmax in list order, argsort[::-1])."""
    g = g.copy()
    order = np.argsort(g)[::-1]
    picked, standby, c = [], [], 0
    w = np.exp(-dist * gamma)
    while len(picked) < count:
        if standby and np.max(g[standby]) >= g[order[c]]:
            j = standby.pop(int(np.argmax(g[standby])))
        else:
            node = order[c]
            c += 1
            if g[node] < g[order[c]]:
                standby.append(node)
                continue
            j = node
        picked.append(j)
        g[nbr[j]] = g[nbr[j]] - g[j] * w[j]
    return picked


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_d2_strict_message_passing_matches_a_plain_restatement_of_the_official_loop(seed):
    rng = np.random.default_rng(seed)
    n = 400
    nbr = np.stack([rng.choice(n, 5, replace=False) for _ in range(n)])
    dist = rng.random((n, 5)).astype(np.float32) * 0.5
    aum = (rng.random(n) * 1.2 - 0.2).astype(np.float16)  # some negative margins, float16 as the AUM file
    g = forward_message_passing(aum, nbr, dist, 1.0, strict_official=True)
    want_g = np.sum(np.exp(-dist * 1.0) * np.maximum(aum[nbr], np.ones_like(nbr) * 1e-7), axis=-1) + np.maximum(
        aum, np.ones_like(aum) * 1e-7)
    np.testing.assert_array_equal(g, want_g)
    got = reverse_message_passing(g, nbr, dist, 150, 0.4, strict_official=True)
    assert got.tolist() == _d2_reference(g, nbr, dist, 150, 0.4)
