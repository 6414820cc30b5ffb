"""A per-user ratings store on disk: built once per data set, memory-mapped by every process.

Simulated devices read only their own rows from it instead of each process loading (or, for the
synthetic generator, generating) and sorting the whole data set: the arrays are mapped read-only,
so the operating system holds one copy for every process on the machine. Layout of
`<data.cache-dir>/stores/<name>-<key>/`:

    indptr.npy    int64, n_users + 1: user u's ratings are rows indptr[u]:indptr[u + 1]
    items.npy     int32 item index per rating (each user's rows in the source's file order)
    ratings.npy   float32 rating per rating
    user_ids.npy  the users' original identifiers, fixed-width unicode, in index order
    catalog.json  the public catalog
    meta.json     name, counts and the key's inputs; written last, so its presence means complete

The key hashes what the data set is made from (the source, the generator's parameters and seed, or
each source file's path, size and modification time): a changed file gets a new store. A user's
rows come out exactly as `RatingsData.rows` gives them, so splits and partitions are unchanged.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from ..config import DataConfig
from .fetch import fetch_ml100k
from .types import Catalog, RatingsData

log = logging.getLogger(__name__)

FORMAT = 1
"""Bumped when the layout changes: an older store is then rebuilt, not misread."""
ARRAYS = ("indptr", "items", "ratings", "user_ids")


@dataclass(frozen=True)
class UserStore:
    """A data set's ratings grouped by user, memory-mapped (read-only) from its store directory."""

    path: Path
    name: str
    indptr: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    user_ids: np.ndarray
    catalog: Catalog

    @classmethod
    def open(cls, path: Path) -> UserStore:
        """Map the store at `path` (built by `build_store`)."""
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is a store of format {meta.get('format')}, not {FORMAT}: delete it to rebuild.")
        arrays = {a: np.load(path / f"{a}.npy", mmap_mode="r") for a in ARRAYS}
        cat = json.loads((path / "catalog.json").read_text())
        catalog = Catalog(
            item_ids=tuple(cat["item_ids"]),
            titles=tuple(cat["titles"]),
            categories=tuple(tuple(c) for c in cat["categories"]),
            years=tuple(cat["years"]),
        )
        store = cls(path=path, name=str(meta["name"]), catalog=catalog, **arrays)
        if (store.n_users, store.n_ratings, store.n_items) != (meta["n_users"], meta["n_ratings"], meta["n_items"]):
            raise ValueError(f"{path} does not match its meta.json (a partial or edited store): delete it to rebuild.")
        return store

    @property
    def n_users(self) -> int:
        """Return the number of users."""
        return len(self.indptr) - 1

    @property
    def n_items(self) -> int:
        """Return the number of items (the catalog's)."""
        return self.catalog.n_items

    @property
    def n_ratings(self) -> int:
        """Return the number of ratings."""
        return len(self.items)

    def user_id(self, u: int) -> str:
        """Return user `u`'s original identifier."""
        return str(self.user_ids[u])

    def rows(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        """(items int64, ratings float32) of user `u`, in the source's file order (copies)."""
        a, b = int(self.indptr[u]), int(self.indptr[u + 1])
        return self.items[a:b].astype(np.int64), np.array(self.ratings[a:b], dtype=np.float32)

    @cached_property
    def users(self) -> np.ndarray:
        """int64 user index per rating (materialised on first use: only the non-IID hub split needs it)."""
        return np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(self.indptr))


def store_inputs(data: DataConfig, seed: int) -> dict[str, object]:
    """Return what the data set of `data` is made from: the store's key hashes exactly this."""
    inputs: dict[str, object] = {"format": FORMAT, "source": data.source}
    if data.source == "synthetic":
        inputs["generator"] = {
            "users": data.synthetic_users,
            "items": data.synthetic_items,
            "categories": data.synthetic_categories,
            "subs_per_category": data.synthetic_subs_per_category,
            "ratings_per_user": data.synthetic_ratings_per_user,
            "seed": seed,
        }
        return inputs
    if data.source == "ml-100k":
        root = fetch_ml100k(Path(data.cache_dir).expanduser())
    else:
        root = Path(data.source).expanduser()
    files = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else [root]
    if data.catalog:
        files.append(Path(data.catalog).expanduser())
    inputs["files"] = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return inputs


def store_dir(data: DataConfig, seed: int) -> Path:
    """Return where the store of `data` (and `seed`, for the generator) lives."""
    inputs = store_inputs(data, seed)
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    stem = "synthetic" if data.source == "synthetic" else Path(str(data.source)).name or "data"
    return Path(data.cache_dir).expanduser() / "stores" / f"{stem}-{key}"


def build_store(data: RatingsData, path: Path, inputs: dict[str, object]) -> None:
    """Write `data` as a store at `path` (into a temporary directory first, renamed when complete)."""
    order, bounds = data.user_rows
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "indptr.npy", bounds.astype(np.int64))
    np.save(tmp / "items.npy", data.items[order].astype(np.int32))
    np.save(tmp / "ratings.npy", data.ratings[order].astype(np.float32))
    np.save(tmp / "user_ids.npy", np.array(data.user_ids, dtype=str))
    c = data.catalog
    catalog = {"item_ids": c.item_ids, "titles": c.titles, "categories": c.categories, "years": c.years}
    (tmp / "catalog.json").write_text(json.dumps(catalog, ensure_ascii=False))
    meta = {"name": data.name, "n_users": data.n_users, "n_items": data.n_items, "n_ratings": data.n_ratings}
    (tmp / "meta.json").write_text(json.dumps({**meta, "format": FORMAT, "inputs": inputs}, indent=1))
    os.replace(tmp, path)


@lru_cache(maxsize=4)
def open_store(data: DataConfig, seed: int) -> UserStore:
    """Open the store of `data`, building it first if no process has (one builder at a time, by a lock)."""
    from .source import load_source  # the store sits above the loaders

    path = store_dir(data, seed)
    if not (path / "meta.json").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
            if not (path / "meta.json").is_file():
                log.info("building the per-user store of %s at %s (once per data set)", data.source, path)
                shutil.rmtree(path, ignore_errors=True)  # an incomplete store (no meta.json)
                # Uncached: the process keeps the mapped store, not a second copy of the data set.
                build_store(load_source.__wrapped__(data, seed), path, store_inputs(data, seed))
    return UserStore.open(path)
