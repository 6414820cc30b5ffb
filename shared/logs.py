"""Logging of Strata's four packages (`shared`, `client`, `server`, `simulation`).

Every module logs through `logging.getLogger(__name__)`. The `strata` CLI configures the
root logger; under `flwr run` nobody does, so the apps call `show_strata_logs()` and
Strata's progress and warnings reach stderr instead of being lost.
"""

from __future__ import annotations

import logging

PACKAGES = ("shared", "client", "server", "simulation")


def show_strata_logs(level: int = logging.INFO) -> None:
    """Send the four packages' records to stderr when no handler would receive them."""
    if logging.getLogger().handlers:
        return
    formatter = logging.Formatter("%(asctime)s strata %(levelname)s %(message)s", "%H:%M:%S")
    for name in PACKAGES:
        logger = logging.getLogger(name)
        if logger.handlers:
            continue
        handler = logging.StreamHandler()
        handler.setFormatter(formatter)
        logger.addHandler(handler)
        logger.setLevel(level)
