"""Which users each client holds: `device` (one user per client) or `hub` (K edge hubs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import numpy as np

from ..seeds import PARTITION, make_rng, make_seed
from .types import PerUserRatings


class OnePerClient(Sequence[np.ndarray]):
    """The device topology's partition, client k holding user k, without a list of N arrays."""

    def __init__(self, n_users: int) -> None:
        self.n_users = n_users

    def __len__(self) -> int:
        return self.n_users

    @overload
    def __getitem__(self, k: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, k: slice) -> list[np.ndarray]: ...
    def __getitem__(self, k: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(k, slice):
            return [np.array([u], dtype=np.int64) for u in range(self.n_users)[k]]
        if not -self.n_users <= k < self.n_users:
            raise IndexError(f"client {k} of {self.n_users}")
        return np.array([k % self.n_users], dtype=np.int64)


def device_partition(n_users: int) -> Sequence[np.ndarray]:
    """Cross-device: client k holds user k."""
    return OnePerClient(n_users)


def top_category(data: PerUserRatings) -> np.ndarray:
    """Each user's most-rated category (index into catalog.category_names; -1 if none)."""
    names = data.catalog.category_names
    index = {c: j for j, c in enumerate(names)}
    item_cat = np.zeros((data.n_items, max(len(names), 1)), dtype=np.float64)
    for i, cats in enumerate(data.catalog.categories):
        for c in cats:
            item_cat[i, index[c]] = 1.0 / len(cats)
    counts = np.zeros((data.n_users, item_cat.shape[1]))
    np.add.at(counts, data.users, item_cat[data.items])
    top: np.ndarray = counts.argmax(axis=1)
    top[counts.sum(axis=1) == 0] = -1
    return top


def hub_of_user(user_id: str, num_hubs: int, seed: int, probs: np.ndarray | None = None) -> int:
    """Return the hub of one user from (seed, user id) alone: uniform, or drawn from `probs` over hubs."""
    if probs is None:
        return make_seed(seed, PARTITION, user_id) % num_hubs
    return int(make_rng(seed, PARTITION, user_id).choice(num_hubs, p=probs))


def hub_partition(
    data: PerUserRatings,
    num_hubs: int,
    *,
    assignment: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
) -> list[np.ndarray]:
    """Spread users over `num_hubs` hubs, IID or non-IID by a Dirichlet over top category.

    Each user's hub depends only on (seed, user id) — and, non-IID, on the user's own top
    category — never on who else is in the data: adding or removing a user (a canary, a
    neighbouring data set) moves no one else. Non-IID: each category draws hub weights from
    Dirichlet(alpha) (Hsu et al. 2019), keyed by the category's name.
    """
    if num_hubs < 1:
        raise ValueError("num_hubs must be at least 1.")
    if num_hubs > data.n_users:
        raise ValueError(f"Cannot spread {data.n_users} users over {num_hubs} hubs: more hubs than users.")
    if assignment == "iid":
        hub_of = np.fromiter(
            (hub_of_user(uid, num_hubs, seed) for uid in data.user_ids), dtype=np.int64, count=data.n_users
        )
    elif assignment == "dirichlet":
        if alpha <= 0:
            raise ValueError("dirichlet alpha must be positive.")
        names = data.catalog.category_names
        weights = {
            cat: make_rng(seed, PARTITION, "category", names[cat]).dirichlet(np.full(num_hubs, alpha))
            for cat in range(len(names))
        }
        uniform = np.full(num_hubs, 1.0 / num_hubs)
        hub_of = np.fromiter(
            (
                hub_of_user(uid, num_hubs, seed, weights.get(int(cat), uniform))
                for uid, cat in zip(data.user_ids, top_category(data), strict=True)
            ),
            dtype=np.int64,
            count=data.n_users,
        )
    else:
        raise ValueError(f"hub assignment must be 'iid' or 'dirichlet', not {assignment!r}.")
    empty = [hub for hub in range(num_hubs) if not np.any(hub_of == hub)]
    if empty:
        raise ValueError(
            f"hub {empty[0]} of {num_hubs} gets no user under the {assignment} assignment (seed {seed}, "
            f"{data.n_users} users): use fewer hubs, another seed, or a larger dirichlet alpha."
        )
    return [np.flatnonzero(hub_of == h).astype(np.int64) for h in range(num_hubs)]


def partition_users(
    data: PerUserRatings,
    topology: str,
    *,
    num_hubs: int = 10,
    assignment: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
) -> Sequence[np.ndarray]:
    """Users of each client for the configured topology."""
    if topology == "device":
        return device_partition(data.n_users)
    if topology == "hub":
        return hub_partition(data, num_hubs, assignment=assignment, alpha=alpha, seed=seed)
    raise ValueError(f"topology must be 'device' or 'hub', not {topology!r}.")
