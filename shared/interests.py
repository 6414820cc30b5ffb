"""The interest taxonomy as item × interest weight matrices (DESIGN.md §5).

Both sides use it: the server sends the item × L2 matrix with the census query, a device
builds its users' profiles and explanations from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class InterestIndex:
    """The taxonomy as item × interest weight matrices, aligned with the model's item index."""

    categories: tuple[str, ...]
    """L1 ids."""
    interests: tuple[str, ...]
    """L2 ids."""
    names: tuple[str, ...]
    """Readable name of each L2 interest."""
    interest_category: np.ndarray
    """Index into `categories` of each L2 interest."""
    l1: np.ndarray
    """I×G p(g|i)."""
    l2: np.ndarray
    """I×C p(c|i)."""
    prior_l1: np.ndarray
    """G population prior shares."""
    prior_l2: np.ndarray
    """C population prior shares."""

    @classmethod
    def from_taxonomy(cls, taxonomy: dict[str, Any], item_categories: Sequence[Sequence[str]]) -> InterestIndex:
        """Build the matrices from a taxonomy (JSON form) and each item's categories."""
        n_items = len(item_categories)
        if taxonomy.get("n_items", n_items) != n_items:
            raise ValueError(f"the taxonomy covers {taxonomy['n_items']} items but the catalog has {n_items}.")
        cats = [c["id"] for c in taxonomy["categories"]]
        cindex = {c: j for j, c in enumerate(cats)}
        l1 = np.zeros((n_items, len(cats)))
        for i, item_cats in enumerate(item_categories):
            for g in item_cats:
                if g not in cindex:
                    raise ValueError(f"item {i} has category {g!r}, which the taxonomy does not know.")
                l1[i, cindex[g]] = 1.0 / len(item_cats)
        interests = [it for c in taxonomy["categories"] for it in c["interests"]]
        l2 = np.zeros((n_items, len(interests)))
        for j, it in enumerate(interests):
            members = np.asarray(it["items"], dtype=np.int64)
            l2[members, j] = l1[members, cindex[it["category"]]]
        return cls(
            categories=tuple(cats),
            interests=tuple(it["id"] for it in interests),
            names=tuple(it.get("name", it["id"]) for it in interests),
            interest_category=np.array([cindex[it["category"]] for it in interests], dtype=np.int64),
            l1=l1,
            l2=l2,
            prior_l1=normalised(np.array([c["prior_share"] for c in taxonomy["categories"]], dtype=np.float64)),
            prior_l2=normalised(np.array([it["prior_share"] for it in interests], dtype=np.float64)),
        )


def normalised(v: np.ndarray) -> np.ndarray:
    """Return `v` divided by its sum (unchanged when the sum is not positive)."""
    total = v.sum()
    return v / total if total > 0 else v


