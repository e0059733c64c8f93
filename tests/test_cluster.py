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


# ------------------------------------------------------------------------------------- out of core (issue 14)


def _blobs_memmap(tmp_path, n, d, k, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    x = (centers[rng.integers(0, k, n)] + 0.8 * rng.normal(size=(n, d))).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    return np.load(tmp_path / "x.npy", mmap_mode="r")


@pytest.mark.parametrize("n,k,mppc", [(10_000, 12, 64), (8_199, 40, None)])
def test_out_of_core_kmeans_equals_the_in_memory_faiss_run(tmp_path, n, k, mppc):
    # (10000, 12, 64): faiss subsamples 768 of 10,000 rows; (8199, 40, None): no subsample (40 x 256 > 8199) and
    # a 7-row tail after two 4096-row chunks. Both stream the assignment in several chunks. The inner products
    # agree to float32 rounding only: faiss's own search rounds differently with the way it groups rows (and with
    # its thread count), so a chunk of rows is not bit-identical to the same rows inside one big search.
    mm = _blobs_memmap(tmp_path, n, 48, 9)
    a = kmeans(mm, k, max_points_per_centroid=mppc, out_of_core=False)
    b = kmeans(mm, k, max_points_per_centroid=mppc, out_of_core=True, chunk_rows=4096)
    assert not a.out_of_core and b.out_of_core
    assert a.train_rows == b.train_rows == min(n, k * (mppc or 256))
    np.testing.assert_array_equal(b.centroids, a.centroids)
    np.testing.assert_array_equal(b.assignment, a.assignment)
    np.testing.assert_allclose(b.score, a.score, rtol=1e-6, atol=1e-6)
    assert b.n_iter == a.n_iter and b.objective == pytest.approx(a.objective, rel=1e-6)


def test_out_of_core_training_rows_are_faiss_own_subsample(tmp_path):
    from vlselect.cluster import faiss_training_rows

    rows = faiss_training_rows(5000, 4, 1234, 100)
    assert rows.shape == (400,) and np.unique(rows).size == 400 and rows.max() < 5000
    assert faiss_training_rows(400, 4, 1234, 100) is None  # n <= K x 100: faiss trains on every row
    # a different seed picks different rows (the seed is faiss's k-means seed, as in faiss itself)
    assert not np.array_equal(rows, faiss_training_rows(5000, 4, 1235, 100))


def test_out_of_core_names_a_non_finite_row_found_while_streaming(tmp_path):
    x = np.ones((9000, 8), dtype=np.float16)
    x[:, 0] = np.arange(9000) % 7
    x[8500, 3] = np.inf
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    with pytest.raises(SelectionError, match=r"\[8500\]"):
        kmeans(mm, 3, out_of_core=True, max_points_per_centroid=10, name="feats.npy")


def test_a_training_sample_larger_than_free_memory_is_refused_before_training(tmp_path, monkeypatch):
    import vlselect.cluster as cl

    mm = _blobs_memmap(tmp_path, 2000, 16, 3)
    monkeypatch.setattr(cl, "available_memory_bytes", lambda: 1000)
    with pytest.raises(SelectionError, match=r"1,024 rows x 16, float16\) needs 0.3 MiB of RAM, only 0.0 MiB.*max_points_per_centroid"):
        kmeans(mm, 4, out_of_core=True)


def test_few_training_rows_note_replaces_faiss_stderr_warning(capfd):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    r = kmeans(x, 20)
    err = capfd.readouterr().err
    assert "please provide" not in err
    assert len(r.notes) == 1 and "400 rows for 20 clusters" in r.notes[0] and "780" in r.notes[0]
    assert kmeans(x, 5).notes == []  # 400 >= 5 x 39


def test_kmeans_cost_of_the_published_coincide_setting():
    from vlselect.cluster import kmeans_cost

    c = kmeans_cost(665_298, 20_480, 10_000)
    # worked by hand: 665,298 <= 10,000 x 256, so faiss trains on every row; 2 n d K per search, 50 + 1 searches
    assert c["train_rows"] == 665_298 and not c["subsampled"]
    assert c["flops"] == 2 * 665_298 * 20_480 * 10_000 * 51
    assert 1.3e16 < c["flops_train"] < 1.45e16
    assert c["disk_bytes"] == 665_298 * 20_480 * 2  # 27.3 GB, the official .npy
    assert c["ram_in_memory_bytes"] >= 665_298 * 20_480 * 4  # 54.5 GB float32 copy
    # out of core: the training rows at float16 (half the float32 copy) plus one 4096-row chunk
    assert c["ram_out_of_core_bytes"] < 0.55 * c["ram_in_memory_bytes"]
    assert "GPU job" in c["gpu_hint"]
    small = kmeans_cost(200_000, 20_480, 200, max_points_per_centroid=128)
    assert small["subsampled"] and small["train_rows"] == 25_600
    assert small["ram_out_of_core_bytes"] < 3 * 2**30 and "GPU job" not in small["gpu_hint"]
