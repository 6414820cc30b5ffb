"""ε from a ledger with dp-accounting's PLD accountant (headline) or RDP (cross-check).

GDP is never used: it under-estimates ε at small sample rates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache

import dp_accounting
import numpy as np
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from .ledger import LedgerEntry

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


def _event(noise_multiplier: float, sample_rate: float, steps: int) -> dp_accounting.DpEvent:
    step = dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    return dp_accounting.SelfComposedDpEvent(step, steps)


def _grouped(entries: Iterable[LedgerEntry]) -> tuple[tuple[float, float, int], ...]:
    """Merge entries with identical (σ, q) so the accountant composes fewer, larger events."""
    totals: dict[tuple[float, float], int] = {}
    for e in entries:
        if e.steps:
            key = (e.noise_multiplier, e.sample_rate)
            totals[key] = totals.get(key, 0) + e.steps
    return tuple(sorted((s, q, n) for (s, q), n in totals.items()))


@lru_cache(maxsize=4096)
def _epsilon(groups: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    if not groups:
        return 0.0
    if accountant == "pld":
        acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    elif accountant == "rdp":
        acc = rdp_privacy_accountant.RdpAccountant()
    else:
        raise ValueError(f"accountant must be 'pld' or 'rdp', not {accountant!r}.")
    acc.compose(dp_accounting.ComposedDpEvent([_event(s, q, n) for s, q, n in groups]))
    return float(acc.get_epsilon(delta))


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


def epsilon_of(entries: Iterable[LedgerEntry], delta: float, accountant: str = "pld") -> float:
    """Return ε(δ) of the composition of every entry, by the named accountant."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}.")
    return _epsilon(_grouped(entries), delta, accountant)


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
    if spent and _epsilon(tuple(spent), delta, accountant) >= target_epsilon:
        raise ValueError(f"the ledger already spends ε ≥ {target_epsilon}: no noise level fits the target.")

    def eps(sigma: float) -> float:
        return _epsilon(tuple(sorted([*spent, (sigma, sample_rate, steps)])), delta, accountant)

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
