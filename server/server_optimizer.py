"""How the server applies the averaged client update Δ to the global weights.

FedAvg: w ← w + Δ. FedAdam (Reddi et al. 2021): Δ is a pseudo-gradient for Adam with
bias correction, which makes the step size independent of the clients' learning rate.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from shared.run_dir import JsonDict

Weights = OrderedDict[str, torch.Tensor]


class ServerOptimizer:
    """Apply the averaged client update to the global weights: FedAvg or FedAdam."""

    def __init__(
        self, kind: str, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        if kind not in ("fedavg", "fedadam"):
            raise ValueError(f"server optimizer must be 'fedavg' or 'fedadam', not {kind!r}.")
        if lr <= 0:
            raise ValueError("The server learning rate should be a positive value.")
        self.kind, self.lr, self.betas, self.eps = kind, lr, betas, eps
        self.t = 0
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}

    def step(self, weights: Weights, delta: Weights) -> Weights:
        """Return new global weights from the current ones and the averaged update."""
        if self.kind == "fedavg":
            return OrderedDict((k, weights[k] + delta[k]) for k in weights)
        self.t += 1
        b1, b2 = self.betas
        out: Weights = OrderedDict()
        for k, w in weights.items():
            d = delta[k]
            m = self.m.get(k, torch.zeros_like(w)).mul_(b1).add_(d, alpha=1 - b1)
            v = self.v.get(k, torch.zeros_like(w)).mul_(b2).addcmul_(d, d, value=1 - b2)
            self.m[k], self.v[k] = m, v
            m_hat = m / (1 - b1**self.t)
            v_hat = v / (1 - b2**self.t)
            out[k] = w + self.lr * m_hat / (v_hat.sqrt() + self.eps)
        return out

    def state_dict(self) -> JsonDict:
        """Return the optimizer's state (step count and Adam moments) for a checkpoint."""
        return {"kind": self.kind, "t": self.t, "m": self.m, "v": self.v}

    def load_state_dict(self, state: JsonDict) -> None:
        """Restore the state of `state_dict()`; the kind must match."""
        if state["kind"] != self.kind:
            raise ValueError(
                f"checkpoint was written with server optimizer {state['kind']!r}, config says {self.kind!r}."
            )
        self.t, self.m, self.v = state["t"], state["m"], state["v"]
