"""k-means used by every method that clusters (COINCIDE, SemDeDup, D2-Pruning, composites): faiss, CPU or GPU.

One k-means for the whole package (DESIGN.md). It is exactly the official COINCIDE / SemDeDup clustering
(specs/coincide.md §2): ``faiss.Kmeans(d, K, niter=50, seed=1234, spherical=True)`` with every other field at the
faiss default, trained on C-contiguous float32 rows, then one ``search(x, 1)`` against the final centroids with an
inner-product index (spherical) or an L2 index (Euclidean). With faiss-cpu 1.15.1 this reproduces the stored
centroids and assignment of both public COINCIDE packs bit for bit (``tests/test_cluster.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vlselect.errors import SelectionError


@dataclass
class KMeansResult:
    """The outcome of :func:`kmeans`.

    Attributes
    ----------
    centroids : (K, d) float32; unit rows when spherical.
    assignment : (N,) int64 cluster id of each row (``nearest_cent.npy`` in the official code).
    score : (N,) float32 inner product with the assigned centroid (spherical; the official ``dist_to_cent.npy``,
        higher is closer) or squared L2 distance to it (Euclidean).
    spherical : whether the spherical variant ran.
    objective : the faiss training objective after the last iteration (spherical: sum of the inner products of
        the training rows with their centroids; Euclidean: sum of squared distances, i.e. the inertia); NaN when
        faiss reports none.
    n_iter : iterations faiss actually ran (faiss >= 1.9 stops once the objective stops changing).
    sizes : (K,) int64 number of rows assigned to each cluster by the final search (0 for an empty cluster).
    """

    centroids: np.ndarray
    assignment: np.ndarray
    score: np.ndarray
    spherical: bool
    objective: float = float("nan")
    n_iter: int = 0
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def n_empty(self) -> int:
        """How many clusters received no row in the final assignment."""
        return int(np.sum(self.sizes == 0))


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
    name: str = "features",
) -> KMeansResult:
    """Cluster the rows of ``x`` with faiss k-means, exactly as the official COINCIDE/SemDeDup scripts do.

    Parameters
    ----------
    x : (N, d) array (memmap welcome), converted to C-contiguous float32 (faiss's own requirement; the official
        ``train`` call casts the same way). Rows must be finite.
    n_clusters : K, between 1 and N.
    niter, seed : 50 and 1234, the official scripts' values.
    spherical : normalise centroids each iteration and assign by inner product (COINCIDE, SemDeDup);
        otherwise Euclidean.
    gpu : use a GPU if faiss has one (``None``: when available, as the official ``gpu=torch.cuda.is_available()``).
        GPU and CPU assignment arithmetic differ, so near-tie labels can differ between them (spec §2).
    verbose : faiss's own per-iteration log.
    max_points_per_centroid : faiss subsamples the training set to K * this (faiss default 256). Left at the
        faiss default unless given, as the official code leaves it.
    name : what ``x`` is, for error messages (a file name is best).

    Returns
    -------
    KMeansResult

    References
    ----------
    specs/coincide.md §2 (clustering), §10 (test vectors).

    Examples
    --------
    >>> r = kmeans(np.random.default_rng(0).normal(size=(200, 8)).astype("float32"), 4)
    >>> r.centroids.shape, r.assignment.shape
    ((4, 8), (200,))
    """
    import faiss

    if getattr(x, "ndim", None) != 2:
        raise SelectionError(f"k-means on {name}: needs a 2-D array (rows x features), got shape {np.shape(x)}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if not 1 <= n_clusters <= n:
        raise SelectionError(
            f"k-means on {name}: n_clusters={n_clusters} must be between 1 and the number of rows ({n}); "
            f"give a smaller n_clusters (K)"
        )
    if niter < 1:
        raise SelectionError(f"k-means on {name}: niter={niter} must be at least 1")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise SelectionError(
            f"k-means on {name}: {bad.size} row(s) hold NaN or inf (first: row {int(bad[0])}); "
            f"exclude or repair them before clustering"
        )
    use_gpu = bool(gpu) if gpu is not None else (hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0)
    kw = {}
    if max_points_per_centroid is not None:
        kw["max_points_per_centroid"] = int(max_points_per_centroid)
    km = faiss.Kmeans(
        d, int(n_clusters), niter=int(niter), seed=int(seed), spherical=spherical, verbose=verbose, gpu=use_gpu, **kw
    )
    km.train(x)
    centroids = np.ascontiguousarray(km.centroids, dtype=np.float32).reshape(int(n_clusters), d)
    index = faiss.IndexFlatIP(d) if spherical else faiss.IndexFlatL2(d)
    index.add(centroids)
    score, assign = index.search(x, 1)
    assignment = assign[:, 0].astype(np.int64)
    obj = np.asarray(getattr(km, "obj", []), dtype=np.float64).ravel()
    return KMeansResult(
        centroids=centroids,
        assignment=assignment,
        score=score[:, 0].astype(np.float32),
        spherical=spherical,
        objective=float(obj[-1]) if obj.size else float("nan"),
        n_iter=int(obj.size),
        sizes=np.bincount(assignment, minlength=int(n_clusters)).astype(np.int64),
    )
