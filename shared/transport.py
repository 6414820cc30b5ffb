"""Compact transport of a device's update (`federation.transport`): float16, or int8 with one scale per tensor.

A device that trains sends, instead of its float32 weights, its *change* from the global weights
(under central DP its clipped update, already a change) in fewer bytes: float16 values (half the
bytes), or int8 codes q with a float32 scale s per tensor, the value q·s (a quarter). int8 rounds
stochastically (up with probability the fractional part), so the decoded change is unbiased and
the server's average of many devices' changes keeps the float32 average in expectation.

It is applied to what the accounted mechanism released, after clipping and noise:

- local DP and no DP: post-processing of the device's output, so nothing is accounted anew;
- central DP: the server adds the noise afterwards, so the encoded update must still be within the
  clipping bound S the noise is calibrated to. The encoding is scaled down until the *decoded*
  update's norm (float64) is at most S: one user's contribution stays bounded by S. That holds for
  a reply of one user only (the `device` topology); a hub's sum of many users, encoded together,
  would let one user change the rounding of the others, so a device refuses it (`transport_refusal`).

The rounding coins are drawn from the generator the caller passes (the device's seeded one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Encoding = Literal["float16", "int8"]
ENCODINGS: tuple[str, ...] = ("float16", "int8")
INT8_MAX = 127


@dataclass(frozen=True)
class CompactUpdate:
    """A change from the global weights in a compact encoding."""

    encoding: Encoding
    codes: dict[str, np.ndarray]
    """Per tensor: float16 values, or int8 codes."""
    scales: dict[str, float]
    """int8 only: per tensor, the value of one code step (float32); empty for float16."""

    def decode(self) -> dict[str, torch.Tensor]:
        """Return the change as float32 tensors (what the server adds up)."""
        if self.encoding == "float16":  # torch's conversion (numpy's float16 casts are scalar loops)
            return {k: torch.from_numpy(c).float() for k, c in self.codes.items()}
        return {k: torch.from_numpy(c).float().mul_(self.scales[k]) for k, c in self.codes.items()}

    @property
    def nbytes(self) -> int:
        """Bytes of the codes and scales."""
        return sum(c.nbytes for c in self.codes.values()) + 4 * len(self.scales)


def encode(change: Mapping[str, torch.Tensor], encoding: str, generator: torch.Generator) -> CompactUpdate:
    """Encode a float32 change; `ValueError` for an unknown encoding or a non-finite value."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown transport encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}.")
    for k, v in change.items():  # a finite sum means finite values; only a non-finite one needs the full check
        if not torch.isfinite(v.sum()) and not torch.isfinite(v).all():
            raise ValueError(f"transport: {k} has NaN or infinite values; nothing to encode.")
    if encoding == "float16":
        halves = {k: v.detach().to(torch.float16) for k, v in change.items()}
        for k, h in halves.items():
            if not torch.isfinite(h.float().sum()) and not torch.isfinite(h).all():
                raise ValueError(f"transport: {k} has values beyond float16's range (65504); use int8 or float32.")
        codes = {k: h.numpy() for k, h in halves.items()}
        return CompactUpdate("float16", codes, {})
    codes, scales = {}, {}
    for k, v in change.items():
        v = v.detach().float()
        top = float(v.abs().max()) if v.numel() else 0.0
        scale = np.float32(top / INT8_MAX) if top > 0 else np.float32(1.0)
        # floor(x + u), u uniform in [0, 1): x rounded up with probability its fractional part.
        steps = (v / float(scale)).add_(torch.rand(v.shape, generator=generator)).floor_()
        codes[k] = steps.clamp_(-INT8_MAX, INT8_MAX).to(torch.int8).numpy()
        scales[k] = float(scale)
    return CompactUpdate("int8", codes, scales)


def decoded_norm(update: CompactUpdate) -> float:
    """Return the L2 norm (float64) of the decoded update."""
    squares = (float(torch.linalg.vector_norm(v, dtype=torch.float64)) ** 2 for v in update.decode().values())
    return math.sqrt(sum(squares))


def within(update: CompactUpdate, bound: float) -> CompactUpdate:
    """Return `update` scaled down so that its decoded norm is at most `bound` (unchanged when it is)."""
    for _ in range(8):
        norm = decoded_norm(update)
        if norm <= bound:
            return update
        factor = bound / norm * (1 - 2.0**-10)  # below float16's rounding of the scaled values
        if update.encoding == "int8":  # exact: only the scales shrink
            scales = {k: float(np.float32(s * factor)) for k, s in update.scales.items()}
            update = CompactUpdate("int8", update.codes, scales)
        else:
            codes = {k: torch.from_numpy(c).float().mul_(factor).half().numpy() for k, c in update.codes.items()}
            update = CompactUpdate("float16", codes, {})
    raise RuntimeError(f"transport: could not bring an encoded update within norm {bound:g}")  # pragma: no cover


def transport_refusal(transport: str, *, central_dp: bool, topology: str) -> str:
    """Why a device must not send a compact reply ("" when it may): under central DP only one user's
    clipped update may be encoded and re-bounded on its own (the `device` topology; public)."""
    if transport == "float32" or not central_dp or topology == "device":
        return ""
    return (
        f"federation.transport {transport!r} under central DP encodes one user's clipped update at a time; "
        f"a {topology} sums several users: use transport float32 or the device topology."
    )
