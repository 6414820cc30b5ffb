"""The server's instruction log: a batch is one write and one fsync, and the chain stays whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.instruction_log import InstructionLog, read_instructions
from shared.privacy.signing import SigningKey, chain_problems


def _append(log: InstructionLog, node: int) -> None:
    log.append(run_id="r", server_round=1, kind="train", node=node, device=f"key-{node}", outcome="accepted")


def test_a_batch_is_written_on_leaving_and_chains_with_single_records(tmp_path: Path) -> None:
    key = SigningKey.load_or_create(tmp_path / "server.key")
    path = tmp_path / "instructions.jsonl"
    log = InstructionLog(path, key)
    _append(log, 0)  # a single record: written at once
    assert len(read_instructions(path)) == 1
    with log.batch():
        for node in (1, 2, 3):
            _append(log, node)
        with log.batch():  # a nested batch joins the outer one
            _append(log, 4)
        assert len(read_instructions(path)) == 1  # nothing of the batch yet
    with pytest.raises(RuntimeError), log.batch():  # an error inside still writes what was appended
        _append(log, 5)
        raise RuntimeError("round failed")
    _append(log, 6)
    records = read_instructions(path)
    assert [r.node for r in records] == [0, 1, 2, 3, 4, 5, 6]
    assert chain_problems(records, str(path), key.public_hex(), noun="record", holder="the server") == []
    # A log reopened continues the chain from its last line.
    _append(InstructionLog(path, key), 7)
    records = read_instructions(path)
    assert chain_problems(records, str(path), key.public_hex(), noun="record", holder="the server") == []
    assert len(records) == 8
