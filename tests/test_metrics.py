"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shared.config import ModelConfig
from shared.data.split import UserRatings, split_users
from shared.data.synthetic import make_synthetic
from shared.features import catalog_features
from shared.metrics import (
    EVAL_BOUND,
    EVAL_FIELDS,
    EVAL_RATED_CAP,
    MetricSums,
    evaluate_model,
    ndcg_at_k,
    ranking_sums,
    rating_sums,
    recall_at_k,
    release_means,
    user_metric_rows,
)
from shared.model import StrataModel, build_model


def test_ndcg_hand_computed() -> None:
    # Ranking by score: items 3, 1, 0, 2. Relevant: items 1 and 2 (ranks 2 and 4).
    scores = np.array([[0.5, 0.8, 0.1, 0.9]])
    relevant = np.array([[0, 1, 1, 0]])
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(scores, relevant, k=100)[0] == pytest.approx(dcg / idcg)
    # With k=2 only rank 2 counts; the ideal is over min(2, 2) items.
    assert ndcg_at_k(scores, relevant, k=2)[0] == pytest.approx((1 / math.log2(3)) / idcg)


def test_recall_uses_min_k_and_relevant() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.1, 0.0]])
    relevant = np.array([[1, 0, 0, 1, 1]])
    # top-2 = items 0, 1 -> 1 hit over min(2, 3) = 2
    assert recall_at_k(scores, relevant, k=2)[0] == pytest.approx(0.5)
    # top-4 -> hits items 0 and 3 -> 2 over min(4, 3) = 3
    assert recall_at_k(scores, relevant, k=4)[0] == pytest.approx(2 / 3)


def test_train_positives_are_excluded_and_users_without_holdout_skipped() -> None:
    scores = np.array([[0.9, 0.5, 0.1], [0.3, 0.2, 0.1]])
    train = np.array([[1, 0, 0], [0, 0, 0]])
    test = np.array([[0, 1, 0], [0, 0, 0]])
    sums = ranking_sums(scores, train, test)
    assert sums.ranked_users == 1  # the second user has no held-out positive
    assert sums.ndcg_sum == pytest.approx(1.0)  # item 0 excluded, item 1 ranks first
    assert sums.recall_sum == pytest.approx(1.0)


def test_sums_merge_exactly() -> None:
    a = rating_sums(np.array([3.0, 4.0]), np.array([4.0, 4.0]))
    b = rating_sums(np.array([1.0]), np.array([3.0]))
    merged = (a + b).means()
    assert merged["rmse"] == pytest.approx(math.sqrt((1 + 0 + 4) / 3))
    assert merged["mae"] == pytest.approx((1 + 0 + 2) / 3)
    assert MetricSums.from_dict((a + b).to_dict()) == a + b


def test_predictions_are_clipped_to_the_public_scale_when_asked() -> None:
    pred, truth = np.array([5.8, 0.2, 3.0]), np.array([5.0, 1.0, 4.0])
    assert rating_sums(pred, truth).means()["mae"] == pytest.approx((0.8 + 0.8 + 1.0) / 3)
    assert rating_sums(pred, truth, (1.0, 5.0)).means()["mae"] == pytest.approx(1.0 / 3)


# ------------------------------------------------------------------ evaluation release


def _users_and_model() -> tuple[list[UserRatings], StrataModel, int]:
    data, _ = make_synthetic(n_users=30, n_items=25, n_categories=2, subs_per_category=2, seed=1)
    users = split_users(data, seed=1)
    cfg = ModelConfig(hidden_dim=8, latent_dim=4, rating_dim=2)
    model = build_model(data.n_items, cfg, torch.from_numpy(catalog_features(data.catalog)), seed=0)
    return users, model, data.n_items


def test_each_users_evaluation_vector_is_bounded_and_the_release_recovers_the_figures() -> None:
    users, model, n_items = _users_and_model()
    rows = user_metric_rows(model, users, n_items, 4.0, (1.0, 5.0))
    assert rows.shape == (len(users), len(EVAL_FIELDS)) and rows.min() >= 0.0 and rows.max() <= 1.0
    assert np.all(np.linalg.norm(rows, axis=1) <= EVAL_BOUND + 1e-12)
    exact = evaluate_model(model, users, n_items, 4.0)
    assert rows[:, 0].sum() == exact.ranked_users  # the held-out-positive indicator counts ranked users
    # Without noise the release gives the exact ranking figures (the same per-user NDCG and recall).
    means = release_means(rows.sum(axis=0), 0.0, (1.0, 5.0))
    assert means["ndcg@100"] == pytest.approx(exact.means()["ndcg@100"])
    assert means["recall@20"] == pytest.approx(exact.means()["recall@20"])
    capped = [u for u in users if 0 < len(u.test_ratings) <= EVAL_RATED_CAP]
    assert len(capped) == sum(len(u.test_ratings) > 0 for u in users)  # small profiles: no rating is cut
    assert means["rmse"] == pytest.approx(exact.means()["rmse"], rel=0.05)  # predictions clipped to 1..5 only
    assert means["noise-std"] == 0.0 and means["ndcg@100-std"] == 0.0


def test_a_model_predicting_nan_gives_bounded_rows() -> None:
    """Each user's evaluation vector stays in [0, 1] (the release's bound) even when the model's
    ratings are NaN: their error coordinates count 0 instead of leaving the device as NaN."""
    users, model, n_items = _users_and_model()
    assert model.rate_user is not None
    with torch.no_grad():
        model.rate_user.bias.fill_(float("nan"))  # every predicted rating is NaN
    rows = user_metric_rows(model, users, n_items, 4.0, (1.0, 5.0))
    assert np.isfinite(rows).all() and rows.min() >= 0.0 and rows.max() <= 1.0
    assert not rows[:, 3:5].any() and rows[:, 1].any()  # no rating error counted; ranking untouched


def test_a_user_without_held_out_ratings_contributes_zeros_and_a_non_positive_count_gives_nan() -> None:
    users, model, n_items = _users_and_model()
    empty = [UserRatings(u.user, u.train_items, u.train_ratings, u.train_items[:0], u.train_ratings[:0]) for u in users]
    assert not user_metric_rows(model, empty[:3], n_items, 4.0, (1.0, 5.0)).any()
    noisy = release_means(np.array([-1.0, 0.3, 0.2, 0.1, 0.1, -0.5]), 2.0, (1.0, 5.0))
    assert math.isnan(noisy["ndcg@100"]) and math.isnan(noisy["rmse"]) and noisy["noise-std"] == 2.0
    with pytest.raises(ValueError, match="6 coordinates"):
        release_means(np.zeros(5), 0.0, (1.0, 5.0))
