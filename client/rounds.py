"""One round on the device: the budget decides, the trainer trains, the ledger records.

Each function answers one instruction of `shared.protocol` with its reply.
"""

from __future__ import annotations

import logging

from shared.config import StrataConfig
from shared.privacy.ledger import LedgerEntry
from shared.privacy.release import planned_releases
from shared.protocol import EvaluateIns, EvaluateRes, TrainIns, TrainRes
from shared.training import DPSettings

from .budget import ClientBudget
from .store import DeviceStore
from .trainer import evaluate_locally, local_plan, train_locally

log = logging.getLogger(__name__)


def noise_multiplier_for(config: StrataConfig, store: DeviceStore, budget: ClientBudget, run_id: str) -> float:
    """σ given directly, or calibrated so that this run's planned rounds bring the device's
    total ε (earlier runs in its ledger and this run's releases included) to `target-epsilon`."""
    p = config.privacy
    if p.target_epsilon <= 0:
        return p.noise_multiplier
    q, steps_per_round = local_plan(config, store)
    planned = max(1, round(config.federation.rounds * config.federation.fraction_train))
    return budget.calibrated_sigma(
        target_epsilon=p.target_epsilon,
        sample_rate=q,
        steps=steps_per_round * planned,
        run_id=run_id,
        planned=planned_releases(config, run_id=run_id, holder=store.client_id, server=False),
    )


def train_round(store: DeviceStore, config: StrataConfig, ins: TrainIns, budget: ClientBudget) -> TrainRes:
    """Train one round (refusing when the budget would be exceeded); record its DP-SGD release."""
    p = config.privacy
    dp: DPSettings | None = None
    if p.local_dp:
        sigma = noise_multiplier_for(config, store, budget, ins.run_id)
        dp = DPSettings(noise_multiplier=sigma, max_grad_norm=p.max_grad_norm, ghost_clipping=p.ghost_clipping)
        q, steps = local_plan(config, store)
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
            log.warning("client %s refused to train: %s", store.client_id, reason)
            return TrainRes(
                weights=None, num_users=store.n_users, num_examples=0, train_loss=0.0, epsilon=budget.spent()
            )
    outcome = train_locally(store, config, ins.weights(), server_round=ins.server_round, dp=dp)
    if dp is not None and outcome.steps > 0:
        budget.record(
            LedgerEntry.dp_sgd(
                noise_multiplier=dp.noise_multiplier,
                sample_rate=outcome.sample_rate,
                steps=outcome.steps,
                max_grad_norm=dp.max_grad_norm,
                run_id=ins.run_id,
                round=ins.server_round,
                client=store.client_id,
            )
        )
    return TrainRes(
        weights=outcome.weights,
        num_users=store.n_users,
        num_examples=outcome.examples,
        train_loss=outcome.mean_loss,
        epsilon=budget.spent(),
    )


def evaluate_round(store: DeviceStore, config: StrataConfig, ins: EvaluateIns) -> EvaluateRes:
    """Return evaluation sums and counts of the global weights on the device's held-out ratings."""
    return EvaluateRes(sums=evaluate_locally(store, config, ins.weights()), num_users=store.n_users)
