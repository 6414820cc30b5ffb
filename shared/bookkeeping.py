"""Per-user clipped gradient sums in one backward pass, for models built of `nn.Linear` layers.

For a linear layer applied once to a user's input vector a_i with output gradient g_i, the
user's weight gradient is the outer product g_i a_iᵀ, so its norm is ‖g_i‖·‖a_i‖ (the
"ghost norm", Li et al. 2022) and the bias gradient is g_i. One backward pass to the layers'
outputs therefore gives every user's exact gradient norm, and the clipped sum
Σ_i c_i g_i a_iᵀ with c_i = min(1, C/‖∇ℓ_i‖) is one matrix product per layer from the same
tensors ("book-keeping", Bu et al. 2023) — where Opacus' ghost clipping runs a second backward.

The identity only holds when every trainable parameter belongs to an `nn.Linear` applied
exactly once per forward to a 2-D (users × features) input; `BookKeeping` checks all three
on every step and raises otherwise. The caller's per-user losses must each depend on that
user's row only (no batch statistics): true of `StrataModel`, whose layers are all row-wise.
Noise, scaling and the step stay Opacus' (`DPOptimizerFastGradientClipping` takes this
clipped sum as `p.grad`). A user whose gradient is not finite (a diverged step: NaN or ±Inf in
its norm) contributes 0 — still a point of the C-ball, so the sum keeps its sensitivity, and one
user's overflow cannot turn everyone's released sum into NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_EPS = 1e-6
"""Opacus' guard in the clip factor C / (‖g‖ + ε)."""


class BookKeeping:
    """Record each linear layer's input and output during a forward pass of `model`, then turn a
    vector of per-user losses into the sum of per-user gradients clipped to `max_grad_norm`."""

    def __init__(self, model: nn.Module, max_grad_norm: float) -> None:
        if max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}.")
        self.max_grad_norm = max_grad_norm
        self.layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        covered = {id(p) for layer in self.layers for p in layer.parameters()}
        stray = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
        if stray:
            raise ValueError(f"book-keeping clipping needs every trainable parameter in an nn.Linear; not: {stray}")
        self._seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles = [layer.register_forward_hook(self._record(i)) for i, layer in enumerate(self.layers)]

    def _record(self, index: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if not torch.is_grad_enabled():
                return
            if index in self._seen:
                raise RuntimeError(f"{module} ran twice in one forward: per-user gradients are no longer g·aᵀ.")
            if inputs[0].dim() != 2:
                raise RuntimeError(f"{module} got a {inputs[0].dim()}-D input: book-keeping needs users × features.")
            self._seen[index] = (inputs[0].detach(), output)

        return hook

    def clipped_sum(self, per_user_loss: torch.Tensor) -> torch.Tensor:
        """Write Σ_i clip(∇ℓ_i) into each parameter's `.grad` and return the users' gradient norms.

        `per_user_loss` holds ℓ_i of the forward pass just recorded (one entry per input row).
        """
        seen, self._seen = self._seen, {}
        trainable = [i for i, layer in enumerate(self.layers) if any(p.requires_grad for p in layer.parameters())]
        missing = [self.layers[i] for i in trainable if i not in seen]
        if missing:
            raise RuntimeError(f"trainable layers did not run in this forward pass: {missing}")
        layers = [(self.layers[i], *seen[i]) for i in sorted(seen)]
        if any(a.shape[0] != per_user_loss.shape[0] for _, a, _ in layers):
            raise RuntimeError(f"{per_user_loss.shape[0]} per-user losses for a forward pass over a different batch.")
        outputs = [out for _, _, out in layers]
        grads = torch.autograd.grad(per_user_loss.sum(), outputs, allow_unused=True)
        norms_sq = per_user_loss.new_zeros(per_user_loss.shape[0])
        parts = []
        for (layer, a, _), g in zip(layers, grads, strict=True):
            if g is None:  # the loss does not depend on this layer's output: its gradient is zero
                g = a.new_zeros(a.shape[0], layer.out_features)
            g_sq = g.pow(2).sum(1)
            if layer.weight.requires_grad:
                norms_sq += g_sq * a.pow(2).sum(1)
            if layer.bias is not None and layer.bias.requires_grad:
                norms_sq += g_sq
            parts.append((layer, a, g))
        norms = norms_sq.sqrt()
        factor = (self.max_grad_norm / (norms + _EPS)).clamp(max=1.0)
        finite = torch.isfinite(norms)
        if not bool(finite.all()):  # a user whose gradient is not finite contributes 0 (inside the ball)
            keep = finite.unsqueeze(1)
            factor = torch.where(finite, factor, torch.zeros_like(factor))
            parts = [(layer, torch.where(keep, a, 0.0), torch.where(keep, g, 0.0)) for layer, a, g in parts]
        for layer, a, g in parts:
            scaled = g * factor.unsqueeze(1)
            if layer.weight.requires_grad:
                layer.weight.grad = scaled.T @ a
            if layer.bias is not None and layer.bias.requires_grad:
                layer.bias.grad = scaled.sum(0)
        return norms

    def close(self) -> None:
        """Remove the hooks from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._seen = {}
