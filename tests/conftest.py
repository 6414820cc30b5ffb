"""Shared fixtures: tiny synthetic data and configs that train in well under a second."""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the CLI does (simulation/cli.py)

import pytest  # noqa: E402
import torch

from shared.config import StrataConfig, load_config


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def tiny_config(tmp_path) -> StrataConfig:
    return load_config(
        None,
        [
            f'run.out="{tmp_path / "run"}"',
            'data.source="synthetic"',
            "data.synthetic-users=40",
            "data.synthetic-items=48",
            "data.synthetic-categories=3",
            "data.synthetic-subs-per-category=2",
            "model.hidden-dim=16",
            "model.latent-dim=8",
            "model.rating-dim=4",
            "model.anneal-steps=5",
            "train.batch-size=8",
            'federation.topology="hub"',
            "federation.num-hubs=4",
            "federation.rounds=2",
        ],
    )


@pytest.fixture(autouse=True)
def _flower_task_identity() -> None:
    """Messages built outside a Flower run need the identity a SuperLink/SuperNode would set."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 1)):
        if getattr(TaskIdentity, name, None) is None:
            setattr(TaskIdentity, name, value)
