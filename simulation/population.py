"""The public population N of a simulated federation."""

from __future__ import annotations

from shared.config import StrataConfig
from shared.data.user_store import open_store


def with_public_population(config: StrataConfig) -> StrataConfig:
    """Return `config` with `privacy.population` set from the data set when it is 0.

    A simulated population is public by construction (the simulation owns the data); a
    deployment must configure N itself (δ = 1/(100·N), the central divisor and the DP-SGD
    plan depend on it, never on a count a device or the server reads from data).
    """
    if config.privacy.population > 0:
        return config
    return config.replace({"privacy.population": open_store(config.data, config.run.seed).n_users})
