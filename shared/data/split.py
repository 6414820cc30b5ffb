"""The on-device per-user train/test split (DESIGN.md §2).

Each user's ratings are shuffled with a generator seeded from (seed, user id), so a
device can compute its own users' split without seeing anybody else's data, and the
simulation, the central reference and a deployed device all get the same split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import DataConfig
from ..seeds import SPLIT, make_rng
from .types import PerUserRatings


@dataclass(frozen=True)
class UserRatings:
    """One user's ratings, split into train and held-out parts (item indices, values)."""

    user: int
    train_items: np.ndarray
    train_ratings: np.ndarray
    test_items: np.ndarray
    test_ratings: np.ndarray


def split_one_user(
    user: int,
    user_id: str,
    items: np.ndarray,
    ratings: np.ndarray,
    *,
    seed: int,
    test_fraction: float = 0.2,
    min_ratings_for_test: int = 5,
) -> UserRatings:
    """Shuffle one user's ratings and hold out `test_fraction` of them."""
    n = len(items)
    order = np.argsort(items, kind="stable")  # canonical order before shuffling
    items, ratings = items[order], ratings[order]
    perm = make_rng(seed, SPLIT, user_id).permutation(n)
    n_test = int(round(test_fraction * n)) if n >= min_ratings_for_test else 0
    test, train = perm[:n_test], perm[n_test:]
    return UserRatings(
        user=user,
        train_items=items[train].astype(np.int64),
        train_ratings=ratings[train].astype(np.float32),
        test_items=items[test].astype(np.int64),
        test_ratings=ratings[test].astype(np.float32),
    )


def split_users(
    data: PerUserRatings,
    *,
    seed: int,
    test_fraction: float = 0.2,
    min_ratings_for_test: int = 5,
    users: np.ndarray | None = None,
    holdout: str = "test",
) -> list[UserRatings]:
    """Split the given users (default: all) of a data set; one entry per user, in order.

    `holdout="validation"` splits each user's *train* part once more the same way and
    returns (train minus validation, validation): for choosing epochs or rounds without
    touching the test ratings.
    """
    if holdout not in ("test", "validation"):
        raise ValueError(f"holdout must be 'test' or 'validation', not {holdout!r}.")
    wanted = np.arange(data.n_users) if users is None else np.asarray(users, dtype=np.int64)
    out = []
    for u in wanted:
        items, ratings = data.rows(int(u))
        user_id = data.user_id(int(u))
        one = split_one_user(
            int(u),
            user_id,
            items,
            ratings,
            seed=seed,
            test_fraction=test_fraction,
            min_ratings_for_test=min_ratings_for_test,
        )
        if holdout == "validation":
            one = split_one_user(
                int(u),
                f"{user_id}/validation",
                one.train_items,
                one.train_ratings,
                seed=seed,
                test_fraction=test_fraction,
                min_ratings_for_test=min_ratings_for_test,
            )
        out.append(one)
    return out


def split_configured(
    data: PerUserRatings, config: DataConfig, seed: int, users: np.ndarray | None = None
) -> list[UserRatings]:
    """`split_users` with the split settings of a data config."""
    return split_users(
        data,
        seed=seed,
        test_fraction=config.test_fraction,
        min_ratings_for_test=config.min_ratings_for_test,
        users=users,
        holdout=config.holdout,
    )
