"""The memory-mapped per-user store: the same rows, splits and partitions as the data set in
memory, built once per data set, rebuilt when its source changes, shared between processes."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest

from shared.config import DataConfig
from shared.data.csv_writer import write_catalog_csv, write_ratings_csv
from shared.data.source import clear_caches, load_source
from shared.data.split import split_users
from shared.data.synthetic import make_synthetic
from shared.data.topology import OnePerClient, device_partition, hub_partition
from shared.data.user_store import UserStore, open_store, store_dir


def _shuffled_csv(tmp_path: Path) -> DataConfig:
    """A CSV whose users' rows are interleaved in file order (not grouped by user)."""
    data, _ = make_synthetic(n_users=30, n_items=40, n_categories=3, subs_per_category=2, seed=5)
    order = np.random.default_rng(0).permutation(data.n_ratings)
    shuffled = type(data)(
        name=data.name,
        users=data.users[order],
        items=data.items[order],
        ratings=data.ratings[order],
        user_ids=data.user_ids,
        catalog=data.catalog,
        report=data.report,
    )
    ratings = write_ratings_csv(shuffled, tmp_path / "ratings.csv")
    catalog = write_catalog_csv(data.catalog, tmp_path / "catalog.csv")
    return DataConfig(source=str(ratings), catalog=str(catalog), cache_dir=str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _fresh_caches() -> None:
    clear_caches()


def test_store_rows_splits_and_partitions_equal_the_data_in_memory(tmp_path: Path) -> None:
    cfg = _shuffled_csv(tmp_path)
    data, store = load_source(cfg, 0), open_store(cfg, 0)
    assert (store.n_users, store.n_items, store.n_ratings) == (data.n_users, data.n_items, data.n_ratings)
    assert store.catalog == data.catalog and [store.user_id(u) for u in range(data.n_users)] == list(data.user_ids)
    for u in range(data.n_users):
        (si, sr), (di, dr) = store.rows(u), data.rows(u)
        assert np.array_equal(si, di) and np.array_equal(sr, dr) and si.dtype == np.int64, u  # file order kept
    for holdout in ("test", "validation"):
        a, b = split_users(store, seed=3, holdout=holdout), split_users(data, seed=3, holdout=holdout)
        for x, y in zip(a, b, strict=True):
            assert x.user == y.user
            assert np.array_equal(x.train_items, y.train_items) and np.array_equal(x.test_items, y.test_items)
            assert np.array_equal(x.train_ratings, y.train_ratings)
    for assignment in ("iid", "dirichlet"):
        p = hub_partition(store, 4, assignment=assignment, alpha=0.3, seed=1)
        q = hub_partition(data, 4, assignment=assignment, alpha=0.3, seed=1)
        assert [a.tolist() for a in p] == [b.tolist() for b in q]


def test_store_is_memory_mapped_read_only_and_built_once(tmp_path: Path) -> None:
    cfg = _shuffled_csv(tmp_path)
    store = open_store(cfg, 0)
    for a in (store.indptr, store.items, store.ratings, store.user_ids):
        assert isinstance(a, np.memmap) and not a.flags.writeable
    meta = store.path / "meta.json"
    built = meta.stat().st_mtime_ns
    clear_caches()
    again = open_store(cfg, 0)
    assert again.path == store.path and meta.stat().st_mtime_ns == built  # opened, not rebuilt
    assert sorted(p.name for p in store.path.parent.iterdir()) == sorted([store.path.name, store.path.name + ".lock"])


def test_a_changed_source_gets_a_new_store_and_a_partial_one_is_rebuilt(tmp_path: Path) -> None:
    cfg = _shuffled_csv(tmp_path)
    first = open_store(cfg, 0)
    ratings = Path(cfg.source)
    lines = ratings.read_text().splitlines()
    time.sleep(0.01)
    ratings.write_text("\n".join(lines[:-5]) + "\n")  # five ratings fewer
    clear_caches()
    second = open_store(cfg, 0)
    assert second.path != first.path and second.n_ratings == first.n_ratings - 5
    (second.path / "meta.json").unlink()  # as if the builder died before finishing
    clear_caches()
    third = open_store(cfg, 0)
    assert third.path == second.path and third.n_ratings == second.n_ratings


def test_synthetic_store_key_follows_the_generator_and_seed(tmp_path: Path) -> None:
    base = DataConfig(source="synthetic", synthetic_users=20, synthetic_items=24, cache_dir=str(tmp_path))
    other = DataConfig(source="synthetic", synthetic_users=21, synthetic_items=24, cache_dir=str(tmp_path))
    longer = DataConfig(
        source="synthetic",
        synthetic_users=20,
        synthetic_items=24,
        synthetic_ratings_per_user=12,
        cache_dir=str(tmp_path),
    )
    assert len({store_dir(base, 0), store_dir(base, 1), store_dir(other, 0), store_dir(longer, 0)}) == 4
    assert open_store(longer, 0).n_ratings < open_store(base, 0).n_ratings  # 12 ratings per user on average, not 30
    store, data = open_store(base, 0), load_source(base, 0)
    assert store.n_users == 20 and all(np.array_equal(store.rows(u)[0], data.rows(u)[0]) for u in range(20))


def test_a_store_of_another_format_or_edited_is_refused(tmp_path: Path) -> None:
    cfg = _shuffled_csv(tmp_path)
    store = open_store(cfg, 0)
    meta = store.path / "meta.json"
    text = meta.read_text()
    meta.write_text(text.replace('"format": 1', '"format": 99'))
    with pytest.raises(ValueError, match="format 99"):
        UserStore.open(store.path)
    meta.write_text(text.replace(f'"n_ratings": {store.n_ratings}', '"n_ratings": 1'))
    with pytest.raises(ValueError, match="does not match its meta.json"):
        UserStore.open(store.path)


def _open_in_child(cfg: DataConfig, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = open_store(cfg, 0)
    out.put((os.getpid(), str(store.path), store.n_ratings))


def test_processes_building_at_once_share_one_store(tmp_path: Path) -> None:
    cfg = _shuffled_csv(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_open_in_child, args=(cfg, out)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len({(path, n) for _, path, n in results}) == 1
    parent = Path(results[0][1]).parent
    assert not [p for p in parent.iterdir() if ".tmp-" in p.name]  # no builder's leftovers


def test_device_partition_is_a_lazy_sequence() -> None:
    parts = device_partition(1_000_000)
    assert isinstance(parts, OnePerClient) and len(parts) == 1_000_000
    assert parts[7].tolist() == [7] and parts[-1].tolist() == [999_999]
    assert [p.tolist() for p in parts[2:4]] == [[2], [3]]
    with pytest.raises(IndexError):
        parts[1_000_000]
