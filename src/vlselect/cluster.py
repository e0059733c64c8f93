"""k-means used by every method that clusters (COINCIDE, SemDeDup, D2-Pruning, composites): faiss, CPU or GPU.

One k-means for the whole package (DESIGN.md). It is exactly the official COINCIDE / SemDeDup clustering
(specs/coincide.md §2): ``faiss.Kmeans(d, K, niter=50, seed=1234, spherical=True)`` with every other field at the
faiss default, trained on C-contiguous float32 rows, then one ``search(x, 1)`` against the final centroids with an
inner-product index (spherical) or an L2 index (Euclidean). With faiss-cpu 1.15.1 this reproduces the stored
centroids and assignment of both public COINCIDE packs bit for bit (``tests/test_cluster.py``).

Out of core (issue 14). A matrix whose float32 copy would not fit comfortably in RAM (a 665K x 20,480 float16
memmap is 27 GB on disk, 54.5 GB as float32) is clustered without that copy, with the same result:

* the training rows are the ones faiss itself would use: ``faiss.rand_perm(N, seed)``'s first
  ``K * max_points_per_centroid`` rows when N is larger, else all rows (faiss's own subsampling rule);
* they are gathered from the memmap and kept in their stored width: float16 rows go to faiss as fp16 codes
  (``Clustering.train_encoded`` with a ``QT_fp16`` scalar-quantizer codec, decoded exactly to float32 in blocks of
  4096 rows), so the training sample costs 2 bytes per value, not 4;
* the final assignment streams the rows in chunks of a multiple of 4096 rows (faiss's own query block), so each
  chunk runs the same BLAS calls as one search over everything.

The in-memory and the out-of-core paths give bit-identical centroids and assignments (``tests/test_cluster.py``).
:func:`kmeans_cost` estimates FLOPs, RAM and disk before any work (``vlselect select coincide --dry-run``).
"""

from __future__ import annotations

