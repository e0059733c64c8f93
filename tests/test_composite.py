"""coincide_icons: COINCIDE's per-cluster counts, filled in each cluster by ICONS's priority."""

from __future__ import annotations

import numpy as np
import pytest

from vlselect.select import run_method
from vlselect.select.coincide import coincide_stages

LAYOUT = {"num_layers": 2, "hidden_size": 4}


def _inputs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 16)) * 3
    feats = centres[rng.integers(0, 4, n)] + rng.normal(size=(n, 16))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True) * np.sqrt(2 * LAYOUT["num_layers"])
    train = rng.normal(size=(n, 8))
    val = {"val/a": rng.normal(size=(5, 8)), "val/b": rng.normal(size=(5, 8))}
    return {"features": feats.astype(np.float32), "train": train, **val}


def test_one_cluster_is_exactly_icons():
    arrays = _inputs()
    [comp] = run_method("coincide_icons", arrays, 0.2, params={"K": 1, **LAYOUT})
    [ic] = run_method("icons", {k: v for k, v in arrays.items() if k != "features"}, 0.2)
    assert comp.indices.tolist() == ic.indices.tolist()


@pytest.mark.parametrize("budget", [0.1, 0.25])
def test_cluster_counts_are_coincides_and_each_cluster_takes_its_best_icons_rows(budget):
    arrays = _inputs()
    params = {"K": 6, **LAYOUT}
    [comp] = run_method("coincide_icons", arrays, budget, params=params)
    [coin] = run_method("coincide", {"features": arrays["features"]}, budget, params=params)
    st = coincide_stages(arrays["features"], n_clusters=6, kmeans_seed=1234, **LAYOUT)
    a = st.assignment
    assert comp.count == coin.count == int(budget * 120)
    assert np.bincount(a[comp.indices], minlength=6).tolist() == np.bincount(a[coin.indices], minlength=6).tolist()
    key = comp.scores
    for c in range(6):
        members = np.flatnonzero(a == c)
        taken = np.intersect1d(comp.indices, members)
        left = np.setdiff1d(members, taken)
        if taken.size and left.size:
            assert key[taken].min() >= key[left].max()  # nothing better left behind in the cluster
    # priority order overall
    assert np.all(np.diff(key[comp.indices]) <= 0)
    # it is not simply ICONS's global top-k (the clusters constrain it)
    [ic] = run_method("icons", {k: v for k, v in arrays.items() if k != "features"}, budget)
    assert set(comp.indices.tolist()) != set(ic.indices.tolist())


def test_needs_validation_inputs():
    from vlselect.errors import SelectionError

    arrays = _inputs()
    with pytest.raises(SelectionError, match="val/"):
        run_method("coincide_icons", {"features": arrays["features"], "train": arrays["train"]}, 0.2,
                   params={"K": 2, **LAYOUT})


@pytest.mark.parametrize("budget", [0.1, 0.25])
def test_icons_coincide_picks_among_icons_candidates_as_coincide_would(budget):
    """Candidates are ICONS's top 2 x budget rows (by its priority key); among them the picks are exactly COINCIDE
    run on the candidates alone, with K scaled to the candidates' share of the pool."""
    arrays = _inputs()
    n, count = 120, int(budget * 120)
    [comp] = run_method("icons_coincide", arrays, budget, params={"K": 12, **LAYOUT})
    m = 2 * count
    assert comp.count == count and len(set(comp.indices.tolist())) == count and comp.info["candidates"] == m
    key = comp.scores
    order = np.lexsort((np.arange(n), -key))
    cand = order[:m]
    assert set(comp.indices.tolist()) <= set(cand.tolist())
    k = max(1, round(12 * m / n))
    [coin] = run_method("coincide", {"features": arrays["features"][cand]}, count,
                        params={"K": k, **LAYOUT})
    assert comp.indices.tolist() == cand[coin.indices].tolist()
    # factor 1 is ICONS's top of the same key
    [one] = run_method("icons_coincide", arrays, budget, params={"K": 12, "candidate_factor": 1.0, **LAYOUT})
    [ic] = run_method("icons", {k2: v for k2, v in arrays.items() if k2 != "features"}, budget)
    assert sorted(one.indices.tolist()) == sorted(ic.indices.tolist())


