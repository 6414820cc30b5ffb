"""One verification check and how its problems are written."""

from __future__ import annotations

from dataclasses import dataclass

MAX_PROBLEMS = 10
"""At most this many problems are named in a failed check's message."""


@dataclass(frozen=True)
class Check:
    """One verification step and its outcome, in a sentence."""

    name: str
    passed: bool
    message: str


def joined(problems: list[str]) -> str:
    """Join the first `MAX_PROBLEMS` problems into one message."""
    return "; ".join(problems[:MAX_PROBLEMS])


def failed(name: str, problems: list[str]) -> Check:
    """Return a failed check naming its first problems (and how many more there are)."""
    more = f" (and {len(problems) - MAX_PROBLEMS} more)" if len(problems) > MAX_PROBLEMS else ""
    return Check(name, False, joined(problems) + more)
