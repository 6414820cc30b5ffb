"""Which users each client holds: `device` (one user per client) or `hub` (K edge hubs)."""

from __future__ import annotations

import numpy as np

from ..seeds import PARTITION, make_rng
from .types import RatingsData


def device_partition(n_users: int) -> list[np.ndarray]:
    """Cross-device: client k holds user k."""
    return [np.array([u], dtype=np.int64) for u in range(n_users)]


def top_category(data: RatingsData) -> np.ndarray:
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


def hub_partition(
    data: RatingsData,
    num_hubs: int,
    *,
    assignment: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
) -> list[np.ndarray]:
    """Spread users over `num_hubs` hubs, IID or non-IID by a Dirichlet over top category.

    Non-IID: for each category, a Dirichlet(alpha) draw over hubs decides which hub its
    users go to (Hsu et al. 2019). Every hub receives at least one user.
    """
    if num_hubs < 1:
        raise ValueError("num_hubs must be at least 1.")
    if num_hubs > data.n_users:
        raise ValueError(f"Cannot spread {data.n_users} users over {num_hubs} hubs: more hubs than users.")
    rng = make_rng(seed, PARTITION)
    if assignment == "iid":
        hub_of = rng.permutation(np.arange(data.n_users) % num_hubs)
    elif assignment == "dirichlet":
        if alpha <= 0:
            raise ValueError("dirichlet alpha must be positive.")
        top = top_category(data)
        hub_of = np.empty(data.n_users, dtype=np.int64)
        for cat in np.unique(top):
            members = np.flatnonzero(top == cat)
            probs = rng.dirichlet(np.full(num_hubs, alpha))
            hub_of[members] = rng.choice(num_hubs, size=len(members), p=probs)
        # Give any empty hub a user from the largest hub, so no client is empty.
        for hub in range(num_hubs):
            if not np.any(hub_of == hub):
                largest = np.bincount(hub_of, minlength=num_hubs).argmax()
                hub_of[rng.choice(np.flatnonzero(hub_of == largest))] = hub
    else:
        raise ValueError(f"hub assignment must be 'iid' or 'dirichlet', not {assignment!r}.")
    return [np.flatnonzero(hub_of == h).astype(np.int64) for h in range(num_hubs)]


def partition_users(
    data: RatingsData,
    topology: str,
    *,
    num_hubs: int = 10,
    assignment: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
) -> list[np.ndarray]:
    """Users of each client for the configured topology."""
    if topology == "device":
        return device_partition(data.n_users)
    if topology == "hub":
        return hub_partition(data, num_hubs, assignment=assignment, alpha=alpha, seed=seed)
    raise ValueError(f"topology must be 'device' or 'hub', not {topology!r}.")