# ------------------------------------------------------------------------------------------ less_coincide


@pytest.mark.parametrize("budget", [0.1, 0.25])
def test_less_coincide_picks_among_less_top_rows_as_coincide_would(budget):
    """Candidates are the 2 x budget rows with the highest cosine to a target's mean validation gradient (worked
    here with NumPy, max over the two targets); among them the picks are exactly COINCIDE run on the candidates
    alone, with K scaled to the candidates' share of the pool."""
    arrays = _inputs()
    n, count = 120, int(budget * 120)
    [comp] = run_method("less_coincide", arrays, budget, params={"K": 12, **LAYOUT})
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    cos = np.stack([unit(arrays["train"]) @ unit(arrays[t]).mean(axis=0) for t in ("val/a", "val/b")]).max(axis=0)
    cand = np.sort(np.argsort(-cos, kind="stable")[: 2 * count])
    assert comp.count == count and len(set(comp.indices.tolist())) == count
    assert comp.info["candidates"] == 2 * count and comp.info["targets"] == ["a", "b"]
    assert set(comp.indices.tolist()) <= set(cand.tolist())
    k = max(1, round(12 * 2 * count / n))
    assert comp.info["n_clusters_used"] == k
    [coin] = run_method("coincide", {"features": arrays["features"][cand]}, count, params={"K": k, **LAYOUT})
    assert comp.indices.tolist() == cand[coin.indices].tolist()


def test_less_coincide_ends_are_less_and_coincide():
    """candidate_factor 1 keeps LESS's top rows; a factor that hands COINCIDE the whole pool is COINCIDE."""
    arrays = _inputs()
    grads = {k: v for k, v in arrays.items() if k != "features"}
    [one] = run_method("less_coincide", arrays, 0.2, params={"K": 12, "candidate_factor": 1.0, **LAYOUT})
    [less] = run_method("less", grads, 0.2)
    assert sorted(one.indices.tolist()) == sorted(less.indices.tolist())
    [whole] = run_method("less_coincide", arrays, 0.2, params={"K": 12, "candidate_factor": 5.0, **LAYOUT})
    [coin] = run_method("coincide", {"features": arrays["features"]}, 0.2, params={"K": 12, **LAYOUT})
    assert whole.indices.tolist() == coin.indices.tolist()


def test_less_coincide_refuses_what_it_cannot_use():
    from vlselect.errors import SelectionError

    arrays = _inputs()
    with pytest.raises(SelectionError, match="val/"):
        run_method("less_coincide", {"features": arrays["features"], "train": arrays["train"]}, 0.2,
                   params={"K": 2, **LAYOUT})
    with pytest.raises(SelectionError, match="features"):
        run_method("less_coincide", {k: v for k, v in arrays.items() if k != "features"}, 0.2)
    with pytest.raises(SelectionError, match="candidate_factor"):
        run_method("less_coincide", arrays, 0.2, params={"candidate_factor": 0.5, **LAYOUT})
    with pytest.raises(SelectionError, match="own method"):
        run_method("less_coincide", arrays, 0.2, params=LAYOUT, strict_official=True)


# ------------------------------------------------------------------------------------------ less_tive


