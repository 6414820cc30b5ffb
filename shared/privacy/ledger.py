"""The privacy ledger: an append-only, hash-chained list of immutable, signed mechanism entries.

A client writes one entry per DP release (e.g. a round of local DP-SGD); the server
writes one per round of central DP-FedAvg into its own ledger. The ledger
lives in Flower's `context.state` during a run and in a JSON-lines file on the device,
so ε composes across rounds and runs; an auditor replays it with any accountant.

Each appended entry carries `prev`, the SHA-256 of the previous entry's line, and the holder's
Ed25519 `signature` over its other fields with the public `key` (`signing.py`):
`signing.chain_problems` names every entry that was changed, removed, reordered, copied in or
signed by another key.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from .signing import SigningKey, chained, digest, record_line

if TYPE_CHECKING:  # imported on use (`dp_event`): a process that composes no ε never loads it
    import dp_accounting

Mechanism = Literal["dp-sgd", "dp-fedavg", "gaussian-sum"]
MECHANISMS: tuple[Mechanism, ...] = get_args(Mechanism)
"""`dp-sgd`: a client's local DP-SGD (or the central reference's); `dp-fedavg`: the
server's user-level DP-FedAvg round (McMahan et al. 2018), one step per round;
`gaussian-sum`: one Gaussian release of a sum of per-user vectors each bounded in L2 norm
(the popularity prior, the interest census), sample rate 1 and one step."""
SERVER = "server"
"""The `client` field of the server's ledger entries."""


class LedgerError(ValueError):
    """A ledger file or entry is malformed."""


