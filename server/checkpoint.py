"""Per-round server checkpoints: weights, round, server-optimizer and sampling state."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Checkpoint:
    round: int
    weights: dict
    optimizer: dict
    rng_state: dict
    client_epsilon: dict[int, float]
    run_id: str


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write atomically (temp file + rename), so a crash never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt.__dict__, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> Checkpoint:
    return Checkpoint(**torch.load(path, weights_only=False))
