"""Deterministic clustering for the interest taxonomy: k-means, silhouette, k selection, AMI.

Thin wrappers over scikit-learn (k-means++ / Lloyd, silhouette, AMI) plus Strata's own
steps: merging clusters below a minimum size and numbering clusters by size. Used by the
server's taxonomy builder and by the checks against planted sub-interests.

Results depend only on the data and the seed: scikit-learn's Lloyd iterations sum chunks
in whatever order its OpenMP threads finish, so the fits run on one thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from threadpoolctl import ThreadpoolController


@dataclass(frozen=True)
class Clustering:
    """A partition of n points into k clusters."""

    labels: np.ndarray
    """int64 cluster of each point, in [0, k); clusters are numbered by size (largest first)."""
    centroids: np.ndarray
    """k×d cluster means."""
    inertia: float
    """Sum of squared distances of the points to their centroids."""
    silhouette: float
    """Mean silhouette of the partition (0.0 for a single cluster)."""

    @property
    def k(self) -> int:
        """Number of clusters."""
        return int(self.centroids.shape[0])


@cache
def _threads() -> Any:
    """One controller for the process (finding the thread pools is slow; limiting them is fast)."""
    return ThreadpoolController()


def _sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """n×k squared Euclidean distances."""
    return np.asarray(((x[:, None, :] - c[None, :, :]) ** 2).sum(-1), dtype=np.float64)


def _canonical(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop empty clusters and renumber by size (descending), ties by first member; with the means."""
    used, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))  # by size, then by first member
    remap = np.empty(int(used.max()) + 1, dtype=np.int64)
    remap[used[order]] = np.arange(len(order))
    out = remap[labels]
    return out, np.stack([x[out == j].mean(0) for j in range(len(order))])


def _kmeans(x: np.ndarray, k: int, *, seed: int, n_init: int, max_iter: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Canonical labels, centroids and inertia of the best of `n_init` k-means++ / Lloyd runs."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans needs a non-empty n×d array, got shape {x.shape}.")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"kmeans: k={k} must be between 1 and the number of points ({x.shape[0]}).")
    state = int(np.random.SeedSequence(seed).generate_state(1)[0])  # any seed ≥ 0 (KMeans takes 32 bits)
    from sklearn.cluster import KMeans  # imported on use: sklearn brings pandas and pyarrow (~100 MiB)

    km = KMeans(k, init="k-means++", n_init=n_init, max_iter=max_iter, tol=0.0, algorithm="lloyd", random_state=state)
    with _threads().limit(limits=1):
        km.fit(x)
    labels, centroids = _canonical(x, np.asarray(km.labels_, dtype=np.int64))
    return labels, centroids, float(km.inertia_)


def kmeans(x: np.ndarray, k: int, *, seed: int, n_init: int = 4, max_iter: int = 100) -> Clustering:
    """Best of `n_init` k-means++ / Lloyd runs (lowest inertia); deterministic given `seed`."""
    x = np.asarray(x, dtype=np.float64)
    labels, centroids, inertia = _kmeans(x, k, seed=seed, n_init=n_init, max_iter=max_iter)
    return Clustering(labels, centroids, inertia, silhouette(x, labels))


def silhouette(x: ArrayLike, labels: ArrayLike) -> float:
    """Mean Euclidean silhouette (Rousseeuw 1987); points alone in their cluster score 0.

    0.0 when there is one cluster (or every point is its own cluster).
    """
    labels = np.asarray(labels)
    if not 2 <= len(np.unique(labels)) < len(labels):
        return 0.0
    with _threads().limit(limits=1):
        from sklearn.metrics import silhouette_score

        return float(silhouette_score(np.asarray(x, dtype=np.float64), labels, metric="euclidean"))


def _merge_small(x: np.ndarray, labels: np.ndarray, min_size: int) -> np.ndarray:
    """Reassign the members of clusters smaller than `min_size` to the nearest large cluster."""
    labels = labels.copy()
    while True:
        ks, counts = np.unique(labels, return_counts=True)
        small = ks[counts < min_size]
        if len(small) == 0 or len(small) == len(ks):
            return labels
        big = ks[counts >= min_size]
        centers = np.stack([x[labels == j].mean(0) for j in big])
        moving = np.isin(labels, small)
        labels[moving] = big[_sq_dists(x[moving], centers).argmin(1)]


def choose_k(
    x: np.ndarray,
    *,
    k_max: int,
    min_size: int,
    seed: int,
    min_silhouette: float = 0.05,
    n_init: int = 4,
) -> Clustering:
    """Cluster `x` with the number of clusters chosen by the data.

    For k = 2..k_max (capped so every cluster could hold `min_size` points) run k-means,
    merge clusters smaller than `min_size` into their nearest neighbour, and score the
    partition by its mean silhouette. The best-scoring partition wins if its silhouette is
    at least `min_silhouette`; otherwise the points form a single cluster.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    mean = x.mean(0, keepdims=True)
    best = Clustering(np.zeros(n, dtype=np.int64), mean, float(((x - mean) ** 2).sum()), 0.0)
    for k in range(2, min(k_max, n // max(min_size, 1)) + 1):
        labels, _, _ = _kmeans(x, k, seed=seed + k, n_init=n_init, max_iter=100)
        labels = _merge_small(x, labels, min_size)
        if len(np.unique(labels)) < 2:
            continue
        labels, centroids = _canonical(x, labels)
        score = silhouette(x, labels)
        if score > best.silhouette + 1e-12 and score >= min_silhouette:
            inertia = float(((x - centroids[labels]) ** 2).sum())
            best = Clustering(labels, centroids, inertia, score)
    return best


def adjusted_mutual_information(a: ArrayLike, b: ArrayLike) -> float:
    """AMI with the arithmetic-mean normaliser (Vinh et al. 2010; scikit-learn's default).

    1 for identical partitions (up to renaming), about 0 for independent ones. When both
    labelings are a single cluster (or both all singletons) they agree and the result is 1.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"AMI needs two 1-D labelings of equal length, got {a.shape} and {b.shape}.")
    ai = np.unique(a, return_inverse=True)[1].reshape(-1)
    bi = np.unique(b, return_inverse=True)[1].reshape(-1)
    ka, kb = int(ai.max(initial=-1)) + 1, int(bi.max(initial=-1)) + 1
    if ka == kb == len(a):  # scikit-learn returns ≈0 (0/eps) for two all-singleton labelings
        return 1.0
    from sklearn.metrics import adjusted_mutual_info_score

    return float(adjusted_mutual_info_score(ai, bi, average_method="arithmetic"))
