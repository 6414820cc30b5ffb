"""Privacy accounting: immutable mechanism entries, the ledger, and accountants over it."""

from .accounting import calibrate_noise_multiplier, check_delta, default_delta, epsilon_of
from .ledger import Ledger, LedgerEntry, LedgerError

__all__ = [
    "Ledger",
    "LedgerEntry",
    "LedgerError",
    "calibrate_noise_multiplier",
    "check_delta",
    "default_delta",
    "epsilon_of",
]