def test_balanced_merge_takes_turns_by_hand():
    from vlselect.select.composite import balanced_merge

    a = np.array([9, 8, 7, 1, 0, 0], dtype=float)  # ranking 0, 1, 2, 3, 4, 5
    b = np.array([9, 0, 1, 8, 7, 2], dtype=float)  # ranking 0, 3, 4, 5, 2, 1
    # a: 0; b: 0 is taken -> 3; a: 1; b: 4; a: 2; b: 5
    assert balanced_merge({"b": b, "a": a}, 5).tolist() == [0, 3, 1, 4, 2]
    assert balanced_merge({"a": a, "b": b}, 6).tolist() == [0, 3, 1, 4, 2, 5]
    b[5] = np.nan  # a NaN score is never a pick of that target; the other target still reaches the row
    assert balanced_merge({"a": a, "b": b}, 6).tolist() == [0, 3, 1, 4, 2, 2 + 3]
    assert balanced_merge({"a": a[:2], "b": b[:2]}, 5).tolist() == [0, 1]  # fewer rows than asked: all of them


def _two_task_pool():
    """Rows 0-3 task A, rows 4-7 task B. LESS gradients: A's rows point at target x exactly (cosine 1), B's close
    to target y (cosine 0.958). Instance gradients of A: [1,0], [1,0], [0,1], [0.6,0.8] -> mean cosines with the
    task's rows (itself included) 0.65, 0.65, 0.45, 0.75; of B: [1,0], [0.8,0.6], [0,1], [1,0] -> 0.7, 0.8, 0.4, 0.7."""
    train = np.array([[1, 0]] * 4 + [[0.3, 1]] * 4, dtype=np.float32)
    inst = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8], [1, 0], [0.8, 0.6], [0, 1], [1, 0]], dtype=np.float32)
    arrays = {"train": train, "instance": inst, "val/x": np.array([[2.0, 0.0]]), "val/y": np.array([[0.0, 3.0]])}
    return arrays, np.array(["A"] * 4 + ["B"] * 4)


def test_less_tive_mix_and_draws_by_hand():
    arrays, tasks = _two_task_pool()
    # balanced: x's best two rows are A's, y's best two are B's -> 2 + 2
    [bal] = run_method("less_tive", arrays, 4, tasks=tasks, params={"q": 1e6})
    assert bal.info["task_counts"] == {"A": 2, "B": 2} and bal.info["targets"] == ["x", "y"]
    # max (LESS's top-k): A's cosine 1 beats B's 0.958 for all four places
    [mx] = run_method("less_tive", arrays, 4, tasks=tasks, params={"q": 1e6, "merge": "max"})
    assert mx.info["task_counts"] == {"A": 4, "B": 0} and sorted(mx.indices.tolist()) == [0, 1, 2, 3]
    np.testing.assert_allclose(bal.scores[:4], [0.65, 0.65, 0.45, 0.75], atol=1e-6)
    # q = 1e6: only the best row of a task keeps a weight; the rest follow by instance value, ties by row index
    assert bal.indices[:2].tolist() == [3, 0]
    np.testing.assert_allclose(bal.scores[4:], [0.7, 0.8, 0.4, 0.7], atol=1e-6)
    assert bal.indices[2:].tolist() == [5, 4]  # 4 and 7 tie at 0.7: the lower row index


def test_less_tive_with_the_default_q_draws_inside_the_mix_reproducibly():
    rng = np.random.default_rng(0)
    n = 300
    tasks = np.array(["a", "b", "c"])[rng.integers(0, 3, n)]
    arrays = {"train": rng.normal(size=(n, 8)), "val/p": rng.normal(size=(3, 8)), "val/q": rng.normal(size=(3, 8))}
    sels = run_method("less_tive", arrays, [0.1, 0.3], tasks=tasks, seed=4)
    again = run_method("less_tive", arrays, [0.1, 0.3], tasks=tasks, seed=4)
    other = run_method("less_tive", arrays, [0.1, 0.3], tasks=tasks, seed=5)
    [less] = run_method("less", arrays, 0.3)
    for sel, same, diff in zip(sels, again, other):
        idx = sel.indices
        assert np.unique(idx).size == idx.size == sel.budget.count
        assert idx.tolist() == same.indices.tolist() and idx.tolist() != diff.indices.tolist()
        assert {t: int((tasks[idx] == t).sum()) for t in "abc"} == {t: sel.info["task_counts"][t] for t in "abc"}
        assert sel.info["task_counts"] == diff.info["task_counts"]  # the mix does not depend on the seed
    # the max merge keeps LESS's own per-task counts (LESS, a separate method, as the independent source)
    [mx] = run_method("less_tive", arrays, 0.3, tasks=tasks, params={"merge": "max"})
    assert mx.info["task_counts"] == {t: int((tasks[less.indices] == t).sum()) for t in "abc"}


