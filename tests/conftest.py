"""Shared fixtures: tiny synthetic data and configs that train in well under a second.

Configs are built from the typed sections of `shared.config` (`make_config`); a test that
changes one key of a fixture's config uses `config.replace({"section.key": value})`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the CLI does (simulation/cli.py)

import dataclasses  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from shared.config import (  # noqa: E402
    DataConfig,
    FederationConfig,
    ModelConfig,
    PrivacyConfig,
    RunConfig,
    StrataConfig,
    TrainConfig,
    from_flat,
)
from shared.run_dir import RunDir  # noqa: E402

_SECTIONS: dict[str, type] = {
    "run": RunConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "privacy": PrivacyConfig,
    "federation": FederationConfig,
}


def make_config(*, out: str | Path | None = None, **sections: Mapping[str, Any] | object) -> StrataConfig:
    """A `StrataConfig` from its typed sections, e.g.
    `make_config(out=tmp_path / "run", data={"synthetic_users": 40}, privacy=PrivacyConfig(mode="local"))`.

    Each section is given as its dataclass (`DataConfig(...)`) or as a mapping of that
    dataclass's field names (`{"synthetic_users": 40}`); missing sections and fields take
    the defaults. `out` is `run.out`. The result passes through the same checks as a
    config read from TOML (unknown fields and values outside a `Literal` are errors).
    """
    unknown = set(sections) - set(_SECTIONS)
    if unknown:
        raise TypeError(f"unknown config section(s) {sorted(unknown)}; sections: {', '.join(_SECTIONS)}")
    built: dict[str, object] = {}
    for name, value in sections.items():
        cls = _SECTIONS[name]
        if dataclasses.is_dataclass(value):
            if not isinstance(value, cls):
                raise TypeError(f"section {name!r} must be a {cls.__name__}, not {type(value).__name__}")
            built[name] = value
        else:
            assert isinstance(value, Mapping), f"section {name!r}: a {cls.__name__} or a mapping of its fields"
            built[name] = cls(**value)
    if out is not None:
        built["run"] = dataclasses.replace(built.get("run", RunConfig()), out=str(out))  # type: ignore[type-var]
    config = StrataConfig(**built)  # type: ignore[arg-type]
    return from_flat(config.to_flat())  # the checks (types, Literal values) of a TOML config


TINY_DATA: dict[str, Any] = {
    "source": "synthetic",
    "synthetic_users": 40,
    "synthetic_items": 48,
    "synthetic_categories": 3,
    "synthetic_subs_per_category": 2,
}
TINY_MODEL: dict[str, Any] = {"hidden_dim": 16, "latent_dim": 8, "rating_dim": 4, "anneal_steps": 5}


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def tiny_config(tmp_path: Path) -> StrataConfig:
    """40 users in 4 hubs, 48 items, a 16-8 VAE, 2 rounds; privacy off."""
    return make_config(
        out=tmp_path / "run",
        data=TINY_DATA,
        model=TINY_MODEL,
        train={"batch_size": 8},
        privacy={"population": 40},
        federation={"topology": "hub", "num_hubs": 4, "rounds": 2},
    )


def trained_run_config(out: str | Path) -> StrataConfig:
    """The config of `trained_run`: 200 users on planted synthetic data (3 categories × 2
    sub-interests, 60 items), a 16-8 VAE trained centrally for 12 epochs; privacy off."""
    return make_config(
        out=out,
        data={**TINY_DATA, "synthetic_users": 200, "synthetic_items": 60},
        model=TINY_MODEL,
        train={"epochs": 12, "batch_size": 20, "lr": 0.01},
    )


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """One tiny central run for the whole session (read-only for its users: a test that
    writes into it removes what it wrote). No `taxonomy.json` until a test asks for one."""
    from simulation.central import run_central

    config = trained_run_config(tmp_path_factory.mktemp("trained") / "run")
    run_central(config, eval_every=2)
    return RunDir.of(config.run_dir)


def set_task_identity() -> None:
    """Messages built outside a Flower run need the identity a SuperLink/SuperNode would set."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 1)):
        if getattr(TaskIdentity, name, None) is None:
            setattr(TaskIdentity, name, value)


@pytest.fixture(autouse=True)
def _flower_task_identity() -> None:
    set_task_identity()
