"""The shared k-means (vlselect.cluster.kmeans) against the official COINCIDE k-means outputs (specs/coincide.md §2)."""

from __future__ import annotations

import numpy as np
import pytest

from vlselect.cluster import kmeans
from vlselect.errors import SelectionError

PACKS = {"n2000_k40_frac020_temp010": 40, "n3000_k60_frac015_temp005": 60}


@pytest.mark.parametrize("pack,k", sorted(PACKS.items()))
def test_kmeans_reproduces_the_official_assignment_exactly_and_centroids_to_float32_rounding(vectors_dir, pack, k):
    d = vectors_dir / "coincide" / pack
    x = np.load(d / "inputs" / "features.npy")
    r = kmeans(x, k, niter=50, seed=1234, spherical=True)
    np.testing.assert_array_equal(r.assignment, np.load(d / "outputs" / "cluster_assignment.npy"))
    # Centroids to the float32 rounding of the BLAS faiss was built with: faiss-cpu 1.15 differs from the pack's
    # faiss by one ulp in 12% of the entries (assignments still identical).
    np.testing.assert_allclose(r.centroids, np.load(d / "outputs" / "centroids.npy"), rtol=0, atol=1e-7)
    np.testing.assert_allclose(r.score, np.load(d / "outputs" / "assigned_centroid_ip.npy"), rtol=0, atol=1e-6)
    assert r.assignment.dtype == np.int64 and r.centroids.dtype == np.float32 and r.score.dtype == np.float32
    assert r.sizes.sum() == x.shape[0] and r.n_empty == 0 and r.sizes.shape == (k,)
    assert 1 <= r.n_iter <= 50
    # spherical objective = sum of the inner products of the (un-subsampled) rows with their centroids
    assert r.objective == pytest.approx(float(r.score.astype(np.float64).sum()), rel=1e-4)
    np.testing.assert_allclose(np.linalg.norm(r.centroids, axis=1), 1.0, atol=1e-5)


def test_kmeans_from_float16_memmap_matches_float32(tmp_path, vectors_dir):
    x = np.load(vectors_dir / "coincide" / "n2000_k40_frac020_temp010" / "inputs" / "features.npy")[:600]
    np.save(tmp_path / "x.npy", x.astype(np.float16))
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    a = kmeans(mm, 8)
    b = kmeans(x.astype(np.float16).astype(np.float32), 8)
    np.testing.assert_array_equal(a.assignment, b.assignment)
    np.testing.assert_array_equal(a.centroids, b.centroids)


def test_euclidean_score_is_the_squared_distance_to_the_assigned_centroid():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (50, 4)), rng.normal(5, 0.1, (50, 4))]).astype(np.float32)
    r = kmeans(x, 2, spherical=False, seed=3)
    assert sorted(r.sizes.tolist()) == [50, 50]
    assert len(set(r.assignment[:50])) == 1 and len(set(r.assignment[50:])) == 1
    d2 = ((x - r.centroids[r.assignment]) ** 2).sum(1)
    np.testing.assert_allclose(r.score, d2, rtol=1e-4, atol=1e-5)


def test_kmeans_rejects_non_finite_rows_naming_the_row():
    x = np.ones((20, 4), dtype=np.float32)
    x[7, 2] = np.nan
    with pytest.raises(SelectionError, match="row 7"):
        kmeans(x, 2, name="feats.npy")


@pytest.mark.parametrize("k", [0, 21])
def test_kmeans_rejects_a_cluster_count_outside_1_to_n(k):
    with pytest.raises(SelectionError, match="n_clusters"):
        kmeans(np.zeros((20, 4), dtype=np.float32), k)


def test_kmeans_rejects_a_non_matrix():
    with pytest.raises(SelectionError, match="2-D"):
        kmeans(np.zeros(5, dtype=np.float32), 1)