def test_less_tive_refuses_what_it_cannot_use():
    from vlselect.errors import SelectionError

    arrays, tasks = _two_task_pool()
    with pytest.raises(SelectionError, match="task labels"):
        run_method("less_tive", arrays, 4)
    with pytest.raises(SelectionError, match="val/"):
        run_method("less_tive", {"train": arrays["train"]}, 4, tasks=tasks)
    with pytest.raises(SelectionError, match="no official code"):
        run_method("less_tive", arrays, 4, tasks=tasks, strict_official=True)


# ------------------------------------------------------------------------------------------ less_support


def _support_pool():
    """Tasks A A A C C B B C, C the support task (3 of 8 rows). Gradients against the one target x = [1, 0]:
    cosines 1, 0.707, 0, 0, -0.707, 0.949, -1, -1. LESS alone, top 5: rows 0, 5, 1, then 2 and 3 (tied at 0, the
    lower index first): one support row, by a tie."""
    train = np.array([[1, 0], [1, 1], [0, 1], [0, 1], [-1, 1], [3, 1], [-1, 0], [-1, 0]], dtype=np.float64)
    return {"train": train, "val/x": np.array([[2.0, 0.0]])}, np.array(list("AAACCBBC"))


def test_less_support_by_hand():
    arrays, tasks = _support_pool()
    [less] = run_method("less", arrays, 5)
    assert less.indices.tolist() == [0, 5, 1, 2, 3]
    # share 3/8: round(5 x 0.375 = 1.875) = 2 support rows drawn, LESS's top 3 of the other rows (0, 5, 1)
    five, seven = run_method("less_support", arrays, [5, 7], tasks=tasks, params={"support": "C"}, seed=3)
    assert five.indices[:3].tolist() == [0, 5, 1] and five.info["support_rows"] == 2
    assert set(five.indices[3:].tolist()) < {3, 4, 7} and len(set(five.indices[3:].tolist())) == 2
    # 7 x 0.375 = 2.625 -> 3: every support row; the other four by LESS (row 2 before 6 and the rest)
    assert seven.indices[:4].tolist() == [0, 5, 1, 2] and sorted(seven.indices[4:].tolist()) == [3, 4, 7]
    # the smaller budget's draw is the start of the larger one's
    assert seven.indices[4:6].tolist() == five.indices[3:].tolist()
    # support_share = 0: LESS over the non-support rows only; 1: every support row, then LESS fills the budget
    [none] = run_method("less_support", arrays, 5, tasks=tasks, params={"support": "C", "support_share": 0.0})
    assert none.indices.tolist() == [0, 5, 1, 2, 6]
    [all_] = run_method("less_support", arrays, 5, tasks=tasks, params={"support": "C", "support_share": 1.0})
    assert all_.indices[:2].tolist() == [0, 5] and sorted(all_.indices[2:].tolist()) == [3, 4, 7]
    np.testing.assert_allclose(five.scores, [1, 2 ** -0.5, 0, 0, -(2 ** -0.5), 3 / 10 ** 0.5, -1, -1], atol=1e-12)


