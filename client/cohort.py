"""A simulated cohort node: one Flower node runs several virtual devices in turn (simulation only).

Each device is opened, trained or evaluated, noised, accounted and ledgered exactly as on a node
of its own (`client.device`, `rounds.train_round`, `release.evaluate`); its reply is then screened
as the server screens one (`shared.update_check`: names, shapes, dtypes, finite values, the
max-update-norm) and, if accepted, added to the cohort's sum. What travels is that sum and each
device's outcome, ε and key, so Flower carries one message per cohort instead of one per device.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import torch
from flwr.app import Context

from shared.config import StrataConfig
from shared.metrics import EVAL_FIELDS
from shared.protocol import CohortRes, DeviceOutcome, EvaluateIns, EvaluateRes, Outcome, TrainIns, TrainRes
from shared.update_check import InvalidUpdate, check_change_norm, check_update

from .device import open_device
from .release import evaluate
from .rounds import train_round

log = logging.getLogger(__name__)


def _outcome(index: int, reply: TrainRes | EvaluateRes, outcome: Outcome, reason: str = "") -> DeviceOutcome:
    return DeviceOutcome(device=index, outcome=outcome, epsilon=reply.epsilon, key=reply.key, reason=reason)


def _check_simulated(context: Context) -> None:
    if context.node_config.get("data-path") or context.node_config.get("ledger-dir"):
        raise ValueError("a cohort instruction is for simulation only: a real device answers for itself alone.")


def train_cohort(config: StrataConfig, context: Context, ins: TrainIns, devices: tuple[int, ...]) -> CohortRes:
    """Train each of `devices` on its own from the global weights; return the sum of the accepted updates."""
    _check_simulated(context)
    current = ins.weights()
    total: OrderedDict[str, torch.Tensor] | None = None
    outcomes = []
    for index in devices:
        device = open_device(config, context, {**context.node_config, "partition-id": index}, mirror=False)
        reply = train_round(device.store, config, ins, device.budget, device.policy)
        device.close(context)
        if reply.weights is None:
            outcomes.append(_outcome(index, reply, "refused", reply.reason))
            continue
        try:
            check_update(reply.weights, current)
            check_change_norm(reply.weights, current, config.federation.max_update_norm)
        except InvalidUpdate as exc:
            outcomes.append(_outcome(index, reply, "rejected", str(exc)))
            continue
        if total is None:  # float64: the sum does not depend on the order devices run in
            total = OrderedDict((k, torch.zeros_like(v, dtype=torch.float64)) for k, v in current.items())
        for k, v in reply.weights.items():
            total[k].add_(v)
        outcomes.append(_outcome(index, reply, "accepted"))
    return CohortRes(outcomes=tuple(outcomes), weights=dict(total) if total is not None else None)


def evaluate_cohort(config: StrataConfig, context: Context, ins: EvaluateIns, devices: tuple[int, ...]) -> CohortRes:
    """Ask each of `devices` for its evaluation release; return the sum of those it released."""
    _check_simulated(context)
    total: np.ndarray | None = None
    outcomes = []
    for index in devices:
        device = open_device(config, context, {**context.node_config, "partition-id": index}, mirror=False)
        reply = evaluate(device.store, config, ins, device.budget, device.policy)
        device.close(context)
        if reply.total is None:
            outcomes.append(_outcome(index, reply, "refused", reply.reason))
            continue
        if reply.total.shape != (len(EVAL_FIELDS),) or not np.all(np.isfinite(reply.total)):
            outcomes.append(
                _outcome(index, reply, "rejected", f"evaluation sum of shape {reply.total.shape} or not finite")
            )
            continue
        total = reply.total.astype(np.float64) if total is None else total + reply.total
        outcomes.append(_outcome(index, reply, "accepted"))
    return CohortRes(outcomes=tuple(outcomes), total=total)
