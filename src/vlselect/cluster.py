"""k-means used by every method that clusters (COINCIDE, SemDeDup, D2-Pruning, composites): faiss, CPU or GPU.

One k-means for the whole package (DESIGN.md). ``faiss.Kmeans(d, k, niter=50, seed=1234, spherical=True)`` with
default fields on float32 input reproduces the official COINCIDE centroids bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlselect.errors import SelectionError


@dataclass
class KMeansResult:
    """Centroids (K x d float32), the assignment of each row (int64), and the similarity (spherical: inner
    product) or squared distance (Euclidean) of each row to its centroid (float32)."""

    centroids: np.ndarray
    assignment: np.ndarray
    score: np.ndarray
    spherical: bool


def kmeans(
    x: np.ndarray,
    n_clusters: int,
    *,
    niter: int = 50,
    seed: int = 1234,
    spherical: bool = True,
    gpu: bool | None = None,
    verbose: bool = False,
    max_points_per_centroid: int | None = None,
) -> KMeansResult:
    """Cluster the rows of ``x`` with faiss k-means.

    Parameters
    ----------
    x : (N, d) array, converted to C-contiguous float32 (faiss's own requirement).
    n_clusters : K. Must be <= N.
    niter, seed : faiss defaults as used by COINCIDE (50, 1234).
    spherical : normalise centroids each iteration and assign by inner product (COINCIDE, SemDeDup);
        otherwise Euclidean.
    gpu : use a GPU if faiss has one (``None``: when available).
    max_points_per_centroid : faiss subsamples the training set to K * this (default 256, as in faiss). Left at
        the faiss default unless given, since the official code leaves it too.

    Returns
    -------
    KMeansResult
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise SelectionError(f"k-means needs a 2-D array, got shape {x.shape}")
    n, d = x.shape
    if not 1 <= n_clusters <= n:
        raise SelectionError(f"n_clusters={n_clusters} must be between 1 and the number of rows ({n})")
    use_gpu = bool(gpu) if gpu is not None else (hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0)
    kw = {}
    if max_points_per_centroid is not None:
        kw["max_points_per_centroid"] = max_points_per_centroid
    km = faiss.Kmeans(d, n_clusters, niter=niter, seed=seed, spherical=spherical, verbose=verbose, gpu=use_gpu, **kw)
    km.train(x)
    centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    if spherical:
        index = faiss.IndexFlatIP(d)
    else:
        index = faiss.IndexFlatL2(d)
    index.add(centroids)
    score, assign = index.search(x, 1)
    return KMeansResult(centroids, assign[:, 0].astype(np.int64), score[:, 0].astype(np.float32), spherical)