def test_less_support_draws_every_support_row_alike():
    """Over 600 seeds each of the three support rows is drawn in 2 of 3 runs (binomial sd about 11 runs)."""
    arrays, tasks = _support_pool()
    counts = {3: 0, 4: 0, 7: 0}
    for seed in range(600):
        [sel] = run_method("less_support", arrays, 5, tasks=tasks, params={"support": "C"}, seed=seed)
        for r in sel.indices[3:].tolist():
            counts[r] += 1
    assert all(abs(c - 400) < 50 for c in counts.values()), counts


def test_less_support_refuses_what_it_cannot_use():
    from vlselect.errors import SelectionError

    arrays, tasks = _support_pool()
    with pytest.raises(SelectionError, match="task labels"):
        run_method("less_support", arrays, 4, params={"support": "C"})
    with pytest.raises(SelectionError, match=r"support=TASK.*A, B, C"):
        run_method("less_support", arrays, 4, tasks=tasks)
    with pytest.raises(SelectionError, match="caption not in the pool"):
        run_method("less_support", arrays, 4, tasks=tasks, params={"support": "caption"})
    with pytest.raises(SelectionError, match="val/"):
        run_method("less_support", {"train": arrays["train"]}, 4, tasks=tasks, params={"support": "C"})
    with pytest.raises(SelectionError, match="support_share"):
        run_method("less_support", arrays, 4, tasks=tasks, params={"support": "C", "support_share": 1.5})
    with pytest.raises(SelectionError, match="no official code"):
        run_method("less_support", arrays, 4, tasks=tasks, params={"support": "C"}, strict_official=True)


# ------------------------------------------------------------------------------------------ less_tive_support


def _support_pool_with_instances():
    """``_support_pool`` (tasks A A A C C B B C, C the support task) with instance gradients: A's rows 0, 1, 2
    [1,0], [0,1], [0.6,0.8] -> mean cosines with the task's rows 0.533, 0.6, 0.8; B's rows 5, 6 [1,0], [0,1] ->
    0.5 each (a tie); C's rows all [1,0]."""
    arrays, tasks = _support_pool()
    inst = np.array([[1, 0], [0, 1], [0.6, 0.8], [1, 0], [1, 0], [1, 0], [0, 1], [1, 0]], dtype=np.float64)
    return {**arrays, "instance": inst}, tasks


def test_less_tive_support_by_hand():
    arrays, tasks = _support_pool_with_instances()
    p = {"support": "C", "q": 1e6}
    # 5 x 3/8 = 1.875 -> 2 support rows; the target's top 3 of the other rows are 0, 5, 1 -> A 2, B 1. q = 1e6: A's
    # draw is its best instance value (row 2), then row 1 (0.6 > 0.533): not LESS's row 0. B's two rows tie.
    five, seven = run_method("less_tive_support", arrays, [5, 7], tasks=tasks, params=p, seed=3)
    assert five.info["task_counts"] == {"A": 2, "C": 0, "B": 1} and five.info["support_rows"] == 2
    assert five.indices[:2].tolist() == [2, 1] and five.indices[2] in (5, 6)
    assert len(set(five.indices[3:].tolist())) == 2 and set(five.indices[3:].tolist()) < {3, 4, 7}
    # the support draw is less_support's (same seed, same share)
    [ls] = run_method("less_support", {k: v for k, v in arrays.items() if k != "instance"}, 5, tasks=tasks,
                      params={"support": "C"}, seed=3)
    assert five.indices[3:].tolist() == ls.indices[3:].tolist()
    # 7 x 3/8 = 2.625 -> 3: every support row; the top 4 others 0, 5, 1, 2 -> all of A (2, 1, 0) and one of B
    assert seven.info["task_counts"] == {"A": 3, "C": 0, "B": 1}
    assert seven.indices[:3].tolist() == [2, 1, 0] and sorted(seven.indices[4:].tolist()) == [3, 4, 7]
    # share 0: the five non-support rows; share 1: every support row, then the top 2 others (0, 5) -> A 1, B 1,
    # and A's one row is its draw (row 2), not LESS's row 0
    [none] = run_method("less_tive_support", arrays, 5, tasks=tasks, params={**p, "support_share": 0.0})
    assert sorted(none.indices.tolist()) == [0, 1, 2, 5, 6] and none.info["support_rows"] == 0
    [all_] = run_method("less_tive_support", arrays, 5, tasks=tasks, params={**p, "support_share": 1.0})
    assert all_.indices[0] == 2 and all_.indices[1] in (5, 6) and sorted(all_.indices[2:].tolist()) == [3, 4, 7]
    # B's tie is a fair coin: over 400 seeds each of its rows about half the time (binomial sd 10)
    fives = sum(int(run_method("less_tive_support", arrays, 5, tasks=tasks, params=p, seed=s)[0].indices[2] == 5)
                for s in range(400))
    assert abs(fives - 200) < 45, fives


