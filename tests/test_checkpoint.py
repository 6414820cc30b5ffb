"""The background checkpoint writer: what it writes is the round's state, and failures surface."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server.checkpoint import Checkpoint, CheckpointWriter, load_checkpoint


def _checkpoint(rnd: int, moment: torch.Tensor) -> Checkpoint:
    weights = {"w": torch.full((4,), float(rnd))}
    return Checkpoint(round=rnd, weights=weights, strategy={"optimizer": {"m": {"w": moment}}}, run_id="r")


def test_the_writer_saves_the_state_at_save_time_and_the_last_round_on_leaving(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "latest.pt"
    moment = torch.zeros(4)
    with CheckpointWriter() as writer:
        writer.save(path, _checkpoint(1, moment))
        moment.add_(5.0)  # the strategy updates its moments in place during the next round
        writer.wait()
        saved = load_checkpoint(path)
        assert saved.round == 1 and torch.equal(saved.strategy["optimizer"]["m"]["w"], torch.zeros(4))
        writer.save(path, _checkpoint(2, moment))
    saved = load_checkpoint(path)  # leaving the block waited for the last write
    assert saved.round == 2 and torch.equal(saved.weights["w"], torch.full((4,), 2.0))
    assert torch.equal(saved.strategy["optimizer"]["m"]["w"], torch.full((4,), 5.0))
    assert not list(path.parent.glob("*.tmp"))


def test_a_failed_write_is_raised_by_the_next_save_and_on_leaving(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the checkpoint directory should be")
    writer = CheckpointWriter()
    writer.save(blocker / "latest.pt", _checkpoint(1, torch.zeros(2)))
    with pytest.raises(OSError):
        writer.save(tmp_path / "ok.pt", _checkpoint(2, torch.zeros(2)))
    with pytest.raises(OSError), CheckpointWriter() as failing:
        failing.save(blocker / "latest.pt", _checkpoint(1, torch.zeros(2)))
    # an error inside the block is the one that propagates; the write is still finished first
    with pytest.raises(KeyError), CheckpointWriter() as both:
        both.save(tmp_path / "fine.pt", _checkpoint(3, torch.zeros(2)))
        raise KeyError("the round failed")
    assert load_checkpoint(tmp_path / "fine.pt").round == 3
