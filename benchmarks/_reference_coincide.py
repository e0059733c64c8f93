"""A faithful in-process re-creation of the official COINCIDE selection stages, for speed comparisons.

Written from specs/coincide.md (§2-§4, §9), which describes G-JWLee/COINCIDE_code@629f776
(``compute_centroids.py``, ``cluster_transferability.py``, ``cluster_wise_prune.py``) with the CPU changes of Q5.
It does what the official code does, the slow way the official code does it:

* k-means: ``faiss.Kmeans(d, K, niter, seed, spherical=True)``, then a search against the centroid index;
* transferability: row-normalised text halves, a dense K x K float32 cosine matrix, a full ``argsort`` for the
  (unused) kNN side output, the 0.9 mask, float32 row sums / counts;
* prune: one float64 torch kernel matrix per cluster (norm expansion), all kept in a list; a ``np.where`` scan of
  the whole assignment per cluster; and the greedy MMD that, at every step, gathers ``K[:, S']`` (n x (n-t) x
  (t+1)) and ``K[S', S']`` ((n-t) x (t+1)^2) for every candidate and takes their means.

It is not part of the package; ``benchmarks/select_speed.py`` imports :func:`reference_coincide` to time the
official approach, and ``tests/test_coincide.py`` checks that it agrees with :func:`vlselect.select.coincide`.
Each stage's wall time is returned so the benchmark can report them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def _official_kmeans(x: np.ndarray, k: int, niter: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    data = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(data.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False, gpu=False)
    km.train(data)
    _, nearest = km.index.search(data, 1)
    return np.asarray(km.centroids, dtype=np.float32), nearest[:, 0].astype(np.int64)


def _official_transferability(centroids: np.ndarray, num_layers: int, hidden_size: int, knn_k: int = 4):
    c = centroids.reshape(-1, num_layers, 2 * hidden_size)[:, :, hidden_size:].reshape(-1, num_layers * hidden_size)
    c = np.array(c, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", c, c))
    norms[norms == 0.0] = 1.0
    c /= norms[:, None]
    sim = c @ c.T
    knn = np.argsort(sim, axis=-1)[:, ::-1][:, : knn_k + 1]
    _ = sim[np.arange(len(sim))[:, None], knn]
    cut = sim > 0.9
    sim[cut] = 0
    return sim.sum(axis=-1) / (~cut).sum(axis=-1)


def _kernel(x, sigma: float):
    import torch

    sq = x.pow(2).sum(1)
    dist = sq.view(-1, 1) + sq.view(1, -1) - 2.0 * torch.mm(x, x.t())
    return torch.exp(-dist / (2 * sigma**2))


def _official_greedy(kmat, m: int) -> np.ndarray:
    import torch

    n = len(kmat)
    everything = np.arange(n)
    chosen = np.array([], dtype=int)
    kxx = kmat.mean()
    for _ in range(m):
        cand = np.setdiff1d(everything, chosen)
        trial = np.concatenate([np.tile(chosen, (len(cand), 1)), cand[:, None]], axis=1)
        cand_t = torch.from_numpy(cand)
        trial_t = torch.from_numpy(trial)
        kxy = kmat[:, trial_t].mean(dim=(0, 2))
        kyy = kmat[trial_t[:, :, None], trial_t[:, None, :]].mean(dim=(1, 2))
        mmd = kxx + kyy - 2 * kxy
        chosen = np.append(chosen, cand_t[torch.argmin(mmd)].numpy())
    return chosen


def _official_prune(features: np.ndarray, nearest: np.ndarray, transfer: np.ndarray, fraction: float, temp: float,
                    sigma: float) -> np.ndarray:
    import torch

    clusters = np.unique(nearest)
    target = int(fraction * len(features))
    remaining = target
    kernels = []
    density = np.zeros(len(clusters), dtype="float64")
    for c in clusters:
        members = np.where(nearest == c)[0]
        x = torch.from_numpy(np.asarray(features[members])).to(torch.float64)
        kmat = _kernel(x, sigma)
        density[c] = kmat.mean().item()
        kernels.append(kmat)
    score = (1 / density) * transfer
    ratio = np.exp(score / temp) / np.sum(np.exp(score / temp))
    order = np.argsort(ratio)[::-1]
    ratio = ratio[order]
    score = score[order]
    picked = []
    for q, c in enumerate(order):
        members = np.where(nearest == c)[0]
        m = round(remaining * ratio[q])
        if m > len(members):
            chosen = members
        else:
            chosen = members[_official_greedy(kernels[c], m)]
        picked.append(chosen)
        remaining -= len(chosen)
        ratio[q + 1 :] = np.exp(score[q + 1 :] / temp) / np.sum(np.exp(score[q + 1 :] / temp))
    return np.concatenate(picked)


def reference_coincide(
    features: np.ndarray,
    *,
    n_clusters: int,
    fraction: float,
    niter: int = 50,
    seed: int = 1234,
    temp: float = 0.1,
    sigma: float = 1.0,
    num_layers: int = 5,
    hidden_size: int = 2048,
    assignment: np.ndarray | None = None,
    centroids: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The official selection (k-means → transferability → prune) the official way.

    Returns the selected row indices (int64, official order) and ``{"kmeans_s", "transferability_s",
    "prune_s", "total_s"}`` wall times. Pass ``assignment`` and ``centroids`` to skip k-means.
    """
    t0 = time.perf_counter()
    if assignment is None:
        centroids, assignment = _official_kmeans(features, n_clusters, niter, seed)
    t1 = time.perf_counter()
    transfer = _official_transferability(centroids, num_layers, hidden_size)
    t2 = time.perf_counter()
    selected = _official_prune(features, assignment, transfer, fraction, temp, sigma)
    t3 = time.perf_counter()
    times = {"kmeans_s": t1 - t0, "transferability_s": t2 - t1, "prune_s": t3 - t2, "total_s": t3 - t0}
    return np.asarray(selected, dtype=np.int64), times
