"""One training round on the device: the policy and budget decide, the trainer trains, the ledger records.

It answers a `TrainIns` with a `TrainRes` (evaluation is a release: `release.evaluate`).
The round's loss stays in the device's own log.
"""

from __future__ import annotations

import logging

import torch

from shared.config import StrataConfig
from shared.privacy.ledger import LedgerEntry
from shared.privacy.release import planned_releases
from shared.protocol import TrainIns, TrainRes, Weights
from shared.seeds import TRANSPORT, make_seed
from shared.training import DPSettings
from shared.transport import encode, transport_refusal, within

from .budget import ClientBudget
from .planted_bug import noise_divisor
from .policy import PERMISSIVE, Policy, refusal
from .store import DeviceStore
from .trainer import local_plan, train_locally

log = logging.getLogger(__name__)


def noise_multiplier_for(config: StrataConfig, store: DeviceStore, budget: ClientBudget, run_id: str) -> float:
    """Return σ given directly, or calibrated so that the device's total ε (earlier runs in its
    ledger and this run's releases included) reaches `target-epsilon` in the worst case.

    The worst case is a device that takes part in every one of the configured rounds: under
    any sampling a device may be drawn every round, so the target holds however often it is.
    """
    p = config.privacy
    if p.target_epsilon <= 0:
        return p.noise_multiplier
    q, steps_per_round = local_plan(config)
    return budget.calibrated_sigma(
        target_epsilon=p.target_epsilon,
        sample_rate=q,
        steps=steps_per_round * config.federation.rounds,
        run_id=run_id,
        planned=planned_releases(config, run_id=run_id, holder=store.client_id, server=False),
    )


def _refused(store: DeviceStore, budget: ClientBudget, reason: str) -> TrainRes:
    log.warning("client %s refused to train: %s", store.client_id, reason)
    return TrainRes(weights=None, epsilon=budget.spent(), reason=reason, key=budget.key)


def train_round(
    store: DeviceStore, config: StrataConfig, ins: TrainIns, budget: ClientBudget, policy: Policy = PERMISSIVE
) -> TrainRes:
    """Train one round, refusing what the device's policy or budget forbids; record its DP-SGD release."""
    p = config.privacy
    dp: DPSettings | None = None
    reason = refusal(policy, config) or transport_refusal(
        config.federation.transport, central_dp=p.central_dp, topology=config.federation.topology
    )
    if reason:
        return _refused(store, budget, reason)
    if p.local_dp:
        sigma = noise_multiplier_for(config, store, budget, ins.run_id)
        reason = refusal(policy, config, noise_multiplier=sigma)
        if reason:
            return _refused(store, budget, reason)
        q, steps = local_plan(config)
        dp = DPSettings(
            noise_multiplier=sigma / noise_divisor(),  # 1 outside an audit's planted-bug experiment
            max_grad_norm=p.max_grad_norm,
            sample_rate=q,
            ghost_clipping=p.ghost_clipping,
        )
        planned = LedgerEntry.dp_sgd(
            noise_multiplier=sigma,
            sample_rate=q,
            steps=steps,
            max_grad_norm=p.max_grad_norm,
            run_id=ins.run_id,
            round=ins.server_round,
            client=store.client_id,
        )
        reason = budget.refusal(planned)
        if reason:
            return _refused(store, budget, reason)
    outcome = train_locally(store, config, ins.weights(), server_round=ins.server_round, dp=dp)
    if dp is not None and outcome.steps > 0:
        budget.record(
            LedgerEntry.dp_sgd(
                noise_multiplier=sigma,
                sample_rate=outcome.sample_rate,
                steps=outcome.steps,
                max_grad_norm=dp.max_grad_norm,
                run_id=ins.run_id,
                round=ins.server_round,
                client=store.client_id,
            )
        )
    log.debug(
        "client %s round %d: mean loss %.4f over %d examples (device log only)",
        store.client_id,
        ins.server_round,
        outcome.mean_loss,
        outcome.examples,
    )
    return _reply(store, config, ins, budget, outcome.weights)


def _reply(store: DeviceStore, config: StrataConfig, ins: TrainIns, budget: ClientBudget, weights: Weights) -> TrainRes:
    """Return the round's reply: the weights, or under a compact `federation.transport` the change (under
    central DP the clipped update, brought back within S after encoding: `shared/transport.py`)."""
    transport, p = config.federation.transport, config.privacy
    if transport == "float32":
        return TrainRes(weights=weights, epsilon=budget.spent(), key=budget.key)
    current = ins.weights()
    change = weights if p.central_dp else {k: weights[k] - v for k, v in current.items()}
    coins = torch.Generator().manual_seed(make_seed(config.run.seed, TRANSPORT, store.client_id, ins.server_round))
    compact = encode(change, transport, coins)
    if p.central_dp:  # one user's clipped update (transport_refusal): the bound the server's noise is for
        compact = within(compact, p.update_clip)
    return TrainRes(weights=None, epsilon=budget.spent(), key=budget.key, compact=compact)
