"""The server's signed log of the instructions it sent and what each device answered.

One JSON line per (instruction, device): run, round, kind (`train`, `evaluate`,
`popularity`, `census`), Flower node id, the public key the device's reply named (`device`:
whose ledger must hold the entry), and the outcome (`accepted`, `rejected`: the device spent its
budget but the update was invalid, `refused`, `failed`). Records are hash-chained and signed with
the server's key like a ledger's entries (`shared.privacy.signing`), so the verifier can require
an entry for every instruction and an instruction for every entry. Under central DP the training
sample is secret: those instructions are not logged (their releases are the server's own
`dp-fedavg` entries).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shared.privacy.signing import SigningKey, chained, digest, record_line

Kind = Literal["train", "evaluate", "popularity", "census"]
Outcome = Literal["accepted", "rejected", "refused", "failed"]
SPENT: tuple[Outcome, ...] = ("accepted", "rejected")
"""Outcomes after which the device's ledger holds the instruction's entry."""


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """One instruction to one device and its outcome."""

    run_id: str
    round: int
    kind: Kind
    node: int
    device: str
    """The public key the device's reply named ("" when it failed)."""
    outcome: Outcome
    prev: str = ""
    key: str = ""
    """The server's public key that signed the record."""
    signature: str = ""


class InstructionLog:
    """Append-only, hash-chained, signed JSON lines (`ledgers/instructions.jsonl`)."""

    def __init__(self, path: Path, signer: SigningKey) -> None:
        self.path = path
        self.signer = signer
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()  # an empty log says "no instruction was logged", a missing one that there is no log
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        self._last = digest(lines[-1]) if lines else ""
        self._pending: list[str] | None = None

    def append(self, *, run_id: str, server_round: int, kind: Kind, node: int, device: str, outcome: Outcome) -> None:
        """Record one instruction's outcome, durably (within `batch`, when the batch ends)."""
        record = Instruction(run_id=run_id, round=server_round, kind=kind, node=node, device=device, outcome=outcome)
        line = record_line(chained(record, prev=self._last, signer=self.signer))
        self._last = digest(line)
        if self._pending is not None:
            self._pending.append(line)
        else:
            self._write([line])

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Within, appended records are written together with one fsync on leaving (also on an error):
        a round's hundreds of outcomes cost one disk flush, not one each. Nested batches join the outer."""
        if self._pending is not None:
            yield
            return
        self._pending = []
        try:
            yield
        finally:
            lines, self._pending = self._pending, None
            if lines:
                self._write(lines)

    def _write(self, lines: list[str]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines))
            fh.flush()
            os.fsync(fh.fileno())


def read_instructions(path: Path) -> list[Instruction]:
    """Read an instruction log; a malformed line is a `ValueError` naming it."""
    out = []
    for n, line in enumerate((ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()), 1):
        try:
            out.append(Instruction(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{path}, line {n}: invalid instruction record: {exc}") from None
    return out
