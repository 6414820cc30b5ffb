"""Resolve `data.source` of a config to a loaded data set (cached per process)."""

from __future__ import annotations

import hashlib
import json
import logging
from functools import lru_cache
from pathlib import Path

from ..config import DataConfig
from .csv_loader import load_catalog_csv, load_csv
from .fetch import fetch_ml100k
from .movielens import load_ml100k, load_movielens, load_movielens_catalog
from .synthetic import make_synthetic
from .types import Catalog, RatingsData
from .user_store import open_store

log = logging.getLogger(__name__)


DEVICES = "devices"
"""`data.source` of a deployed server: the ratings live on the devices; the server has `data.catalog`."""


@lru_cache(maxsize=4)
def load_catalog(data: DataConfig, seed: int) -> Catalog:
    """Load the public catalog the config names without reading a rating: all a server may read.

    `data.catalog` (a catalog CSV) when set; else the item file of `ml-100k` or a MovieLens
    directory; else the synthetic generator's catalog (public, from the seed).
    """
    if data.catalog:
        return load_catalog_csv(Path(data.catalog).expanduser())
    if data.source == "ml-100k":
        return load_movielens_catalog(fetch_ml100k(Path(data.cache_dir).expanduser()))
    if data.source == "synthetic":
        return open_store(data, seed).catalog  # the public generator: no one's data
    path = Path(data.source).expanduser()
    if path.is_dir():
        return load_movielens_catalog(path)
    raise ValueError(
        f"data.source={data.source!r} has no public catalog: set data.catalog to the catalog CSV "
        "(item,title,categories,year). The server never derives the item index from ratings."
    )


@lru_cache(maxsize=4)
def load_source(data: DataConfig, seed: int) -> RatingsData:
    """Load the data set named by `data.source` (`ml-100k`, `synthetic`, a directory or a CSV)."""
    if data.source == DEVICES:
        raise ValueError(
            "data.source = 'devices': the ratings live on the devices (each SuperNode's data-path); "
            "only the catalog (data.catalog) is readable here."
        )
    if data.source == "ml-100k":
        return load_ml100k(fetch_ml100k(Path(data.cache_dir).expanduser()))
    if data.source == "synthetic":
        ratings, _ = make_synthetic(
            n_users=data.synthetic_users,
            n_items=data.synthetic_items,
            n_categories=data.synthetic_categories,
            subs_per_category=data.synthetic_subs_per_category,
            mean_profile_len=data.synthetic_ratings_per_user,
            seed=seed,
        )
        return ratings
    path = Path(data.source).expanduser()
    if path.is_dir():
        return load_movielens(path)
    if path.is_file():
        loaded = load_csv(path, Path(data.catalog) if data.catalog else None)
        if loaded.report.skipped:
            log.warning("%s", loaded.report.summary())
        return loaded
    raise FileNotFoundError(
        f"data.source={data.source!r} is neither 'ml-100k', 'synthetic', a MovieLens directory nor a CSV file."
    )


def clear_caches() -> None:
    """Forget every data set this process loaded or mapped (a path now holds other data)."""
    load_source.cache_clear()
    load_catalog.cache_clear()
    open_store.cache_clear()


def catalog_fingerprint(catalog: Catalog) -> str:
    """SHA-256 of the canonical catalog: (item id, title, categories, year) per item, in index order.

    Only public item metadata goes in, never a rating. No published artefact holds a hash of
    the ratings: anyone who knew the other users' data could test a user's membership by
    hashing D and D − u.
    """
    rows = [
        [item_id, title, list(categories), year]
        for item_id, title, categories, year in zip(
            catalog.item_ids, catalog.titles, catalog.categories, catalog.years, strict=True
        )
    ]
    canonical = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
