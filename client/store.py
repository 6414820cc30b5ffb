"""The device-resident data store: the users a client holds and their on-device split.

In simulation a client takes its partition of the configured data set (by Flower's
`partition-id`), reading only its users' rows from the data set's memory-mapped per-user
store (`shared/data/user_store.py`, built once per data set); in deployment it reads its own
ratings from `data-path` in the node config (generic CSV, with the public catalog at
`catalog-path`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from shared.config import StrataConfig
from shared.data.csv_loader import load_csv
from shared.data.split import UserRatings, split_configured
from shared.data.topology import partition_users
from shared.data.user_store import UserStore, open_store
from shared.features import model_features
from shared.run_dir import JsonDict


@dataclass(frozen=True)
class DeviceStore:
    """Everything a client trains and evaluates on; never leaves the device."""

    client_id: str
    users: list[UserRatings]
    n_items: int
    features: torch.Tensor

    @property
    def n_users(self) -> int:
        """Users this device holds."""
        return len(self.users)

    @property
    def n_train_ratings(self) -> int:
        """Train ratings over all of the device's users."""
        return int(sum(len(u.train_items) for u in self.users))


@lru_cache(maxsize=2)
def _partitions(config: StrataConfig) -> tuple[UserStore, Sequence[np.ndarray], torch.Tensor]:
    data = open_store(config.data, config.run.seed)
    fed = config.federation
    parts = partition_users(
        data,
        fed.topology,
        num_hubs=fed.num_hubs,
        assignment=fed.hub_assignment,
        alpha=fed.dirichlet_alpha,
        seed=config.run.seed,
    )
    return data, parts, model_features(data.catalog, config)


def num_clients(config: StrataConfig) -> int:
    """How many clients the configured topology has."""
    return len(_partitions(config)[1])


@lru_cache(maxsize=8192)
def simulation_store(config: StrataConfig, partition_id: int) -> DeviceStore:
    """Return the store of virtual client `partition_id`."""
    data, parts, feats = _partitions(config)
    if not 0 <= partition_id < len(parts):
        raise ValueError(
            f"partition-id {partition_id} is out of range: the {config.federation.topology} topology has "
            f"{len(parts)} clients. Run with num-supernodes={len(parts)}."
        )
    users = split_configured(data, config.data, config.run.seed, parts[partition_id])
    return DeviceStore(str(partition_id), users, data.n_items, feats)


def deployed_store(config: StrataConfig, node_config: JsonDict) -> DeviceStore:
    """Return the store of a real device: its own ratings file and the public catalog."""
    if "data-path" not in node_config:
        raise ValueError("node config has no 'data-path': start the SuperNode with --node-config \"data-path='...'\".")
    catalog = node_config.get("catalog-path")
    data = load_csv(Path(str(node_config["data-path"])), Path(str(catalog)) if catalog else None)
    users = split_configured(data, config.data, config.run.seed)
    feats = model_features(data.catalog, config)
    client_id = str(node_config.get("client-id", Path(str(node_config["data-path"])).stem))
    return DeviceStore(client_id, users, data.n_items, feats)


def store_for(config: StrataConfig, node_config: JsonDict) -> DeviceStore:
    """Deployment when the node config names a data path, else the simulation partition."""
    if "data-path" in node_config:
        return deployed_store(config, node_config)
    return simulation_store(config, int(node_config.get("partition-id", 0)))
