"""A device's privacy budget: its ledger, δ, accountant and lifetime max-ε.

The shape mirrors Flower 1.42's `flwr.supercore.privacy_accounting.PrivacyAccountant`:
ask `would_exceed(entry)` before a release, `record(entry)` after it. Everything the
device spends goes through here, so the trainer only trains.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache

from shared.config import PrivacyConfig
from shared.privacy.accounting import EpsilonCache, calibrate_noise_multiplier, check_delta, epsilon_of
from shared.privacy.ledger import Ledger, LedgerEntry


class ClientBudget:
    """What a device has spent and may still spend, over every run in its ledger."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        delta: float,
        population: int,
        accountant: str = "pld",
        max_epsilon: float = 0.0,
        cache: EpsilonCache | None = None,
    ) -> None:
        check_delta(delta, population)
        if max_epsilon < 0:
            raise ValueError("max-epsilon must be >= 0 (0: no limit).")
        self.ledger = ledger
        self.delta = delta
        self.population = population
        self.accountant = accountant
        self.max_epsilon = max_epsilon
        self.cache = cache
        """ε values computed earlier (a real device's file), or None: the in-process cache only."""

    @classmethod
    def from_config(
        cls,
        privacy: PrivacyConfig,
        *,
        ledger: Ledger,
        max_epsilon: float | None = None,
        cache: EpsilonCache | None = None,
    ) -> ClientBudget:
        """Build the budget `privacy` sets: δ and N from the public population, never from the device's data.

        `max_epsilon` (the device policy's cap, already tightened by the run) replaces the run's own.
        """
        cap = privacy.max_epsilon if max_epsilon is None else max_epsilon
        return cls(
            ledger=ledger,
            delta=privacy.resolved_delta,
            population=privacy.population,
            accountant=privacy.accountant,
            max_epsilon=0.0 if math.isinf(cap) else cap,
            cache=cache,
        )

    @property
    def key(self) -> str:
        """The public key that signs the ledger ("" when unsigned): every reply names it."""
        return self.ledger.signer.public_hex() if self.ledger.signer is not None else ""

    def spent(self) -> float:
        """ε(δ) of every entry in the ledger (0 for an empty one)."""
        if not len(self.ledger):
            return 0.0
        return epsilon_of(self.ledger.entries, self.delta, self.accountant, cache=self.cache)

    def epsilon_after(self, entry: LedgerEntry) -> float:
        """ε(δ) if `entry` were spent too."""
        return epsilon_of([*self.ledger.entries, entry], self.delta, self.accountant, cache=self.cache)

    def would_exceed(self, entry: LedgerEntry) -> bool:
        """Whether spending `entry` would take ε above max-epsilon (never, without a limit)."""
        return self.max_epsilon > 0 and self.epsilon_after(entry) > self.max_epsilon

    def refusal(self, entry: LedgerEntry) -> str:
        """Why `entry` is refused, in a sentence ("" when it is not)."""
        if not self.would_exceed(entry):
            return ""
        return (
            f"budget: the {entry.mechanism} release of round {entry.round} would bring ε to "
            f"{self.epsilon_after(entry):.3f} > max-epsilon {self.max_epsilon}"
        )

    def record(self, entry: LedgerEntry) -> None:
        """Append `entry` to the ledger (durably, when the ledger is file-backed)."""
        self.ledger.append(entry)

    def calibrated_sigma(
        self,
        *,
        target_epsilon: float,
        sample_rate: float,
        steps: int,
        run_id: str,
        planned: Iterable[LedgerEntry] = (),
    ) -> float:
        """σ such that `steps` DP-SGD steps at `sample_rate`, with what earlier runs spent and
        this run's `planned` releases, bring the device's total ε to `target_epsilon`."""
        prior = (*(e for e in self.ledger.entries if e.run_id != run_id), *planned)
        return _calibrated(
            target_epsilon, self.delta, self.population, sample_rate, steps, self.accountant, prior, self.cache
        )


@lru_cache(maxsize=1024)
def _calibrated(
    target: float,
    delta: float,
    population: int,
    q: float,
    steps: int,
    accountant: str,
    prior: tuple[LedgerEntry, ...],
    cache: EpsilonCache | None,
) -> float:
    return calibrate_noise_multiplier(
        target_epsilon=target, delta=delta, population=population, sample_rate=q, steps=steps,
        accountant=accountant, prior=prior, cache=cache,
    )
