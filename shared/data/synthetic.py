"""Synthetic ratings with a planted taxonomy: categories -> sub-interests -> items.

Each item belongs to exactly one sub-interest (returned as `planted_sub`); its first catalog
category is that sub-interest's category, and with small probability it carries a second, random
category as catalog noise. Users mix 1-3 sub-interests; ratings combine a global mean, user and item
biases and an affinity term, so in-interest items are rated higher and ratings carry learnable signal.
"""

from __future__ import annotations

import logging

import numpy as np

from .types import Catalog, LoadReport, RatingsData

log = logging.getLogger(__name__)

SECOND_CATEGORY_P = 0.1
"""Probability that an item also carries a second, random category."""
NOISE_SHARE = 0.1
"""Share of a user's sampling mass spread uniformly over all items."""
YEAR_RANGE = (1950, 2015)
"""Sub-interests start at a year in this range; their items span the following decade."""

_MEAN_RATING = 3.0
_AFFINITY_IN_SUB = 1.3
_AFFINITY_SAME_CATEGORY = 0.3
_AFFINITY_OTHER = -0.5
_ITEM_BIAS_SD = 0.5
_USER_BIAS_SD = 0.35
_NOISE_SD = 0.5
_PROFILE_SIGMA = 0.6
_MIN_PROFILE = 3


def make_synthetic(
    *,
    n_users: int,
    n_items: int,
    n_categories: int,
    subs_per_category: int,
    mean_profile_len: int = 30,
    seed: int,
    zipf_a: float = 1.1,
) -> tuple[RatingsData, np.ndarray]:
    """Generate ratings with planted sub-interests; returns (data, planted_sub per item)."""
    n_subs = n_categories * subs_per_category
    if min(n_users, n_categories, subs_per_category) < 1 or n_items < n_subs:
        raise ValueError(f"need n_users, n_categories, subs_per_category >= 1 and n_items >= {n_subs} sub-interests.")
    rng = np.random.default_rng(seed)

    # Items: balanced assignment to sub-interests, Zipf popularity by random rank within each.
    planted_sub = rng.permutation(np.arange(n_items) % n_subs).astype(np.int64)
    sub_category = np.arange(n_subs) // subs_per_category
    item_category = sub_category[planted_sub]
    rank = np.empty(n_items, dtype=np.float64)
    for s in range(n_subs):
        members = np.flatnonzero(planted_sub == s)
        rank[members] = rng.permutation(len(members)) + 1
    popularity = rank**-zipf_a
    sub_mass = np.bincount(planted_sub, weights=popularity, minlength=n_subs)
    within_sub = popularity / sub_mass[planted_sub]
    item_bias = rng.normal(0.0, _ITEM_BIAS_SD, n_items)
    sub_start_year = rng.integers(YEAR_RANGE[0], YEAR_RANGE[1] - 9, n_subs)
    years = sub_start_year[planted_sub] + rng.integers(0, 10, n_items)
    second = rng.random(n_items) < SECOND_CATEGORY_P
    second_category = (item_category + rng.integers(1, max(n_categories, 2), n_items)) % max(n_categories, 1)
    second &= n_categories > 1

    # Users: 1-3 sub-interests with Dirichlet weights, log-normal profile lengths.
    mu = np.log(mean_profile_len) - _PROFILE_SIGMA**2 / 2
    lengths = np.clip(np.rint(rng.lognormal(mu, _PROFILE_SIGMA, n_users)), _MIN_PROFILE, n_items).astype(np.int64)
    user_bias = rng.normal(0.0, _USER_BIAS_SD, n_users)
    users_out, items_out, ratings_out = [], [], []
    for u in range(n_users):
        k = int(rng.integers(1, min(3, n_subs) + 1))
        subs = rng.choice(n_subs, size=k, replace=False)
        weights = rng.dirichlet(np.ones(k))
        sub_weight = np.zeros(n_subs)
        sub_weight[subs] = weights
        p = (1 - NOISE_SHARE) * sub_weight[planted_sub] * within_sub + NOISE_SHARE / n_items
        # Gumbel top-k: a sample without replacement with probabilities proportional to p.
        keys = np.log(p) + rng.gumbel(size=n_items)
        chosen = np.argpartition(-keys, lengths[u] - 1)[: lengths[u]]
        in_sub = np.isin(planted_sub[chosen], subs)
        same_cat = np.isin(item_category[chosen], sub_category[subs])
        affinity = np.where(in_sub, _AFFINITY_IN_SUB, np.where(same_cat, _AFFINITY_SAME_CATEGORY, _AFFINITY_OTHER))
        score = _MEAN_RATING + user_bias[u] + item_bias[chosen] + affinity + rng.normal(0.0, _NOISE_SD, len(chosen))
        users_out.append(np.full(len(chosen), u, dtype=np.int64))
        items_out.append(np.sort(chosen))
        ratings_out.append(np.clip(np.rint(score[np.argsort(chosen)]), 1, 5))

    users = np.concatenate(users_out)
    items = np.concatenate(items_out).astype(np.int64)
    ratings = np.concatenate(ratings_out).astype(np.float32)
    timestamps = 946_684_800 + rng.integers(0, 10 * 365 * 86_400, len(users))
    cats = tuple(
        (f"c{item_category[i]}", f"c{second_category[i]}") if second[i] else (f"c{item_category[i]}",)
        for i in range(n_items)
    )
    catalog = Catalog(
        item_ids=tuple(str(i) for i in range(n_items)),
        titles=tuple(f"Item {i} (c{item_category[i]}-s{planted_sub[i] % subs_per_category})" for i in range(n_items)),
        categories=cats,
        years=tuple(int(y) for y in years),
    )
    name = f"synthetic-{seed}"
    data = RatingsData(
        name=name,
        users=users,
        items=items,
        ratings=ratings,
        user_ids=tuple(str(u) for u in range(n_users)),
        catalog=catalog,
        report=LoadReport(source=name, rows_read=len(users)),
        timestamps=timestamps.astype(np.int64),
    )
    log.info(
        "Made %s: %d users, %d items, %d ratings, %d sub-interests",
        name,
        n_users,
        n_items,
        len(users),
        n_subs,
    )
    return data, planted_sub
