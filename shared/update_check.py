"""Validation of a client's reply before it is averaged: keys, shapes, dtypes, finite values, norm.

The server screens every reply with it; a simulated cohort node screens each of its devices the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .transport import CompactUpdate


class InvalidUpdate(ValueError):
    """A client's weights cannot be aggregated."""


CLIP_SLACK = 1e-4
"""Relative float slack when checking that a central-DP reply's norm is within users · S."""


def clip_bound(users: int, clip: float) -> float:
    """Return the largest norm a central-DP reply of `users` clipped user updates may have (float slack)."""
    return users * clip * (1 + CLIP_SLACK) + 1e-6


def check_update(
    weights: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], *, values: bool = True
) -> None:
    """Raise InvalidUpdate naming the first problem; a broken client must not poison the model.
    `values=False` checks names, shapes and dtypes only (for a caller that proves finiteness otherwise)."""
    if set(weights) != set(reference):
        diff = sorted(set(weights) ^ set(reference))[:5]
        raise InvalidUpdate(f"parameter names differ from the global model: {diff}")
    for k, ref in reference.items():
        w = weights[k]
        if w.shape != ref.shape:
            raise InvalidUpdate(f"{k}: shape {tuple(w.shape)}, expected {tuple(ref.shape)}")
        if w.dtype != ref.dtype:
            raise InvalidUpdate(f"{k}: dtype {w.dtype}, expected {ref.dtype}")
        # A finite sum means every value is finite (NaN and ±Inf propagate); only a non-finite sum
        # (or an overflowing one) needs the element-wise check, 30x slower on a large layer.
        if values and not torch.isfinite(w.sum()) and not torch.isfinite(w).all():
            raise InvalidUpdate(f"{k}: contains NaN or infinite values")


def check_change_norm(weights: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], bound: float) -> None:
    """Raise InvalidUpdate when `weights` are farther than `bound` (L2) from `reference` (0: no bound)."""
    if bound <= 0:
        return
    # The difference in the weights' own precision, its norm accumulated in float64: one pass, no copies in float64.
    norm = math.sqrt(
        sum(float(torch.linalg.vector_norm(weights[k] - v, dtype=torch.float64)) ** 2 for k, v in reference.items())
    )
    if not norm <= bound:  # NaN compares false: a non-finite update never passes
        raise InvalidUpdate(f"update norm {norm:.4g} exceeds federation.max-update-norm {bound:g}")


_UNIT_ROUNDOFF = 2.0**-24
"""u of float32: a recursive sum of n non-negative float32 terms errs by at most γ_n = n·u / (1 − n·u)."""


def change_within_bound(change: Mapping[str, torch.Tensor], bound: float) -> bool:
    """Whether ‖change‖ ≤ `bound` is *certain* from float32 norms alone (False: decide exactly).

    Each tensor's float32 sum of squares errs by at most γ_{n+4} relatively (n terms, squaring,
    the square root and squaring it back; Higham's bound for recursive summation, which pairwise
    and vectorised sums only tighten), so Σ s̃_k / (1 − γ) ≤ bound² implies the exact norm passes.
    A caller that gets False runs `check_change_norm`, so the decision is always the exact one."""
    if bound <= 0:
        return True
    upper = 0.0
    for v in change.values():
        gamma = (v.numel() + 4) * _UNIT_ROUNDOFF
        if gamma >= 0.5:
            return False
        upper += float(torch.linalg.vector_norm(v)) ** 2 / (1 - gamma / (1 - gamma))
    return upper <= bound * bound * (1 - 1e-12)  # NaN compares false


def check_clipped_sum(update: Mapping[str, torch.Tensor], users: int, clip: float) -> None:
    """Raise InvalidUpdate when a central-DP reply (a sum of clipped user updates) is longer than `users` · S."""
    bound = clip_bound(users, clip)
    if change_within_bound(update, bound):
        return
    norm = math.sqrt(sum(float(torch.linalg.vector_norm(v, dtype=torch.float64)) ** 2 for v in update.values()))
    if not norm <= bound:
        raise InvalidUpdate(
            f"clipped update sum has norm {norm:.4g} > users-per-client bound {users} × update-clip {clip:g}"
        )


def received_update(
    weights: Mapping[str, torch.Tensor] | None,
    compact: CompactUpdate | None,
    current: Mapping[str, torch.Tensor],
    *,
    updates: bool,
) -> dict[str, torch.Tensor]:
    """Return what a training reply contributes: its weights (under central DP, `updates`: its sum of
    clipped updates), or its compact change decoded, added to `current` unless `updates`.
    A decoded change that does not fit the model (names, shapes) is `InvalidUpdate`."""
    if compact is None:
        if weights is None:
            raise ValueError("a refused reply contributes no update.")
        return dict(weights)
    change = compact.decode()
    check_update(change, {k: v.float() for k, v in current.items()}, values=False)
    return change if updates else {k: v + change[k] for k, v in current.items()}
