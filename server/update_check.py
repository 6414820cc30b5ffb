"""Validation of a client's reply before it is averaged: keys, shapes, dtypes, finite values."""

from __future__ import annotations

from collections import OrderedDict

import torch


class InvalidUpdate(ValueError):
    """A client's weights cannot be aggregated."""


def check_update(weights: OrderedDict[str, torch.Tensor], reference: OrderedDict[str, torch.Tensor]) -> None:
    """Raise InvalidUpdate naming the first problem; a broken client must not poison the model."""
    if set(weights) != set(reference):
        diff = sorted(set(weights) ^ set(reference))[:5]
        raise InvalidUpdate(f"parameter names differ from the global model: {diff}")
    for k, ref in reference.items():
        w = weights[k]
        if w.shape != ref.shape:
            raise InvalidUpdate(f"{k}: shape {tuple(w.shape)}, expected {tuple(ref.shape)}")
        if w.dtype != ref.dtype:
            raise InvalidUpdate(f"{k}: dtype {w.dtype}, expected {ref.dtype}")
        if not torch.isfinite(w).all():
            raise InvalidUpdate(f"{k}: contains NaN or infinite values")
