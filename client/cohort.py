"""A simulated cohort node: one Flower node runs several virtual devices in turn (simulation only).

Each device is opened, trained or evaluated, noised, accounted and ledgered exactly as on a node
of its own (`client.device`, `rounds.train_round`, `release.evaluate`); its reply is then screened
as the server screens one (`shared.update_check`: names, shapes, dtypes, finite values, the
max-update-norm; under central DP, its sum of clipped user updates within users · S) and, if
accepted, its change from the global weights (under central DP that sum) is added to the cohort's
sum. What travels is that sum and each device's outcome, ε and key, so Flower carries one message
per cohort instead of one per device.

The sum is of changes, in float32, into buffers allocated once per cohort: a coordinate no device
changed sums to exactly 0 (the server adds the accepted count × the global weights back in float64),
and a cProfile of 47 ML-100K devices had the float64 sum of weights and the float64 norm check at
half of a cohort's time. The norm check takes the exact float64 path only when the float32 norms
cannot prove the bound (`shared.update_check.change_within_bound`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping

import numpy as np
import torch
from flwr.app import Context

from shared.config import StrataConfig
from shared.metrics import EVAL_FIELDS
from shared.protocol import (
    CohortRes,
    DeviceOutcome,
    EvaluateIns,
    EvaluateRes,
    Outcome,
    ReleaseIns,
    ReleaseRes,
    TrainIns,
    TrainRes,
)
from shared.update_check import (
    InvalidUpdate,
    change_within_bound,
    check_change_norm,
    check_clipped_sum,
    check_update,
    received_update,
)

from .device import Device, open_device
from .release import contribute, evaluate
from .rounds import train_round

log = logging.getLogger(__name__)


def _outcome(
    index: int, reply: TrainRes | EvaluateRes | ReleaseRes, outcome: Outcome, reason: str = ""
) -> DeviceOutcome:
    return DeviceOutcome(device=index, outcome=outcome, epsilon=reply.epsilon, key=reply.key, reason=reason)


def _check_simulated(context: Context) -> None:
    if context.node_config.get("data-path") or context.node_config.get("ledger-dir"):
        raise ValueError("a cohort instruction is for simulation only: a real device answers for itself alone.")


class ChangeSum:
    """The float32 sum of accepted devices' changes from the global weights, screened first."""

    def __init__(self, current: Mapping[str, torch.Tensor], max_update_norm: float) -> None:
        self.current = current
        self.max_update_norm = max_update_norm
        self.change = OrderedDict((k, torch.empty_like(v)) for k, v in current.items())
        self.total: OrderedDict[str, torch.Tensor] | None = None

    def add(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Screen `weights` as the server would (raise `InvalidUpdate`), then add their change.

        A change whose float32 norm proves it within a positive bound is finite, and so are the
        weights (the global ones are): only without that proof are the values checked (one pass less)."""
        bounded = self.max_update_norm > 0
        check_update(weights, self.current, values=not bounded)
        for k, v in self.current.items():
            torch.sub(weights[k], v, out=self.change[k])
        if bounded and not change_within_bound(self.change, self.max_update_norm):
            check_update(weights, self.current)  # NaN or ±Inf named as such
            check_change_norm(weights, self.current, self.max_update_norm)  # the exact decision
        self._accumulate(self.change)

    def add_clipped(self, update: Mapping[str, torch.Tensor], users: int, clip: float) -> None:
        """Central DP: screen a device's sum of clipped user updates as the server would (names,
        shapes, finite values, norm ≤ users · S), then add it."""
        check_update(update, self.current)
        check_clipped_sum(update, users, clip)
        self._accumulate(update)

    def _accumulate(self, change: Mapping[str, torch.Tensor]) -> None:
        if self.total is None:
            self.total = OrderedDict((k, torch.zeros_like(v)) for k, v in self.current.items())
        for k, d in change.items():
            self.total[k].add_(d)


def train_cohort(config: StrataConfig, context: Context, ins: TrainIns, devices: tuple[int, ...]) -> CohortRes:
    """Train each of `devices` on its own from the global weights; return the sum of the accepted changes."""
    _check_simulated(context)
    summed = ChangeSum(ins.weights(), config.federation.max_update_norm)
    p = config.privacy
    users = 1 if config.federation.topology == "device" else p.population  # the server's public bound
    outcomes = []
    for index in devices:
        device = open_device(config, context, {**context.node_config, "partition-id": index}, mirror=False)
        reply = train_round(device.store, config, ins, device.budget, device.policy)
        device.close(context)
        if reply.refused:
            outcomes.append(_outcome(index, reply, "refused", reply.reason))
            continue
        try:  # what the server would decode from the reply (a compact change added to the global weights)
            update = received_update(reply.weights, reply.compact, summed.current, updates=p.central_dp)
            if p.central_dp:
                summed.add_clipped(update, users, p.update_clip)
            else:
                summed.add(update)
        except InvalidUpdate as exc:
            outcomes.append(_outcome(index, reply, "rejected", str(exc)))
            continue
        outcomes.append(_outcome(index, reply, "accepted"))
    return CohortRes(outcomes=tuple(outcomes), changes=dict(summed.total) if summed.total is not None else None)


def evaluate_cohort(config: StrataConfig, context: Context, ins: EvaluateIns, devices: tuple[int, ...]) -> CohortRes:
    """Ask each of `devices` for its evaluation release; return the sum of those it released."""
    return _sum_releases(
        config, context, devices, lambda d: evaluate(d.store, config, ins, d.budget, d.policy), (len(EVAL_FIELDS),)
    )


def contribute_cohort(config: StrataConfig, context: Context, ins: ReleaseIns, devices: tuple[int, ...]) -> CohortRes:
    """Ask each of `devices` for its part of a one-shot release (popularity prior, census); return their sum."""
    return _sum_releases(config, context, devices, lambda d: contribute(d.store, config, ins, d.budget, d.policy))


def _sum_releases(
    config: StrataConfig,
    context: Context,
    devices: tuple[int, ...],
    answer: Callable[[Device], EvaluateRes | ReleaseRes],
    shape: tuple[int, ...] | None = None,
) -> CohortRes:
    """Each device's release sum (noised and ledgered on the device as on its own node), added up;
    a sum of another shape than `shape` (or than the first device's) or not finite is rejected."""
    _check_simulated(context)
    total: np.ndarray | None = None
    outcomes = []
    for index in devices:
        device = open_device(config, context, {**context.node_config, "partition-id": index}, mirror=False)
        reply = answer(device)
        device.close(context)
        if reply.total is None:
            outcomes.append(_outcome(index, reply, "refused", reply.reason))
            continue
        expected = shape or (total.shape if total is not None else reply.total.shape)
        if reply.total.shape != expected or not np.all(np.isfinite(reply.total)):
            outcomes.append(
                _outcome(index, reply, "rejected", f"release sum of shape {reply.total.shape} or not finite")
            )
            continue
        total = reply.total.astype(np.float64) if total is None else total + reply.total
        outcomes.append(_outcome(index, reply, "accepted"))
    return CohortRes(outcomes=tuple(outcomes), total=total)
