"""Small, deterministic clustering tools in plain numpy: k-means++, silhouette, k selection, AMI.

Used by the server's taxonomy builder (clusters of item vectors within a category) and by the
tests and benchmarks that check the clusters against planted sub-interests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


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
        return int(self.centroids.shape[0])


def _sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """n×k squared Euclidean distances (clipped at 0 against rounding)."""
    d = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _kmeans_pp_init(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007)."""
    n = x.shape[0]
    centers = [x[int(rng.integers(n))]]
    closest = _sq_dists(x, centers[0][None, :])[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: repeat a point
            idx = int(rng.integers(n))
        else:
            idx = int(rng.choice(n, p=closest / total))
        centers.append(x[idx])
        closest = np.minimum(closest, _sq_dists(x, x[idx][None, :])[:, 0])
    return np.stack(centers)


def _lloyd(x: np.ndarray, centers: np.ndarray, max_iter: int) -> tuple[np.ndarray, np.ndarray, float]:
    labels = np.full(x.shape[0], -1, dtype=np.int64)
    for _ in range(max_iter):
        d = _sq_dists(x, centers)
        new = d.argmin(1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(centers.shape[0]):
            members = labels == j
            if members.any():
                centers[j] = x[members].mean(0)
    d = _sq_dists(x, centers)
    labels = d.argmin(1)
    return labels, centers, float(d[np.arange(x.shape[0]), labels].sum())


def _canonical(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop empty clusters and renumber by size (descending), ties by first member."""
    used = [j for j in np.unique(labels)]
    order = sorted(used, key=lambda j: (-int((labels == j).sum()), int(np.flatnonzero(labels == j)[0])))
    remap = np.empty(int(labels.max()) + 1, dtype=np.int64)
    for new, old in enumerate(order):
        remap[old] = new
    out = remap[labels]
    centroids = np.stack([x[out == j].mean(0) for j in range(len(order))])
    return out, centroids


def kmeans(x: np.ndarray, k: int, *, seed: int, n_init: int = 4, max_iter: int = 100) -> Clustering:
    """Best of `n_init` k-means++ / Lloyd runs (lowest inertia); deterministic given `seed`."""
    x = np.asarray(x, dtype=np.float64)
    labels, centroids, inertia = _kmeans(x, k, seed=seed, n_init=n_init, max_iter=max_iter)
    return Clustering(labels, centroids, inertia, silhouette(x, labels))


def _kmeans(x: np.ndarray, k: int, *, seed: int, n_init: int, max_iter: int) -> tuple[np.ndarray, np.ndarray, float]:
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans needs a non-empty n×d array, got shape {x.shape}.")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"kmeans: k={k} must be between 1 and the number of points ({x.shape[0]}).")
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray] | None = None
    for _ in range(n_init):
        labels, _, inertia = _lloyd(x, _kmeans_pp_init(x, k, rng), max_iter)
        if best is None or inertia < best[0] - 1e-12:
            best = (inertia, labels)
    assert best is not None
    labels, centroids = _canonical(x, best[1])
    return labels, centroids, best[0]


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient (Rousseeuw 1987), Euclidean; 0.0 when there is one cluster.

    Points alone in their cluster score 0, as in the usual definition.
    """
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    ks = np.unique(labels)
    if len(ks) < 2:
        return 0.0
    d = np.sqrt(_sq_dists(x, x))
    onehot = (labels[:, None] == ks[None, :]).astype(np.float64)
    sizes = onehot.sum(0)
    sums = d @ onehot  # n×k: distance of each point to all members of each cluster
    own = np.searchsorted(ks, labels)
    n = x.shape[0]
    own_size = sizes[own]
    a = np.where(own_size > 1, sums[np.arange(n), own] / np.maximum(own_size - 1, 1), 0.0)
    other = sums / sizes[None, :]
    other[np.arange(n), own] = np.inf
    b = other.min(1)
    s = np.where(own_size > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


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
    single_labels = np.zeros(n, dtype=np.int64)
    single = Clustering(single_labels, x.mean(0, keepdims=True), float(((x - x.mean(0)) ** 2).sum()), 0.0)
    best = single
    for k in range(2, min(k_max, n // max(min_size, 1)) + 1):
        labels, _, _ = _kmeans(x, k, seed=seed + k, n_init=n_init, max_iter=100)
        labels = _merge_small(x, labels, min_size)
        if len(np.unique(labels)) < 2:
            continue
        labels, centroids = _canonical(x, labels)
        score = silhouette(x, labels)
        if score > best.silhouette + 1e-12 and score >= min_silhouette:
            inertia = float(_sq_dists(x, centroids)[np.arange(n), labels].sum())
            best = Clustering(labels, centroids, inertia, score)
    return best


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information (nats) between two labelings of the same points."""
    _, ai = np.unique(np.asarray(a), return_inverse=True)
    _, bi = np.unique(np.asarray(b), return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1.0)
    n = table.sum()
    row, col = table.sum(1), table.sum(0)
    nz = table > 0
    return float((table[nz] / n * np.log(n * table[nz] / np.outer(row, col)[nz])).sum())


def expected_mutual_information(row: np.ndarray, col: np.ndarray) -> float:
    """E[MI] between random labelings with the given cluster sizes (hypergeometric model, Vinh et al. 2010)."""
    n = int(row.sum())
    lg = [math.lgamma(i + 1) for i in range(n + 1)]  # log factorials
    emi = 0.0
    for ai in row.astype(int):
        for bj in col.astype(int):
            for nij in range(max(1, ai + bj - n), min(ai, bj) + 1):
                term = nij / n * math.log(n * nij / (ai * bj))
                logp = (
                    lg[ai] + lg[bj] + lg[n - ai] + lg[n - bj]
                    - lg[n] - lg[nij] - lg[ai - nij] - lg[bj - nij] - lg[n - ai - bj + nij]
                )
                emi += term * math.exp(logp)
    return emi


def adjusted_mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """AMI = (MI − E[MI]) / (mean(H(a), H(b)) − E[MI]), arithmetic mean (scikit-learn's default).

    1 for identical partitions (up to renaming), about 0 for independent ones. When both
    labelings are a single cluster the partitions agree and the result is 1.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"AMI needs two 1-D labelings of equal length, got {a.shape} and {b.shape}.")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    row, col = np.bincount(ai).astype(float), np.bincount(bi).astype(float)
    if len(row) == len(col) == 1 or len(row) == len(col) == len(a):
        return 1.0
    mi = mutual_information(ai, bi)
    emi = expected_mutual_information(row, col)
    denom = 0.5 * (_entropy(row) + _entropy(col)) - emi
    if abs(denom) < 1e-15:
        return 0.0
    return float((mi - emi) / denom)
