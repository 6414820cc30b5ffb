"""The on-device split and the client topologies."""

from __future__ import annotations

import numpy as np
import pytest

from shared.data import RatingsData
from shared.data.split import split_users
from shared.data.synthetic import make_synthetic
from shared.data.topology import device_partition, hub_partition


@pytest.fixture(scope="module")
def data() -> RatingsData:
    return make_synthetic(n_users=60, n_items=60, n_categories=3, subs_per_category=2, seed=3)[0]


def test_split_is_deterministic_and_disjoint(data: RatingsData) -> None:
    a = split_users(data, seed=7)
    b = split_users(data, seed=7)
    c = split_users(data, seed=8)
    assert all(np.array_equal(x.test_items, y.test_items) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x.test_items, y.test_items) for x, y in zip(a, c, strict=True))
    for u in a:
        assert not set(u.train_items) & set(u.test_items)


def test_split_fraction_and_small_users(data: RatingsData) -> None:
    users = split_users(data, seed=0, min_ratings_for_test=5)
    for u in users:
        n = len(u.train_items) + len(u.test_items)
        if n < 5:
            assert len(u.test_items) == 0
        else:
            assert len(u.test_items) == round(0.2 * n)


def test_split_of_one_user_matches_split_of_all(data: RatingsData) -> None:
    """A device splitting only its own user gets what the central split gets."""
    whole = split_users(data, seed=1)
    alone = split_users(data, seed=1, users=np.array([17]))[0]
    assert np.array_equal(alone.test_items, whole[17].test_items)


def test_validation_holdout_never_touches_test(data: RatingsData) -> None:
    test_split = split_users(data, seed=0)
    val_split = split_users(data, seed=0, holdout="validation")
    for t, v in zip(test_split, val_split, strict=True):
        assert not set(v.train_items) & set(t.test_items)
        assert not set(v.test_items) & set(t.test_items)


def test_device_and_hub_partitions_cover_every_user_once(data: RatingsData) -> None:
    assert [p.tolist() for p in device_partition(3)] == [[0], [1], [2]]
    for assignment in ("iid", "dirichlet"):
        parts = hub_partition(data, 5, assignment=assignment, alpha=0.3, seed=0)
        joined = np.sort(np.concatenate(parts))
        assert np.array_equal(joined, np.arange(data.n_users))
        assert all(len(p) > 0 for p in parts)


def test_too_many_hubs_is_an_error(data: RatingsData) -> None:
    with pytest.raises(ValueError, match="more hubs than users"):
        hub_partition(data, data.n_users + 1)


def _without_users(data: RatingsData, drop: set[int]) -> RatingsData:
    """The same data set with the users in `drop` removed (a neighbour, or the data before canaries)."""
    keep = np.array([u for u in range(data.n_users) if u not in drop])
    new_index = np.full(data.n_users, -1)
    new_index[keep] = np.arange(len(keep))
    rows = np.isin(data.users, keep)
    return RatingsData(
        name=data.name,
        users=new_index[data.users[rows]],
        items=data.items[rows],
        ratings=data.ratings[rows],
        user_ids=tuple(data.user_ids[u] for u in keep),
        catalog=data.catalog,
        report=data.report,
    )


@pytest.mark.parametrize("assignment", ["iid", "dirichlet"])
def test_a_users_hub_does_not_depend_on_other_users(data: RatingsData, assignment: str) -> None:
    """Adding or removing users (canaries, a neighbouring data set) moves no one else between hubs."""

    def hubs(d: RatingsData) -> dict[str, int]:
        parts = hub_partition(d, 4, assignment=assignment, alpha=0.5, seed=11)
        return {d.user_ids[u]: hub for hub, users in enumerate(parts) for u in users}

    full = hubs(data)
    smaller = hubs(_without_users(data, set(range(0, 60, 3))))
    assert smaller == {uid: full[uid] for uid in smaller}
    assert hubs(data) == full  # and it is deterministic


def test_an_empty_hub_is_an_error_naming_it(data: RatingsData) -> None:
    with pytest.raises(ValueError, match=r"hub \d+ of 60 gets no user"):
        hub_partition(data, 60, seed=0)
