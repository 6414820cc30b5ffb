"""ε from a ledger with dp-accounting's PLD accountant (headline) or RDP (cross-check).

GDP is never used: it under-estimates ε at small sample rates.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .ledger import LedgerEntry

if TYPE_CHECKING:  # dp-accounting (and the scipy it loads, ~65 MiB) is imported on first use:
    from dp_accounting.pld.privacy_loss_distribution import PrivacyLossDistribution  # no ε, no import

log = logging.getLogger(__name__)

PLD_DISCRETIZATION = 1e-4
"""Value discretisation of the PLD accountant (smaller is tighter and slower)."""


def default_delta(population: int) -> float:
    """Return δ = 1 / (100 · N) for a public population of N users (DESIGN.md §4).

    N·δ = 0.01: with probability 0.99 no user at all falls in the δ event.
    """
    if population < 1:
        raise ValueError(f"the population N must be at least 1, got {population}.")
    return 1.0 / (100.0 * population)


def check_delta(delta: float, population: int) -> None:
    """Refuse a δ that cannot protect a population of N users: 0 < δ < 1/N."""
    if population < 1:
        raise ValueError(f"the population N must be at least 1, got {population}.")
    if not 0 < delta < 1.0 / population:
        raise ValueError(
            f"δ = {delta:.3g} is not below 1/N = {1.0 / population:.3g} for N = {population} users: with δ ≥ 1/N "
            "about one user may be exposed in full. Use δ ≤ 1/(100·N) (the default when privacy.delta = 0)."
        )


Groups = tuple[tuple[float, float, int], ...]
"""Ledger entries merged by (σ, q): sorted (σ, q, steps) triples."""


def _grouped(entries: Iterable[LedgerEntry]) -> Groups:
    """Merge entries with identical (σ, q) so the accountant composes fewer, larger events."""
    totals: dict[tuple[float, float], int] = {}
    for e in entries:
        if e.steps:
            key = (e.noise_multiplier, e.sample_rate)
            totals[key] = totals.get(key, 0) + e.steps
    return tuple(sorted((s, q, n) for (s, q), n in totals.items()))


class EpsilonCache:
    """ε values already computed, in a JSON file (a device keeps one beside its ledger).

    ε is a pure function of public quantities, the (σ, q, steps) groups, δ and the accountant,
    so a remembered value is what the accountant would return again. A SuperNode answers every
    message in a fresh ClientApp process, where the in-process cache is empty: without this file
    each round would redo the noise calibration (seconds of PLD composition). Editing the file
    changes nothing an auditor trusts: `privacy-report --verify` recomputes σ and ε from the plan.
    """

    MAX_ENTRIES = 1024
    """Oldest values are dropped beyond this many (a calibration adds about a dozen)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._values: dict[str, float] | None = None

    @staticmethod
    def key(groups: Groups, delta: float, accountant: str) -> str:
        """Return the exact inputs as JSON (floats round-trip exactly)."""
        return json.dumps([accountant, delta, [list(g) for g in groups]])

    def _load(self) -> dict[str, float]:
        if self._values is None:
            self._values = {}
            if self.path.exists():
                try:
                    values = json.loads(self.path.read_text())
                    self._values = {str(k): float(v) for k, v in values.items()}
                except (OSError, ValueError, AttributeError) as exc:
                    log.warning("ignoring unreadable ε cache %s (%s): values are recomputed", self.path, exc)
        return self._values

    def get(self, key: str) -> float | None:
        """Return the remembered ε for `key`, if any."""
        return self._load().get(key)

    def put(self, key: str, value: float) -> None:
        """Remember `value` for `key` and write the file (atomically)."""
        values = self._load()
        values[key] = value
        while len(values) > self.MAX_ENTRIES:
            del values[next(iter(values))]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(values))
        os.replace(tmp, self.path)


def _remembered(groups: Groups, delta: float, accountant: str, cache: EpsilonCache | None) -> float:
    """`_epsilon`, consulting and filling `cache` when one is given."""
    if cache is None:
        return _epsilon(groups, delta, accountant)
    key = EpsilonCache.key(groups, delta, accountant)
    known = cache.get(key)
    if known is not None:
        return known
    value = _epsilon(groups, delta, accountant)
    cache.put(key, value)
    return value


@lru_cache(maxsize=64)
def _step_pld(noise_multiplier: float, sample_rate: float) -> PrivacyLossDistribution:
    """Return the PLD of one Poisson-subsampled Gaussian step, exactly as `PLDAccountant` builds it.

    Building it (discretising the subsampled Gaussian) is about half of every ε: a server that
    reports ε after each round composes the same step again and again."""
    import dp_accounting
    from dp_accounting.pld import privacy_loss_distribution as PLD

    return PLD.from_gaussian_mechanism(
        standard_deviation=noise_multiplier,
        value_discretization_interval=PLD_DISCRETIZATION,
        sampling_prob=sample_rate,
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
    )


