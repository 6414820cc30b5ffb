"""The in-memory forms of a ratings data set and its public item catalog."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Catalog:
    """Public item metadata, aligned with the item index (row i describes item i)."""

    item_ids: tuple[str, ...]
    """Original item identifiers, in index order."""
    titles: tuple[str, ...]
    """Human-readable titles ("" where unknown)."""
    categories: tuple[tuple[str, ...], ...]
    """Categories (genres) of each item; may be empty for an item."""
    years: tuple[int | None, ...]
    """Release year of each item, or None where unknown."""

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        for name in ("titles", "categories", "years"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Catalog.{name} has {len(getattr(self, name))} entries, expected {n}.")

    @property
    def n_items(self) -> int:
        """Return the number of items in the catalog."""
        return len(self.item_ids)

    @property
    def category_names(self) -> tuple[str, ...]:
        """Sorted distinct category names."""
        return tuple(sorted({c for cats in self.categories for c in cats}))


@dataclass(frozen=True)
class LoadReport:
    """What a loader read and what it skipped, with reasons, so nothing is dropped silently."""

    source: str
    rows_read: int
    skipped: dict[str, int] = field(default_factory=dict)
    """Reason -> number of rows skipped for that reason."""

    def summary(self) -> str:
        """Return one line: rows read, then rows skipped per reason."""
        parts = [f"{self.source}: {self.rows_read} rows read"]
        for reason, n in sorted(self.skipped.items()):
            parts.append(f"{n} skipped ({reason})")
        return ", ".join(parts)


@dataclass(frozen=True)
class RatingsData:
    """Explicit ratings as parallel arrays over contiguous user and item indices."""

    name: str
    users: np.ndarray
    """int64 user index per rating, in [0, n_users)."""
    items: np.ndarray
    """int64 item index per rating, in [0, n_items)."""
    ratings: np.ndarray
    """float32 rating value per rating."""
    user_ids: tuple[str, ...]
    """Original user identifiers, in index order."""
    catalog: Catalog
    """Item metadata; its item_ids define the item index."""
    report: LoadReport
    timestamps: np.ndarray | None = None
    """int64 timestamps per rating, where the source has them."""

    def __post_init__(self) -> None:
        n = len(self.users)
        if len(self.items) != n or len(self.ratings) != n:
            raise ValueError("users, items and ratings must have the same length.")
        if self.timestamps is not None and len(self.timestamps) != n:
            raise ValueError("timestamps must have one entry per rating.")

    @property
    def n_users(self) -> int:
        """Return the number of users."""
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """Return the number of items (the catalog's)."""
        return self.catalog.n_items

    @property
    def n_ratings(self) -> int:
        """Return the number of ratings."""
        return len(self.users)

    @cached_property
    def user_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(order, bounds): user u's ratings are rows `order[bounds[u]:bounds[u + 1]]`, in file order.

        Sorted once per data set (a stable argsort of every rating), not once per device that asks.
        """
        order = np.argsort(self.users, kind="stable")
        bounds = np.searchsorted(self.users[order], np.arange(self.n_users + 1))
        return order, bounds

    def user_id(self, u: int) -> str:
        """Return user `u`'s original identifier."""
        return self.user_ids[u]

    def rows(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        """(items, ratings) of user `u`, in file order."""
        order, bounds = self.user_rows
        idx = order[bounds[u] : bounds[u + 1]]
        return self.items[idx], self.ratings[idx]


class PerUserRatings(Protocol):
    """What splits and partitions read: a data set in memory (`RatingsData`) or its mapped store."""

    @property
    def n_users(self) -> int:
        """Return the number of users."""

    @property
    def n_items(self) -> int:
        """Return the number of items."""

    @property
    def catalog(self) -> Catalog:
        """Return the public catalog."""

    @property
    def user_ids(self) -> Sequence[str] | np.ndarray:
        """Return every user's original identifier, in index order."""

    @property
    def users(self) -> np.ndarray:
        """Return the user index per rating."""

    @property
    def items(self) -> np.ndarray:
        """Return the item index per rating (in the same order as `users`)."""

    def user_id(self, u: int) -> str:
        """Return user `u`'s original identifier."""

    def rows(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (items, ratings) of user `u`, in file order."""
