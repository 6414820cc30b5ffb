"""Evaluation metrics (DESIGN.md §7).

NDCG@100: binary relevance, ideal DCG over min(100, #held-out positives).
Recall@20: hits / min(20, #held-out positives). Train positives are excluded from the
ranking. RMSE and MAE are pooled over all held-out ratings.

Two forms. `MetricSums` are exact sums and counts (the central reference and the simulation
oracle, which hold the data). `user_metric_rows` is what a device releases: one bounded
vector per user, every coordinate in [0, 1], so that the sum is a Gaussian release with
L2 sensitivity `EVAL_BOUND` (`shared.privacy.release`); `release_means` turns a noisy sum
back into the figures, with their approximate noise std.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from .data.matrices import UserTensors, train_tensors
from .data.split import UserRatings

if TYPE_CHECKING:
    from .model import ModelOutput

EVAL_FIELDS = ("has-positive", "ndcg", "recall", "sq-err", "abs-err", "rated")
"""Coordinates of a user's evaluation vector: held-out positive (0/1), NDCG@100, Recall@20, the
squared and absolute errors of their first `EVAL_RATED_CAP` held-out ratings over the largest
possible, and that count over the cap."""
EVAL_RATED_CAP = 20
"""At most this many of a user's held-out ratings enter their error coordinates."""
EVAL_BOUND = float(np.sqrt(len(EVAL_FIELDS)))
"""L2 bound of a user's evaluation vector (each coordinate in [0, 1])."""
ORACLE_LABEL = "simulation oracle — not a release"
"""The label of every figure the simulation runner computes from the held-out data itself."""


@dataclass
class MetricSums:
    """Additive evaluation statistics; `+` merges clients, `.means()` gives the figures."""

    ndcg_sum: float = 0.0
    recall_sum: float = 0.0
    ranked_users: int = 0
    """Users with at least one held-out positive."""
    sq_err_sum: float = 0.0
    abs_err_sum: float = 0.0
    rated: int = 0
    """Held-out ratings."""

    def __add__(self, other: MetricSums) -> MetricSums:
        return MetricSums(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def to_dict(self) -> dict[str, float]:
        """Return every field as a float, keyed by field name."""
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> MetricSums:
        """Rebuild from `to_dict` output, each value cast back to its field's type."""
        return cls(**{f.name: type(cast(Any, f.default))(d[f.name]) for f in fields(cls)})

    def means(self) -> dict[str, float]:
        """Return NDCG@100, Recall@20, RMSE and MAE (NaN where nothing was counted)."""
        nan = float("nan")
        return {
            "ndcg@100": self.ndcg_sum / self.ranked_users if self.ranked_users else nan,
            "recall@20": self.recall_sum / self.ranked_users if self.ranked_users else nan,
            "rmse": float(np.sqrt(self.sq_err_sum / self.rated)) if self.rated else nan,
            "mae": self.abs_err_sum / self.rated if self.rated else nan,
        }


def ndcg_at_k(scores: np.ndarray, relevant: np.ndarray, k: int = 100) -> np.ndarray:
    """Per-row NDCG@k with binary relevance; rows without relevant items give NaN."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    top = np.take_along_axis(top, order, axis=1)
    gains = np.take_along_axis(relevant, top, axis=1).astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (gains * discounts).sum(axis=1)
    n_rel = relevant.sum(axis=1)
    idcg = np.array([discounts[: min(int(n), k)].sum() for n in n_rel])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, dcg / idcg, np.nan)


def recall_at_k(scores: np.ndarray, relevant: np.ndarray, k: int = 20) -> np.ndarray:
    """Per-row hits in the top k over min(k, #relevant); rows without relevant items give NaN."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    hits = np.take_along_axis(relevant, top, axis=1).sum(axis=1)
    n_rel = relevant.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, hits / np.minimum(k, n_rel), np.nan)


def ranking_sums(scores: np.ndarray, train_pos: np.ndarray, test_pos: np.ndarray) -> MetricSums:
    """Ranking metrics for a batch: scores B×I, train/test positives B×I (0/1)."""
    masked = np.where(train_pos > 0, -np.inf, scores)
    nd = ndcg_at_k(masked, test_pos, 100)
    rc = recall_at_k(masked, test_pos, 20)
    ok = ~np.isnan(nd)
    return MetricSums(ndcg_sum=float(nd[ok].sum()), recall_sum=float(rc[ok].sum()), ranked_users=int(ok.sum()))


def rating_sums(pred: np.ndarray, truth: np.ndarray, rating_range: tuple[float, float] | None = None) -> MetricSums:
    """Sum the squared and absolute errors of predictions against true ratings (1-D, aligned), the
    predictions first clipped to the public `rating_range` when given (as Surprise and LensKit do)."""
    if rating_range is not None:
        pred = np.clip(pred, *rating_range)
    err = pred - truth
    return MetricSums(sq_err_sum=float((err**2).sum()), abs_err_sum=float(np.abs(err).sum()), rated=len(err))


def _scored_batches(
    model: torch.nn.Module, users: list[UserRatings], n_items: int, threshold: float, batch_size: int
) -> Iterator[tuple[int, list[UserRatings], UserTensors, ModelOutput, np.ndarray]]:
    """Yield (start, users, their train tensors, the model's output, B×I held-out positives) per
    batch, the model in eval mode (its mode restored at the end)."""
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(users), batch_size):
            chunk = users[start : start + batch_size]
            t = train_tensors(chunk, n_items, threshold)
            test_pos = np.zeros((len(chunk), n_items), dtype=np.float32)
            for row, u in enumerate(chunk):
                test_pos[row, u.test_items[u.test_ratings >= threshold]] = 1.0
            yield start, chunk, t, model(*t.as_tuple()), test_pos
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    users: list[UserRatings],
    n_items: int,
    threshold: float,
    *,
    batch_size: int = 512,
    rating_range: tuple[float, float] | None = None,
) -> MetricSums:
    """Score the given users' held-out data with the model (ranking + rating metrics); predicted
    ratings are clipped to `rating_range` when given."""
    total = MetricSums()
    for _, chunk, t, out, test_pos in _scored_batches(model, users, n_items, threshold, batch_size):
        total = total + ranking_sums(out.logits.numpy(), t.positives.numpy(), test_pos)
        preds = [out.rating[row, u.test_items].numpy() for row, u in enumerate(chunk)]
        if preds:
            truths = np.concatenate([u.test_ratings for u in chunk])
            total = total + rating_sums(np.concatenate(preds), truths, rating_range)
    return total


