"""Per-round server checkpoints: the round, the global weights and the strategy's state."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """What resuming after `round` needs."""

    round: int
    weights: dict[str, torch.Tensor]
    strategy: dict[str, Any]
    """The strategy's `state_dict()` (server optimizer, sampling generator, clients' ε)."""
    run_id: str


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write atomically (temp file + rename), so a crash never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({f.name: getattr(ckpt, f.name) for f in fields(ckpt)}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`."""
    state = torch.load(path, weights_only=False)
    if set(state) != {"round", "weights", "strategy", "run_id"}:
        raise ValueError(f"{path} is not a checkpoint of this Strata version: start the run in a new --out.")
    return Checkpoint(**state)