import math
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
    train_rows : how many rows faiss trained on (N, or ``K * max_points_per_centroid`` when it subsampled).
    out_of_core : whether the streaming path ran (see the module docstring).
    notes : plain-language remarks worth keeping in a manifest (e.g. fewer than 39 training rows per cluster).
    """

    centroids: np.ndarray
    assignment: np.ndarray
    score: np.ndarray
    spherical: bool
    objective: float = float("nan")
    n_iter: int = 0
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    train_rows: int = 0
    out_of_core: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def n_empty(self) -> int:
        """How many clusters received no row in the final assignment."""
        return int(np.sum(self.sizes == 0))



#: faiss's default ``max_points_per_centroid``: above ``K * 256`` rows it trains on a random subsample.
FAISS_MAX_POINTS_PER_CENTROID = 256
#: faiss's ``min_points_per_centroid``: below ``K * 39`` training rows it prints a warning to stderr (and changes
#: nothing else). vlselect silences that print and records the same remark in :attr:`KMeansResult.notes`.
FAISS_MIN_POINTS_PER_CENTROID = 39
#: faiss's query block (``distance_compute_blas_query_bs``): the out-of-core path streams rows in multiples of it,
#: so every chunk makes the same BLAS calls as one in-memory search.
FAISS_QUERY_BLOCK = 4096
#: ``out_of_core=None`` streams when the float32 copy of the input would exceed this many bytes (and the input is
#: not already a float32 array in RAM).
IN_MEMORY_LIMIT_BYTES = 1 << 30
#: Rows per chunk of the out-of-core assignment pass (a multiple of :data:`FAISS_QUERY_BLOCK`).
DEFAULT_CHUNK_ROWS = FAISS_QUERY_BLOCK


def _gib(b: float) -> str:
    return f"{b / 2**30:.1f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


def kmeans_cost(
    n: int,
    d: int,
    k: int,
    *,
    niter: int = 50,
    max_points_per_centroid: int | None = None,
    dtype_bytes: int = 2,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> dict:
    """What k-means of ``n`` rows x ``d`` columns into ``k`` clusters costs, before running it.

    Plain numbers, for planning (``vlselect select coincide --dry-run``, ``vlselect plan``). The FLOP count is
    the assignment GEMMs (``2 * rows * d * k`` per search), which dominate; faiss's early stop can make the
    actual count smaller, never larger.

    Parameters
    ----------
    n, d, k : rows, columns, clusters (COINCIDE LLaVA-665K: 665,298, 20,480, 10,000).
    niter : k-means iterations (official 50).
    max_points_per_centroid : faiss trains on ``min(n, k * this)`` rows (default 256, faiss's and the official).
    dtype_bytes : bytes per stored value (2 for the float16 feature stores, 4 for float32).
    chunk_rows : rows per chunk of the streamed assignment.

    Returns
    -------
    dict with
      ``train_rows`` (rows faiss trains on), ``subsampled`` (bool),
      ``flops_train`` (``2 * train_rows * d * k * niter``), ``flops_assign`` (``2 * n * d * k``), ``flops``
      (their sum),
      ``disk_bytes`` (the input on disk, ``n * d * dtype_bytes``),
      ``ram_in_memory_bytes`` (the in-memory path: a float32 copy of every row, plus faiss's own copy of the
      subsample when it subsamples),
      ``ram_out_of_core_bytes`` (the streaming path: the training rows at ``dtype_bytes``, one decode block,
      one assignment chunk, the centroids),
      ``ram_exact_official_bytes`` (the official script: ``np.load`` of the whole float16 matrix plus faiss's
      float32 copy), and ``gpu_hint`` (a sentence: whether this is a CPU or a GPU job).

    Examples
    --------
    >>> c = kmeans_cost(665_298, 20_480, 10_000)
    >>> f"{c['flops']:.2g}", c["train_rows"]
    ('1.4e+16', 665298)
    """
    n, d, k, niter = int(n), int(d), int(k), int(niter)
    mppc = int(max_points_per_centroid or FAISS_MAX_POINTS_PER_CENTROID)
    train_rows = min(n, k * mppc)
    subsampled = n > k * mppc
    flops_train = 2.0 * train_rows * d * k * niter
    flops_assign = 2.0 * n * d * k
    f32 = 4
    centroid_bytes = k * d * f32
    ram_in = n * d * f32 + (train_rows * d * f32 if subsampled else 0) + centroid_bytes
    decode = min(train_rows, FAISS_QUERY_BLOCK) * d * f32 if dtype_bytes != f32 else 0
    ram_ooc = train_rows * d * dtype_bytes + decode + min(n, chunk_rows) * d * (f32 + dtype_bytes) + centroid_bytes
    ram_official = n * d * 2 + n * d * f32 + (train_rows * d * f32 if subsampled else 0) + centroid_bytes
    flops = flops_train + flops_assign
    # ~50 GFLOP/s sustained single-precision on a few CPU cores, ~50 TFLOP/s on a current data-centre GPU
    cpu_h, gpu_min = flops / 50e9 / 3600, flops / 50e12 / 60
    hint = (f"{flops:.2g} FLOP: about {cpu_h:.3g} h on a few CPU cores at 50 GFLOP/s, "
            f"{gpu_min:.3g} min on one GPU at 50 TFLOP/s")
    if cpu_h > 2:
        hint += "; a GPU job (faiss-gpu runs the same code path)"
    return {
        "n": n, "d": d, "k": k, "niter": niter, "max_points_per_centroid": mppc, "dtype_bytes": int(dtype_bytes),
        "train_rows": train_rows, "subsampled": subsampled,
        "flops_train": flops_train, "flops_assign": flops_assign, "flops": flops,
        "disk_bytes": n * d * int(dtype_bytes),
        "ram_in_memory_bytes": ram_in, "ram_out_of_core_bytes": ram_ooc, "ram_exact_official_bytes": ram_official,
        "gpu_hint": hint,
    }


def available_memory_bytes() -> int:
    """Memory the system can give this process now (``psutil.virtual_memory().available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def _release_rows(x: np.ndarray, a: int = 0, b: int | None = None) -> None:
    """Drop a memmap's pages of rows ``[a, b)`` from this process's resident set (they stay in the page cache)."""
    if isinstance(x, np.memmap):
        from vlselect.select.icons import _release

        _release(x, a, int(x.shape[0]) if b is None else b)


def faiss_training_rows(n: int, k: int, seed: int, max_points_per_centroid: int | None = None) -> np.ndarray | None:
    """The rows faiss's k-means trains on, in faiss's order; None when it uses all ``n`` rows in order.

    faiss subsamples when ``n > k * max_points_per_centroid``: the first ``k * max_points_per_centroid`` entries of
    ``rand_perm(n, seed)`` (``Clustering.cpp``, ``subsample_training_set``). Calling faiss's own ``rand_perm``
    keeps this exact across faiss versions that keep that rule.
    """
    import faiss

    mppc = int(max_points_per_centroid or FAISS_MAX_POINTS_PER_CENTROID)
    if n <= k * mppc:
        return None
    perm = np.empty(n, dtype=np.int32)
    faiss.rand_perm(faiss.swig_ptr(perm), n, int(seed))
    return perm[: k * mppc].astype(np.int64)


def _check_block(block: np.ndarray, start: int, name: str) -> None:
    finite = np.isfinite(block).all(axis=1)
    if not finite.all():
        bad = start + np.flatnonzero(~finite)
        raise SelectionError(
            f"k-means on {name}: row(s) {bad[:10].tolist()} hold NaN or inf (first: row {int(bad[0])}); "
            f"exclude or repair them before clustering"
        )


def _gather_rows(x: np.ndarray, rows: np.ndarray, dtype: np.dtype, name: str, block: int = 64) -> np.ndarray:
    """``x[rows]`` as ``dtype`` (row order kept), read in ascending row order block by block from a memmap.

    The memmap's pages are dropped after every small block: scattered rows pull the kernel's read-ahead into
    the resident set with them."""
    out = np.empty((rows.size, x.shape[1]), dtype=dtype)
    order = np.argsort(rows, kind="stable")
    srt = rows[order]
    for s in range(0, srt.size, block):
        idx = srt[s : s + block]
        part = np.asarray(x[idx])
        finite = np.isfinite(part).all(axis=1)
        if not finite.all():
            _check_block(np.asarray(x[[int(idx[np.flatnonzero(~finite)[0]])]]), int(idx[np.flatnonzero(~finite)[0]]), name)
        out[order[s : s + block]] = part
        _release_rows(x, int(idx[0]), min(int(x.shape[0]), int(idx[-1]) + 257))
    return out


def _check_memory(need: int, what: str, fix: str, name: str) -> None:
    avail = available_memory_bytes()
    if need > avail:
        raise SelectionError(f"k-means on {name}: {what} needs {_gib(need)} of RAM, only {_gib(avail)} is "
                             f"available; {fix}")


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
    out_of_core: bool | None = None,
    chunk_rows: int | None = None,
) -> KMeansResult:
    """Cluster the rows of ``x`` with faiss k-means, exactly as the official COINCIDE/SemDeDup scripts do.

    Parameters
    ----------
    x : (N, d) array (memmap welcome). Rows must be finite. In memory it is converted to C-contiguous float32
        (faiss's own requirement; the official ``train`` call casts the same way); out of core it never is.
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
    out_of_core : stream from ``x`` instead of copying it whole to float32 (module docstring); ``None`` decides
        by size (:data:`IN_MEMORY_LIMIT_BYTES`). Both paths give the same result.
    chunk_rows : rows per chunk of the streamed assignment (default :data:`DEFAULT_CHUNK_ROWS`; rounded up to a
        multiple of 4096, faiss's query block, so that chunking never changes a result).

    Returns
    -------
    KMeansResult

    Raises
    ------
    SelectionError
        Bad shape or K, non-finite rows, or a training sample larger than the memory available now (the message
        gives the size and how to shrink it).

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
    n, d = (int(s) for s in x.shape)
    if not 1 <= n_clusters <= n:
        raise SelectionError(
            f"k-means on {name}: n_clusters={n_clusters} must be between 1 and the number of rows ({n}); "
            f"give a smaller n_clusters (K)"
        )
    if niter < 1:
        raise SelectionError(f"k-means on {name}: niter={niter} must be at least 1")
    k = int(n_clusters)
    mppc = int(max_points_per_centroid or FAISS_MAX_POINTS_PER_CENTROID)
    if mppc < 1:
        raise SelectionError(f"k-means on {name}: max_points_per_centroid={mppc} must be at least 1")
    train_rows = min(n, k * mppc)
    notes: list[str] = []
    if train_rows < k * FAISS_MIN_POINTS_PER_CENTROID:
        notes.append(
            f"k-means trained on {train_rows} rows for {k} clusters, fewer than faiss's recommended "
            f"{FAISS_MIN_POINTS_PER_CENTROID} per cluster ({k * FAISS_MIN_POINTS_PER_CENTROID}); faiss's own stderr "
            f"warning was silenced (the result is unchanged). Fewer clusters give steadier ones"
        )
    in_ram_f32 = type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous
    if out_of_core is None:
        out_of_core = not in_ram_f32 and n * d * 4 > IN_MEMORY_LIMIT_BYTES
    use_gpu = bool(gpu) if gpu is not None else (hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0)
    # min_points_per_centroid only gates faiss's stderr warning; the remark goes to ``notes`` instead
    cp_fields = dict(niter=int(niter), seed=int(seed), spherical=spherical, verbose=verbose,
                     max_points_per_centroid=mppc, min_points_per_centroid=1)
    if not out_of_core:
        cost = kmeans_cost(n, d, k, niter=niter, max_points_per_centroid=mppc, dtype_bytes=x.dtype.itemsize)
        if not in_ram_f32:
            _check_memory(cost["ram_in_memory_bytes"], f"the in-memory k-means of {n:,} x {d:,} rows (float32)",
                          "let it run out of core (out_of_core=True) or pass a smaller max_points_per_centroid", name)
        xf = np.ascontiguousarray(x, dtype=np.float32)
        _check_block(xf, 0, name)
        km = faiss.Kmeans(d, k, gpu=use_gpu, **cp_fields)
        km.train(xf)
        centroids = np.ascontiguousarray(km.centroids, dtype=np.float32).reshape(k, d)
        index = faiss.IndexFlatIP(d) if spherical else faiss.IndexFlatL2(d)
        index.add(centroids)
        score, assign = index.search(xf, 1)
        assignment = assign[:, 0].astype(np.int64)
        score = score[:, 0].astype(np.float32)
        obj = np.asarray(getattr(km, "obj", []), dtype=np.float64).ravel()
    else:
        centroids, obj = _train_out_of_core(x, k, cp_fields, use_gpu, name)
        assignment, score = _assign_out_of_core(x, centroids, spherical, use_gpu, chunk_rows or DEFAULT_CHUNK_ROWS,
                                                name)
    return KMeansResult(
        centroids=centroids,
        assignment=assignment,
        score=score,
        spherical=spherical,
        objective=float(obj[-1]) if obj.size else float("nan"),
        n_iter=int(obj.size),
        sizes=np.bincount(assignment, minlength=k).astype(np.int64),
        train_rows=train_rows,
        out_of_core=bool(out_of_core),
        notes=notes,
    )


def _flat_index(d: int, spherical: bool, gpu: bool):
    import faiss

    index = faiss.IndexFlatIP(d) if spherical else faiss.IndexFlatL2(d)
    if gpu:  # pragma: no cover - no GPU in the test environment
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def _train_out_of_core(x: np.ndarray, k: int, cp_fields: dict, gpu: bool, name: str) -> tuple[np.ndarray, np.ndarray]:
    """faiss training on exactly the rows faiss would pick, gathered from ``x`` at its stored width."""
    import faiss

    n, d = (int(s) for s in x.shape)
    rows = faiss_training_rows(n, k, cp_fields["seed"], cp_fields["max_points_per_centroid"])
    m = n if rows is None else rows.size
    fp16 = x.dtype == np.float16
    need = m * d * (2 if fp16 else 4) + (FAISS_QUERY_BLOCK * d * 4 if fp16 else 0)
    _check_memory(need, f"the k-means training sample ({m:,} rows x {d:,}, "
                        f"{'float16' if fp16 else 'float32'})",
                  "pass a smaller max_points_per_centroid (faiss trains on K x that many rows) or fewer clusters", name)
    if rows is None:
        rows = np.arange(n, dtype=np.int64)
    sample = _gather_rows(x, rows, np.dtype(np.float16 if fp16 else np.float32), name)
    cp = faiss.ClusteringParameters()
    for key, value in cp_fields.items():
        setattr(cp, key, value)
    cp.decode_block_size = FAISS_QUERY_BLOCK  # a multiple of faiss's query block: same searches as in memory
    clus = faiss.Clustering(d, k, cp)
    index = _flat_index(d, cp_fields["spherical"], gpu)
    if fp16:
        codec = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16)
        clus.train_encoded(sample.view(np.uint8), codec, index)
    else:
        clus.train(sample, index)
    del sample
    centroids = np.ascontiguousarray(faiss.vector_float_to_array(clus.centroids), dtype=np.float32).reshape(k, d)
    stats = clus.iteration_stats
    obj = np.asarray([stats.at(i).obj for i in range(stats.size())], dtype=np.float64)
    return centroids, obj


def _assign_out_of_core(
    x: np.ndarray, centroids: np.ndarray, spherical: bool, gpu: bool, chunk_rows: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row, streamed in chunks aligned to faiss's query blocks."""
    n, d = (int(s) for s in x.shape)
    index = _flat_index(d, spherical, gpu)
    index.add(centroids)
    step = max(1, int(chunk_rows))
    if step < n:
        step = int(math.ceil(step / FAISS_QUERY_BLOCK)) * FAISS_QUERY_BLOCK
    bounds = list(range(0, n, step)) + [n]
    # faiss searches fewer than 20 rows without BLAS: keep a short tail with the chunk before it
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 20:
        bounds.pop(-2)
    assignment = np.empty(n, dtype=np.int64)
    score = np.empty(n, dtype=np.float32)
    for a, b in zip(bounds[:-1], bounds[1:]):
        block = np.ascontiguousarray(x[a:b], dtype=np.float32)
        _check_block(block, a, name)
        dist, lab = index.search(block, 1)
        assignment[a:b] = lab[:, 0]
        score[a:b] = dist[:, 0]
        del block
        _release_rows(x, a, b)
    return assignment, score
