"""Non-learned baselines on the same split: item popularity (ranking) and biases (rating)."""

from __future__ import annotations

import numpy as np

from .data.split import UserRatings
from .metrics import MetricSums, popularity_sums, rating_sums


def popularity(users: list[UserRatings], n_items: int, threshold: float) -> MetricSums:
    """Rank items by how many users have them as train positives."""
    return popularity_sums(users, users, n_items, threshold)


def bias_only(
    users: list[UserRatings],
    n_items: int,
    *,
    damping: float = 5.0,
    iterations: int = 10,
    rating_range: tuple[float, float] | None = None,
) -> MetricSums:
    """r̂ = μ + b_u + b_i with damped biases fitted by alternating means (Koren 2010), clipped to
    `rating_range` when given."""
    u_idx = np.concatenate([np.full(len(u.train_items), k) for k, u in enumerate(users)])
    i_idx = np.concatenate([u.train_items for u in users])
    r = np.concatenate([u.train_ratings for u in users]).astype(np.float64)
    mu = r.mean()
    b_u, b_i = np.zeros(len(users)), np.zeros(n_items)
    for _ in range(iterations):
        resid = r - mu - b_u[u_idx]
        b_i = np.bincount(i_idx, resid, n_items) / (np.bincount(i_idx, minlength=n_items) + damping)
        resid = r - mu - b_i[i_idx]
        b_u = np.bincount(u_idx, resid, len(users)) / (np.bincount(u_idx, minlength=len(users)) + damping)
    preds = np.concatenate([mu + b_u[k] + b_i[u.test_items] for k, u in enumerate(users)])
    truth = np.concatenate([u.test_ratings for u in users])
    return rating_sums(preds, truth, rating_range)


def global_mean(users: list[UserRatings]) -> MetricSums:
    """Predict every held-out rating as the mean train rating."""
    mu = np.concatenate([u.train_ratings for u in users]).mean()
    truth = np.concatenate([u.test_ratings for u in users])
    return rating_sums(np.full(len(truth), mu), truth)