@dataclass(frozen=True, kw_only=True)
class LedgerEntry:
    """One DP mechanism: `steps` compositions of the Poisson-subsampled Gaussian mechanism.

    `dp-sgd`: each step releases (Σ clipped per-user gradients + N(0, σ²C²)) over a batch
    drawn by including every user independently with probability `sample_rate`.
    `dp-fedavg`: one step per round releases (Σ per-user model updates clipped to
    S = `max_grad_norm` + N(0, z²S²)) over the users the server sampled with probability
    `sample_rate`; `noise_multiplier` is z and `client` is "server".
    `gaussian-sum`: releases (Σ per-user vectors each clipped to L2 norm `max_grad_norm`
    + N(0, z²·max_grad_norm²)) once, q = 1, steps = 1. The same event: its
    privacy loss depends only on (noise_multiplier, sample_rate, steps); the rest is provenance.
    Build entries with the named constructors, so σ, q and steps are never swapped.
    """

    mechanism: Mechanism
    noise_multiplier: float
    sample_rate: float
    steps: int
    run_id: str
    round: int
    client: str
    max_grad_norm: float = 0.0
    prev: str = ""
    """SHA-256 of the previous entry's line in its ledger ("" for the first)."""
    key: str = ""
    """The holder's public key (hex) that signed the entry ("" when unsigned)."""
    signature: str = ""
    """Ed25519 signature (hex) of `payload()`."""

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise LedgerError(f"Unknown mechanism {self.mechanism!r}; known: {', '.join(MECHANISMS)}.")
        if not self.noise_multiplier > 0:
            raise LedgerError(f"A {self.mechanism} entry needs a positive noise multiplier.")
        if not 0 < self.sample_rate <= 1:
            raise LedgerError(f"sample_rate must be in (0, 1], got {self.sample_rate}.")
        if self.steps < 0:
            raise LedgerError("steps must be >= 0.")
        if self.mechanism == "gaussian-sum" and (self.sample_rate != 1.0 or self.steps != 1):
            raise LedgerError("a gaussian-sum release has sample_rate 1 and exactly one step.")

    @classmethod
    def dp_sgd(
        cls, *, noise_multiplier: float, sample_rate: float, steps: int, max_grad_norm: float,
        run_id: str, round: int, client: str,
    ) -> LedgerEntry:
        """Build the entry of `steps` DP-SGD steps of a client (or of the central reference)."""
        return cls(
            mechanism="dp-sgd", noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps,
            run_id=run_id, round=round, client=client, max_grad_norm=max_grad_norm,
        )

    @classmethod
    def dp_fedavg(
        cls, *, noise_multiplier: float, sample_rate: float, clip: float, run_id: str, round: int
    ) -> LedgerEntry:
        """Build the entry of one round of the server's DP-FedAvg."""
        return cls(
            mechanism="dp-fedavg", noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=1,
            run_id=run_id, round=round, client=SERVER, max_grad_norm=clip,
        )

    @classmethod
    def gaussian_sum(
        cls, *, noise_multiplier: float, bound: float, run_id: str, round: int, holder: str
    ) -> LedgerEntry:
        """Build the entry of one Gaussian release of a sum of per-user vectors of L2 norm at most `bound`."""
        return cls(
            mechanism="gaussian-sum", noise_multiplier=noise_multiplier, sample_rate=1.0, steps=1,
            run_id=run_id, round=round, client=holder, max_grad_norm=bound,
        )

    def dp_event(self) -> dp_accounting.DpEvent:
        """Return the entry as a dp-accounting event: `steps` Poisson-subsampled Gaussian steps."""
        import dp_accounting

        step = dp_accounting.PoissonSampledDpEvent(
            self.sample_rate, dp_accounting.GaussianDpEvent(self.noise_multiplier)
        )
        return dp_accounting.SelfComposedDpEvent(step, self.steps)

    def to_json(self) -> str:
        """Return the entry as one JSON line (sorted keys)."""
        return record_line(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LedgerEntry:
        """Build an entry from its JSON form; unknown fields are a `LedgerError`."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise LedgerError(f"unknown fields {sorted(unknown)}")
        return cls(**d)


class Ledger:
    """An append-only, hash-chained sequence of entries, optionally mirrored to a JSON-lines file
    and signed by its holder's key."""

    def __init__(
        self, entries: list[LedgerEntry] | None = None, path: Path | None = None, signer: SigningKey | None = None
    ) -> None:
        self._entries = list(entries or [])
        self.path = path
        self.signer = signer

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """Return the entries recorded so far, oldest first."""
        return tuple(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, entry: LedgerEntry) -> LedgerEntry:
        """Record an entry chained after the last one and signed (persisted durably before returning,
        when file-backed); return it as recorded."""
        prev = digest(self._entries[-1].to_json()) if self._entries else ""
        entry = chained(entry, prev=prev, signer=self.signer)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(entry.to_json() + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        self._entries.append(entry)
        return entry

    @classmethod
    def open(cls, path: Path, signer: SigningKey | None = None) -> Ledger:
        """Load a ledger file (or start an empty one there); new entries are signed by `signer`."""
        return cls(read_entries(path) if path.exists() else [], path, signer)

    def to_lines(self) -> list[str]:
        """Return the entries as JSON lines (for Flower's `context.state`)."""
        return [e.to_json() for e in self._entries]

    @classmethod
    def from_lines(cls, lines: list[str], path: Path | None = None, signer: SigningKey | None = None) -> Ledger:
        """Parse JSON lines into a ledger (file-backed at `path` when given)."""
        return cls([_parse(line, str(path or "<state>"), n) for n, line in enumerate(lines, 1)], path, signer)


def _parse(line: str, where: str, lineno: int) -> LedgerEntry:
    try:
        return LedgerEntry.from_dict(json.loads(line))
    except (json.JSONDecodeError, TypeError, LedgerError) as exc:
        raise LedgerError(f"{where}, line {lineno}: invalid ledger entry: {exc}") from None


def read_entries(path: Path) -> list[LedgerEntry]:
    """Read the entries of a ledger file, skipping blank lines."""
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [_parse(line, str(path), n) for n, line in enumerate(lines, 1)]