def popularity_sums(
    users_train: list[UserRatings], users_eval: list[UserRatings], n_items: int, threshold: float
) -> MetricSums:
    """Score the popularity baseline: rank items by train-positive counts over `users_train`."""
    counts = np.zeros(n_items)
    for u in users_train:
        np.add.at(counts, u.train_items[u.train_ratings >= threshold], 1.0)
    t = train_tensors(users_eval, n_items, threshold)
    test_pos = np.zeros((len(users_eval), n_items), dtype=np.float32)
    for row, u in enumerate(users_eval):
        test_pos[row, u.test_items[u.test_ratings >= threshold]] = 1.0
    scores = np.broadcast_to(counts, (len(users_eval), n_items))
    return ranking_sums(np.array(scores), t.positives.numpy(), test_pos)


@torch.no_grad()
def user_metric_rows(
    model: torch.nn.Module,
    users: list[UserRatings],
    n_items: int,
    threshold: float,
    rating_range: tuple[float, float],
    *,
    batch_size: int = 512,
) -> np.ndarray:
    """Return one evaluation vector per user (`EVAL_FIELDS`, U×6, every coordinate in [0, 1]).

    Predictions are clipped to the public rating scale, so each error is at most its width;
    a user without held-out ratings contributes zeros.
    """
    lo, hi = rating_range
    span = hi - lo
    rows = np.zeros((len(users), len(EVAL_FIELDS)))
    for start, chunk, t, out, test_pos in _scored_batches(model, users, n_items, threshold, batch_size):
        masked = np.where(t.positives.numpy() > 0, -np.inf, out.logits.numpy())
        block = rows[start : start + len(chunk)]
        block[:, 0] = test_pos.sum(axis=1) > 0
        block[:, 1] = np.nan_to_num(ndcg_at_k(masked, test_pos, 100))
        block[:, 2] = np.nan_to_num(recall_at_k(masked, test_pos, 20))
        for row, u in enumerate(chunk):
            items, truth = u.test_items[:EVAL_RATED_CAP], u.test_ratings[:EVAL_RATED_CAP]
            err = np.clip(out.rating[row, items].numpy(), lo, hi) - truth
            block[row, 3] = float((err**2).sum()) / (EVAL_RATED_CAP * span**2)
            block[row, 4] = float(np.abs(err).sum()) / (EVAL_RATED_CAP * span)
            block[row, 5] = len(items) / EVAL_RATED_CAP
    return np.clip(np.nan_to_num(rows, nan=0.0), 0.0, 1.0)  # a NaN (a broken model's output) counts 0


def _ratio(a: float, b: float, noise_std: float) -> tuple[float, float]:
    """Return a / b and its first-order std when a and b each carry independent N(0, noise_std²)."""
    if b <= 0:
        return float("nan"), float("nan")
    r = a / b
    return r, noise_std * float(np.sqrt(1.0 + r * r)) / b


def release_means(total: np.ndarray, noise_std: float, rating_range: tuple[float, float]) -> dict[str, float]:
    """Return NDCG@100, Recall@20, RMSE and MAE from a (noisy) sum of evaluation vectors, each with
    its first-order noise std (`<metric>-std`), and the noise std on each coordinate of the sum.

    Post-processing of the release: costs no privacy. NaN where a noisy count is not positive.
    """
    if total.shape != (len(EVAL_FIELDS),):
        raise ValueError(f"an evaluation sum has {len(EVAL_FIELDS)} coordinates, got shape {total.shape}.")
    span = rating_range[1] - rating_range[0]
    ranked, ndcg, recall, sq, ab, rated = (float(x) for x in total)
    out: dict[str, float] = {}
    out["ndcg@100"], out["ndcg@100-std"] = _ratio(ndcg, ranked, noise_std)
    out["recall@20"], out["recall@20-std"] = _ratio(recall, ranked, noise_std)
    mse, mse_std = _ratio(sq, rated, noise_std)
    rmse = span * float(np.sqrt(max(mse, 0.0))) if not np.isnan(mse) else float("nan")
    out["rmse"] = rmse
    out["rmse-std"] = span * mse_std / (2 * np.sqrt(mse)) if mse > 0 else float("nan")
    mae, mae_std = _ratio(ab, rated, noise_std)
    out["mae"], out["mae-std"] = span * mae, span * mae_std
    out["noise-std"] = noise_std
    return out
