"""The client's privacy ledger, kept in Flower's `context.state` and mirrored on disk.

`context.state` lasts one run; the file lasts as long as the device, so ε composes
across rounds *and* runs. On start the two are reconciled: the file is the source of
truth, and the state copy must be a prefix of it (anything else is tampering or loss).
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ConfigRecord, Context

from shared.privacy.ledger import Ledger, LedgerError, read_entries
from shared.privacy.signing import SigningKey

STATE_KEY = "strata-ledger"


def _state_key(path: Path) -> str:
    """One state record per ledger file: a simulated cohort node holds several devices' ledgers."""
    return f"{STATE_KEY}:{path.name}"


def open_ledger(context: Context | None, path: Path, signer: SigningKey | None = None) -> Ledger:
    """Open the client's ledger from disk, checked against the copy in `context.state` (None: no
    copy is kept, see `client.cohort`); new entries are signed by `signer`."""
    on_disk = read_entries(path) if path.exists() else []
    if context is None:
        return Ledger(on_disk, path, signer)
    record = context.state.config_records.get(_state_key(path))
    in_state = [str(x) for x in record["entries"]] if record is not None else []  # type: ignore[union-attr]
    disk_lines = [e.to_json() for e in on_disk]
    if disk_lines[: len(in_state)] != in_state:
        raise LedgerError(
            f"{path}: the ledger on disk does not extend the one in this run's state; "
            "refusing to train on a ledger that lost entries."
        )
    return Ledger(on_disk, path, signer)


def save_to_state(context: Context, ledger: Ledger) -> None:
    """Copy the ledger into this run's `context.state`."""
    if ledger.path is None:
        raise ValueError("only a file-backed ledger is mirrored in the run's state.")
    context.state.config_records[_state_key(ledger.path)] = ConfigRecord({"entries": ledger.to_lines()})
