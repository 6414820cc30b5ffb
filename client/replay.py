"""A device answers a repeated instruction with its first answer, so a resumed server cannot make it spend twice.

When a ServerApp or SuperLink is killed mid-round and the run is resumed from its checkpoint,
the new run asks again for the round that was in flight. A device that already answered the same
(Strata run id, round, instruction) sends back exactly the reply it sent then: the same mechanism
output, no training, no new ledger entry. The device keeps its last reply per kind of instruction
next to its ledger (`replies/`), on real devices only (a node config with `ledger-dir`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from flwr.app import RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

log = logging.getLogger(__name__)

REPLIES_DIR = "replies"


@dataclass(frozen=True)
class ReplyCache:
    """The last reply of one device to one kind of instruction (`train`, `evaluate`, `release-<kind>`)."""

    path: Path

    @classmethod
    def beside(cls, ledger_path: Path, kind: str) -> ReplyCache:
        """Return the cache of `kind` next to the ledger at `ledger_path`."""
        return cls(ledger_path.parent / REPLIES_DIR / f"{ledger_path.stem}-{kind}.bin")

    def _header(self, run_id: str, server_round: int) -> bytes:
        return f"{run_id}\x1f{server_round}\n".encode()

    def get(self, run_id: str, server_round: int) -> RecordDict | None:
        """Return the reply sent to this (run, round), if this device sent one."""
        if not self.path.is_file():
            return None
        data = self.path.read_bytes()
        header = self._header(run_id, server_round)
        if not data.startswith(header):
            return None
        proto = ProtoRecordDict()
        proto.ParseFromString(data[len(header) :])
        log.warning(
            "%s: round %d of run %s was already answered: sending the same reply again (no new training, "
            "no new privacy spending)",
            self.path.stem,
            server_round,
            run_id,
        )
        return recorddict_from_proto(proto)

    def put(self, run_id: str, server_round: int, content: RecordDict) -> None:
        """Keep `content` as the reply to (run, round), replacing the previous one atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(self._header(run_id, server_round) + recorddict_to_proto(content).SerializeToString())
        os.replace(tmp, self.path)