def test_less_tive_support_mix_is_less_over_the_other_tasks():
    """The task mix of the non-support rows is LESS's own top-k (one target, so the balanced merge is LESS's
    ranking) run as a separate method on the non-support rows alone."""
    rng = np.random.default_rng(1)
    n = 400
    tasks = np.array(["a", "b", "c", "s"])[rng.integers(0, 4, n)]
    arrays = {"train": rng.normal(size=(n, 8)), "val/p": rng.normal(size=(3, 8))}
    other = np.flatnonzero(tasks != "s")
    share = (tasks == "s").mean()
    sels = run_method("less_tive_support", arrays, [0.05, 0.2], tasks=tasks, params={"support": "s"}, seed=2)
    for sel in sels:
        idx = sel.indices
        k_s = int(np.floor(share * sel.count + 0.5))
        assert np.unique(idx).size == idx.size == sel.count and int((tasks[idx] == "s").sum()) == k_s
        [less] = run_method("less", {"train": arrays["train"][other], "val/p": arrays["val/p"]}, sel.count - k_s)
        want = {t: int((tasks[other[less.indices]] == t).sum()) for t in "abc"}
        assert {t: int((tasks[idx] == t).sum()) for t in "abc"} == want
        assert {t: sel.info["task_counts"][t] for t in "abc"} == want and sel.info["task_counts"]["s"] == 0
    # merge=max with two targets: the mix is LESS's top-k of the other rows by the best target
    arrays["val/q"] = rng.normal(size=(3, 8))
    [mx] = run_method("less_tive_support", arrays, 0.2, tasks=tasks, params={"support": "s", "merge": "max"})
    k_s = int(np.floor(share * mx.count + 0.5))
    [less] = run_method("less", {"train": arrays["train"][other], "val/p": arrays["val/p"], "val/q": arrays["val/q"]},
                        mx.count - k_s)
    assert {t: mx.info["task_counts"][t] for t in "abc"} == {t: int((tasks[other[less.indices]] == t).sum())
                                                              for t in "abc"}


def test_less_tive_support_refuses_what_it_cannot_use():
    from vlselect.errors import SelectionError

    arrays, tasks = _support_pool_with_instances()
    with pytest.raises(SelectionError, match="task labels"):
        run_method("less_tive_support", arrays, 4, params={"support": "C"})
    with pytest.raises(SelectionError, match=r"less_tive_support needs the pool's support tasks.*A, B, C"):
        run_method("less_tive_support", arrays, 4, tasks=tasks)
    with pytest.raises(SelectionError, match="caption not in the pool"):
        run_method("less_tive_support", arrays, 4, tasks=tasks, params={"support": "caption"})
    with pytest.raises(SelectionError, match="val/"):
        run_method("less_tive_support", {"train": arrays["train"]}, 4, tasks=tasks, params={"support": "C"})
    with pytest.raises(SelectionError, match="no official code"):
        run_method("less_tive_support", arrays, 4, tasks=tasks, params={"support": "C"}, strict_official=True)
