"""The server's signed log of the instructions it sent and what each device answered.

One JSON line per (instruction, device): run, round, kind (`train`, `evaluate`,
`popularity`, `census`), Flower node id, the public key the device's reply named (whose
ledger must hold the entry), and the outcome (`accepted`, `rejected`: the device spent its
budget but the update was invalid, `refused`, `failed`). Lines are hash-chained and signed with
the server's key like a ledger, so the verifier can require an entry for every instruction
and an instruction for every entry. Under central DP the training sample is secret: those
instructions are not logged (their releases are the server's own `dp-fedavg` entries).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from shared.privacy.signing import SigningKey, digest, verify_signature

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
    key: str
    outcome: Outcome
    prev: str = ""
    signer: str = ""
    signature: str = ""

    def to_json(self) -> str:
        """Return the record as one JSON line (sorted keys)."""
        return json.dumps(asdict(self), sort_keys=True)

    def payload(self) -> bytes:
        """Return what the signature covers: every field but the signature."""
        fields_ = asdict(self)
        del fields_["signature"]
        return json.dumps(fields_, sort_keys=True).encode("utf-8")


class InstructionLog:
    """Append-only, hash-chained, signed JSON lines (`ledgers/instructions.jsonl`)."""

    def __init__(self, path: Path, signer: SigningKey) -> None:
        self.path = path
        self.signer = signer
        self._last = ""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()  # an empty log says "no instruction was logged", a missing one that there is no log
        if path.exists():
            lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            self._last = digest(lines[-1]) if lines else ""

    def append(self, *, run_id: str, server_round: int, kind: Kind, node: int, key: str, outcome: Outcome) -> None:
        """Record one instruction's outcome, durably."""
        record = Instruction(
            run_id=run_id, round=server_round, kind=kind, node=node, key=key, outcome=outcome, prev=self._last,
            signer=self.signer.public_hex(),
        )
        record = replace(record, signature=self.signer.sign(record.payload()))
        line = record.to_json()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._last = digest(line)


def read_instructions(path: Path) -> list[Instruction]:
    """Read an instruction log; a malformed line is a `ValueError` naming it."""
    out = []
    for n, line in enumerate((ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()), 1):
        try:
            out.append(Instruction(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{path}, line {n}: invalid instruction record: {exc}") from None
    return out


def log_problems(records: list[Instruction], where: str, key: str | None) -> list[str]:
    """Name every record whose chain link or signature (by the server's pinned `key`) does not hold."""
    out = [f"{where}: no pinned public key for the server"] if records and key is None else []
    prev = ""
    for n, r in enumerate(records, 1):
        at = f"{where}, record {n}"
        if r.prev != prev:
            out.append(f"{at}: chain broken")
        if key is not None and r.signer != key:
            out.append(f"{at}: signed by key {r.signer[:12]}…, not the server's pinned key")
        elif not verify_signature(r.signer, r.payload(), r.signature):
            out.append(f"{at}: signature does not verify")
        prev = digest(r.to_json())
    return out
