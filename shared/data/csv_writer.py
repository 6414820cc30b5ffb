"""Write ratings and catalogs in the CSV layout `load_csv` reads (user,item,rating; item,title,categories,year)."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .types import Catalog, RatingsData


def write_catalog_csv(catalog: Catalog, path: Path) -> Path:
    """Write `catalog` as item,title,categories (|-separated),year; return `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["item", "title", "categories", "year"])
        for item, title, cats, year in zip(
            catalog.item_ids, catalog.titles, catalog.categories, catalog.years, strict=True
        ):
            w.writerow([item, title, "|".join(cats), "" if year is None else year])
    return path


def write_ratings_csv(data: RatingsData, path: Path, users: Iterable[int] | None = None) -> Path:
    """Write the ratings of `users` (all by default) as user,item,rating[,timestamp]; return `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = np.arange(data.n_ratings) if users is None else np.flatnonzero(np.isin(data.users, list(users)))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        stamps = data.timestamps
        w.writerow(["user", "item", "rating", *(["timestamp"] if stamps is not None else [])])
        for r in rows:
            row = [data.user_ids[data.users[r]], data.catalog.item_ids[data.items[r]], f"{float(data.ratings[r]):g}"]
            w.writerow(row + ([int(stamps[r])] if stamps is not None else []))
    return path
