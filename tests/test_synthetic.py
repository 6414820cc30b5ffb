"""Tests for the planted-taxonomy synthetic data generator."""

from __future__ import annotations

import numpy as np
import pytest

from shared.data import RatingsData, make_synthetic

PARAMS = {"n_users": 500, "n_items": 300, "n_categories": 4, "subs_per_category": 3, "seed": 7}
Synth = tuple[RatingsData, np.ndarray]  # the data and the planted sub-interest of each item


@pytest.fixture(scope="module")
def synth() -> Synth:
    return make_synthetic(**PARAMS)


def test_deterministic_for_a_seed(synth: Synth) -> None:
    data, planted = synth
    again, planted_again = make_synthetic(**PARAMS)
    np.testing.assert_array_equal(planted, planted_again)
    for field in ("users", "items", "ratings", "timestamps"):
        np.testing.assert_array_equal(getattr(data, field), getattr(again, field))
    assert data.catalog == again.catalog
    other, _ = make_synthetic(**{**PARAMS, "seed": 8})
    assert other.n_ratings != data.n_ratings or not np.array_equal(other.items, data.items)


def test_shapes_and_ranges(synth: Synth) -> None:
    data, planted = synth
    assert data.n_users == 500 and data.n_items == 300
    assert planted.shape == (300,) and set(planted.tolist()) == set(range(12))
    assert data.users.dtype == np.int64 and data.items.dtype == np.int64 and data.ratings.dtype == np.float32
    assert set(np.unique(data.ratings).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert data.users.max() < 500 and data.items.max() < 300
    pairs = data.users * data.n_items + data.items
    assert len(np.unique(pairs)) == data.n_ratings
    per_user = np.bincount(data.users, minlength=data.n_users)
    assert per_user.min() >= 3 and per_user.std() > 0
    assert 20 <= per_user.mean() <= 40
    assert data.report.rows_read == data.n_ratings


def test_planted_taxonomy_in_catalog(synth: Synth) -> None:
    data, planted = synth
    cat = data.catalog
    for i in range(data.n_items):
        category = planted[i] // PARAMS["subs_per_category"]
        assert cat.categories[i][0] == f"c{category}"
        assert cat.titles[i] == f"Item {i} (c{category}-s{planted[i] % PARAMS['subs_per_category']})"
    second = sum(len(c) == 2 for c in cat.categories)
    assert 0 < second < 0.25 * data.n_items
    years = np.array(cat.years)
    spans = [np.ptp(years[planted == s]) for s in range(12)]
    assert max(spans) <= 9  # each sub-interest's items fall in one decade


def test_in_interest_items_are_rated_higher(synth: Synth) -> None:
    data, planted = synth
    # A user's sub-interests: the subs of the items they rated most often.
    in_interest = np.zeros(data.n_ratings, dtype=bool)
    for u in range(data.n_users):
        idx = np.flatnonzero(data.users == u)
        counts = np.bincount(planted[data.items[idx]], minlength=12)
        top = np.flatnonzero(counts >= max(2, 0.15 * len(idx)))
        in_interest[idx] = np.isin(planted[data.items[idx]], top)
    assert data.ratings[in_interest].mean() > data.ratings[~in_interest].mean() + 0.8
    high = data.ratings >= 4
    assert in_interest[high].mean() > 0.8


def test_popularity_is_skewed() -> None:
    # With 100 items per sub-interest profiles do not exhaust a sub, so the Zipf skew shows.
    data, _ = make_synthetic(**{**PARAMS, "n_items": 1200})
    counts = np.sort(np.bincount(data.items, minlength=data.n_items))[::-1]
    assert counts[: data.n_items // 10].sum() > 0.25 * counts.sum()


def test_rejects_too_few_items() -> None:
    with pytest.raises(ValueError):
        make_synthetic(n_users=5, n_items=3, n_categories=2, subs_per_category=2, seed=0)
