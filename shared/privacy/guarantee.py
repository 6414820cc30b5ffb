"""The composition rule of Strata's user-level guarantee, as plain functions over ledger entries.

DESIGN.md §4: every user holds the ε of everything spent on their data. A user's data feeds
exactly one client (one user per client in `device`, the hub's users in `hub`) and, under
central DP, the server's DP-FedAvg ledger too; so each client ("holder") holds its own ledger
composed with the central one, and the guarantee every user holds is the maximum over the
holders. Without client ledgers the central ledger alone holds every user (a central
reference run, or central DP without local DP). Earlier runs in a ledger count in full; the
current run up to the round asked for.

No file access and nothing from the server: the device and the server both compose with this.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .accounting import epsilon_of
from .ledger import LedgerEntry

CLIENT_HOLDER_PREFIX = "client-"
"""A client holder is named `client-<id>`."""
CENTRAL_HOLDER = "central"
"""The name of the central ledger when it holds every user alone."""
FEDAVG = "dp-fedavg"
"""The mechanism of the server's DP-FedAvg entries."""

Series = list[tuple[int, float]]
"""(round, ε after that round) pairs."""


@dataclass(frozen=True)
class HolderEpsilon:
    """What one holder's users have spent: ε of the whole ledger (PLD and RDP) and its history."""

    epsilon: float
    epsilon_rdp: float
    entries: int
    runs: tuple[str, ...]
    series: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Guarantee:
    """The guarantee every user holds: the largest ε over the holders, and who attains it.

    `held_by` is the first holder attaining the maximum (None without holders, ε then 0);
    `tied` counts the holders whose ε is that maximum (0 without holders).
    """

    epsilon: float
    epsilon_rdp: float
    held_by: str | None
    tied: int
    holders: int


def holders(
    clients: Mapping[str, Sequence[LedgerEntry]], central: Sequence[LedgerEntry]
) -> dict[str, list[LedgerEntry]]:
    """Who holds users, with everything spent on them: each client's ledger composed with the
    central one (a user's data feeds both); the central ledger alone without clients."""
    if clients:
        return {f"{CLIENT_HOLDER_PREFIX}{cid}": [*entries, *central] for cid, entries in clients.items()}
    return {CENTRAL_HOLDER: list(central)} if central else {}


def is_central_dp(central: Iterable[LedgerEntry]) -> bool:
    """Whether the central ledger is the server's DP-FedAvg ledger (not a central training run's)."""
    return any(e.mechanism == FEDAVG for e in central)


def entries_upto(entries: Iterable[LedgerEntry], rnd: int, current_run: str | None) -> list[LedgerEntry]:
    """Keep the entries spent by the end of round `rnd` of the current run (earlier runs in full)."""
    return [e for e in entries if e.run_id != current_run or e.round <= rnd]


def epsilon_series(
    entries: Sequence[LedgerEntry],
    points: Iterable[int],
    current_run: str | None,
    delta: float,
    accountant: str = "pld",
) -> Series:
    """ε after each round in `points`, by `accountant`."""
    return [(r, epsilon_of(entries_upto(entries, r, current_run), delta, accountant)) for r in points]


def max_series(series: Iterable[Sequence[tuple[int, float]]], points: Sequence[int]) -> Series:
    """Take the largest ε over several series (each at `points`) after each round; 0 with none."""
    all_series = list(series)
    return [(r, max((s[i][1] for s in all_series), default=0.0)) for i, r in enumerate(points)]


def holder_epsilon(
    entries: Sequence[LedgerEntry], points: Sequence[int], current_run: str | None, delta: float
) -> HolderEpsilon:
    """One holder's ε (PLD, RDP cross-check) over its whole ledger, and its PLD series at `points`."""
    return HolderEpsilon(
        epsilon=epsilon_of(entries, delta, "pld"),
        epsilon_rdp=epsilon_of(entries, delta, "rdp"),
        entries=len(entries),
        runs=tuple(sorted({e.run_id for e in entries})),
        series=tuple(epsilon_series(entries, points, current_run, delta, "pld")),
    )


def holder_epsilons(
    held: Mapping[str, Sequence[LedgerEntry]], points: Sequence[int], current_run: str | None, delta: float
) -> dict[str, HolderEpsilon]:
    """`holder_epsilon` of every holder, in order."""
    return {name: holder_epsilon(entries, points, current_run, delta) for name, entries in held.items()}


def guarantee(per_holder: Mapping[str, HolderEpsilon]) -> Guarantee:
    """Find the largest ε over the holders (PLD, and RDP's largest alongside) and who attains it."""
    held_by = max(per_holder, key=lambda k: per_holder[k].epsilon) if per_holder else None
    if held_by is None:
        return Guarantee(epsilon=0.0, epsilon_rdp=0.0, held_by=None, tied=0, holders=0)
    top = per_holder[held_by].epsilon
    return Guarantee(
        epsilon=top,
        epsilon_rdp=max(h.epsilon_rdp for h in per_holder.values()),
        held_by=held_by,
        tied=sum(1 for h in per_holder.values() if math.isclose(h.epsilon, top)),
        holders=len(per_holder),
    )


def local_epsilon(clients: Mapping[str, Sequence[LedgerEntry]], delta: float) -> float:
    """Take the largest ε over the clients' own ledgers (without the central one); 0 without clients."""
    return max((epsilon_of(entries, delta, "pld") for entries in clients.values()), default=0.0)
