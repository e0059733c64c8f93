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