def _pld_epsilon(groups: Groups, delta: float) -> float:
    """ε(δ) of the groups by PLD: the same compositions `PLDAccountant.compose` performs for
    the ledger's events (a test checks equality), with each step's PLD built once per process."""
    if any(s == 0 for s, q, _ in groups if q > 0):
        return math.inf  # a noiseless step is not DP (PLDAccountant's non-DP event)
    from dp_accounting.pld import privacy_loss_distribution as PLD

    pld = PLD.identity(value_discretization_interval=PLD_DISCRETIZATION)
    for s, q, n in groups:
        if q > 0:
            pld = pld.compose(_step_pld(s, q).self_compose(n))
    return float(pld.get_epsilon_for_delta(delta))


@lru_cache(maxsize=4096)
def _epsilon(groups: Groups, delta: float, accountant: str) -> float:
    if not groups:
        return 0.0
    if accountant == "pld":
        return _pld_epsilon(groups, delta)
    if accountant != "rdp":
        raise ValueError(f"accountant must be 'pld' or 'rdp', not {accountant!r}.")
    return _rdp_epsilon(groups, delta)


def _rdp_orders() -> np.ndarray:
    from dp_accounting.rdp import rdp_privacy_accountant

    return np.array(rdp_privacy_accountant.DEFAULT_RDP_ORDERS)


@lru_cache(maxsize=64)
def _step_rdp(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """Return the RDP curve of one Poisson-subsampled Gaussian step at `RdpAccountant`'s default orders."""
    from dp_accounting.rdp import rdp_privacy_accountant

    curve: np.ndarray = rdp_privacy_accountant._compute_rdp_poisson_subsampled_gaussian(  # the accountant's own
        q=sample_rate, noise_multiplier=noise_multiplier, orders=_rdp_orders()
    )
    return curve


def _rdp_epsilon(groups: Groups, delta: float) -> float:
    """ε(δ) of the groups by RDP: `RdpAccountant`'s sum Σ steps · RDP(σ, q) in the same order (a test
    checks equality), with each step's curve computed once per process."""
    from dp_accounting.rdp import rdp_privacy_accountant

    orders = _rdp_orders()
    rdp = np.zeros_like(orders, dtype=np.float64)
    for s, q, n in groups:
        rdp += n * _step_rdp(s, q)
    return float(rdp_privacy_accountant.compute_epsilon(orders, rdp, delta)[0])


PRV_EPS_ERROR = 0.01
"""The PRV accountant's stated error bound on ε (Gopi et al. 2021; Opacus' `eps_error`)."""


@lru_cache(maxsize=4096)
def _prv_epsilon(groups: tuple[tuple[float, float, int], ...], delta: float, eps_error: float) -> float:
    if not groups:
        return 0.0
    # Opacus is imported here, not at module level: it is slow to import and only the verifier needs PRV.
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = list(groups)
    with np.errstate(divide="ignore"):  # log(1 − q) at q = 1 (a Gaussian release) is handled, but warns
        return float(acc.get_epsilon(delta=delta, eps_error=eps_error))


def prv_epsilon(entries: Iterable[LedgerEntry], delta: float, eps_error: float = PRV_EPS_ERROR) -> float:
    """Return ε(δ) of the composition of every entry by Opacus' PRV accountant, within `eps_error`."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}.")
    return _prv_epsilon(_grouped(entries), delta, eps_error)


def epsilon_of(
    entries: Iterable[LedgerEntry], delta: float, accountant: str = "pld", *, cache: EpsilonCache | None = None
) -> float:
    """Return ε(δ) of the composition of every entry, by the named accountant."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}.")
    return _remembered(_grouped(entries), delta, accountant, cache)


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    population: int,
    sample_rate: float,
    steps: int,
    accountant: str = "pld",
    tolerance: float = 0.01,
    prior: Iterable[LedgerEntry] = (),
    cache: EpsilonCache | None = None,
) -> float:
    """Find the smallest σ (within `tolerance` relative) such that the `prior` entries plus `steps`
    subsampled Gaussian steps with σ spend at most `target_epsilon` in total.

    Unlike Opacus' `make_private_with_epsilon`, what was already spent counts. δ must be
    below 1/`population` (`check_delta`).
    """
    check_delta(delta, population)
    if target_epsilon <= 0:
        raise ValueError("target_epsilon must be positive.")
    if steps < 1:
        raise ValueError("steps must be at least 1.")
    spent = list(_grouped(prior))
    if spent and _remembered(tuple(spent), delta, accountant, cache) >= target_epsilon:
        raise ValueError(f"the ledger already spends ε ≥ {target_epsilon}: no noise level fits the target.")

    def eps(sigma: float) -> float:
        return _remembered(tuple(sorted([*spent, (sigma, sample_rate, steps)])), delta, accountant, cache)

    lo, hi = 0.05, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ValueError(f"No noise multiplier below 1e4 reaches ε={target_epsilon}.")
    while hi - lo > tolerance * lo:
        mid = math.sqrt(lo * hi)
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
