"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.metrics import MetricSums, ndcg_at_k, ranking_sums, rating_sums, recall_at_k


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
