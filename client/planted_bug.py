"""A planted accounting bug for testing audits: devices train with σ / divisor, ledgers record σ.

Set only by the auditor's own experiment (`strata audit --planted-bug DIVISOR`), through the
environment of the processes that run the devices, never through the run config: the server has
no say in it, and no run outside an audit has it. Every device that applies it says so in its log.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

ENV = "STRATA_PLANTED_NOISE_DIVISOR"


def noise_divisor() -> float:
    """Return the planted divisor of σ (1.0 when no bug is planted)."""
    raw = os.environ.get(ENV, "")
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ENV}={raw!r} is not a number.") from None
    if not value >= 1.0:
        raise ValueError(f"{ENV} must be >= 1 (a divisor of σ); got {raw!r}.")
    if value > 1.0:
        log.warning("PLANTED BUG (%s=%g): training with σ / %g while the ledger records σ", ENV, value, value)
    return value


@contextmanager
def planted_bug(divisor: float) -> Iterator[None]:
    """Plant the bug for the processes started inside the block (1.0: none); restore afterwards."""
    if not divisor >= 1.0:
        raise ValueError(f"the planted noise divisor must be >= 1; got {divisor}.")
    before = os.environ.get(ENV)
    if divisor > 1.0:
        os.environ[ENV] = repr(float(divisor))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before
