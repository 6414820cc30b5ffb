"""A resumed run cannot make a device spend twice: a repeated instruction gets the first reply.

A real device (node config with `ledger-dir`) under local DP is asked the same four instructions
twice, as a run resumed from its checkpoint would ask again for the round in flight: the second
replies are byte-for-byte the first ones and the ledger has not grown; a new round is trained anew.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import deliver
from flwr.app import Context, Message, RecordDict
from flwr.common.serde import recorddict_to_proto
from test_reply_adjacency import RATINGS, _catalog, _instructions, _write

from client.client_app import build_client_app
from shared.config import StrataConfig
from shared.privacy.ledger import Ledger
from shared.protocol import TrainIns
from shared.run_dir import client_ledger_name


@pytest.fixture
def device_config(tiny_config: StrataConfig) -> StrataConfig:
    return tiny_config.replace(
        {
            "privacy.mode": "local",
            "privacy.population": 100_000,
            "privacy.noise-multiplier": 1.0,
            "federation.topology": "device",
            "federation.rounds": 2,
            "federation.census": True,
            "train.batch-size": 1,
        }
    )


def _bytes(content: RecordDict) -> bytes:
    return bytes(recorddict_to_proto(content).SerializeToString())


def test_a_repeated_instruction_gets_the_same_reply_and_spends_nothing(
    device_config: StrataConfig, tmp_path: Path
) -> None:
    catalog = _catalog(tmp_path)
    data = _write(tmp_path, "device", RATINGS)
    ledger_dir = tmp_path / "ledger"
    app = build_client_app(device_config)

    def ask(content: RecordDict, kind: str) -> RecordDict:
        # A fresh Context each time: a resumed run is a new Flower run on the same device.
        node_config: dict[str, bool | float | int | str] = {
            "data-path": str(data),
            "catalog-path": str(catalog),
            "ledger-dir": str(ledger_dir),
        }
        context = Context(run_id=2, node_id=7, node_config=node_config, state=RecordDict(), run_config={})
        reply = app(deliver(Message(content=content, message_type=kind, dst_node_id=7)), context)
        assert not reply.has_error(), reply.error
        return reply.content

    instructions = _instructions(device_config, catalog)
    first = [ask(content, kind) for _, kind, content in instructions]
    ledger_path = ledger_dir / client_ledger_name(data.stem)
    spent = len(Ledger.open(ledger_path).entries)
    assert spent == 4  # popularity, train, evaluation, census
    again = [ask(content, kind) for _, kind, content in instructions]
    assert [_bytes(a) for a in again] == [_bytes(f) for f in first]
    assert len(Ledger.open(ledger_path).entries) == spent  # nothing trained or released twice

    # The next round is new: trained, and recorded.
    _, kind, content = instructions[1]
    ins = TrainIns.from_record(content)
    round_two = TrainIns(arrays=ins.arrays, server_round=2, run_id=ins.run_id).to_record()
    assert _bytes(ask(round_two, kind)) != _bytes(first[1])
    assert len(Ledger.open(ledger_path).entries) == spent + 1
