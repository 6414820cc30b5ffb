"""The public DP-SGD plan: sample rate and steps from public quantities only (DESIGN.md §4).

Under add/remove-one-user adjacency the mechanism must be the same on D and D ± u, so q and
the number of steps may depend on the configuration and the public population N, never on
how many users a device holds. A device, the central reference and the verifier of the
privacy report all compute the plan here, so an auditor recomputes what a ledger should say.
"""

from __future__ import annotations

from ..config import StrataConfig


def public_plan(expected_users: float, batch_size: int) -> tuple[float, int]:
    """Return (sample rate, steps per epoch): q = min(1, B / n̄) and ⌊1/q⌋ steps (Opacus' Poisson loader).

    n̄ is the public expected number of users the DP-SGD run covers.
    """
    if expected_users <= 0:
        raise ValueError(f"the public expected number of users must be positive, got {expected_users}.")
    if batch_size < 1:
        raise ValueError(f"the expected batch size must be at least 1, got {batch_size}.")
    q = min(1.0, batch_size / expected_users)
    return q, max(1, int(1.0 / q))


def expected_users_per_client(config: StrataConfig) -> float:
    """Return the public expected number of users one client's DP-SGD covers.

    One in the `device` topology and for each user's own copy under central DP; N / num-hubs
    in a hub, N the public population (`privacy.population`).
    """
    if config.privacy.central_dp or config.federation.topology == "device":
        return 1.0
    if config.privacy.population <= 0:
        raise ValueError(
            "privacy.population (the public number of users N) is not set: a hub's DP-SGD plan assumes "
            "N / num-hubs users. Set it in the config; `strata simulate` sets it from the data set."
        )
    return config.privacy.population / config.federation.num_hubs


def device_plan(config: StrataConfig) -> tuple[float, int]:
    """Return (sample rate, steps per round) of a client's local DP-SGD."""
    q, steps_per_epoch = public_plan(expected_users_per_client(config), config.train.batch_size)
    return q, config.train.local_epochs * steps_per_epoch


def central_plan(config: StrataConfig) -> tuple[float, int]:
    """Return (sample rate, steps per epoch) of the central reference's DP-SGD over all N users."""
    if config.privacy.population <= 0:
        raise ValueError("privacy.population (the public number of users N) is not set.")
    return public_plan(config.privacy.population, config.train.batch_size)
