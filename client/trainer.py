"""Local training and evaluation of a client over its own users (no Flower here)."""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import torch

from shared.config import StrataConfig
from shared.data.matrices import train_tensors
from shared.metrics import MetricSums, evaluate_model
from shared.model import StrataModel, build_model
from shared.privacy.accounting import calibrate_noise_multiplier, default_delta, epsilon_of
from shared.privacy.ledger import Ledger, LedgerEntry
from shared.training import DPSettings, make_optimizer, poisson_plan, train_users

from .store import DeviceStore

log = logging.getLogger(__name__)


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from the root seed and identifiers (no process-random hash())."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def model_for(store: DeviceStore, config: StrataConfig, weights: OrderedDict[str, torch.Tensor]) -> StrataModel:
    model = build_model(store.n_items, config.model, store.features, seed=config.run.seed)
    missing = set(dict(model.named_parameters())) ^ set(weights)
    if missing:
        raise ValueError(f"received weights do not match the model: differing keys {sorted(missing)[:5]}")
    model.load_state_dict(weights, strict=False)
    return model


def parameters_of(model: torch.nn.Module) -> OrderedDict[str, torch.Tensor]:
    """Only trainable parameters travel (buffers such as public features stay)."""
    return OrderedDict((k, v.detach().clone()) for k, v in model.named_parameters())


def resolved_delta(config: StrataConfig, store: DeviceStore) -> float:
    return config.privacy.delta or default_delta(store.total_users)


def beta_for_round(config: StrataConfig, server_round: int) -> float:
    """KL weight: β grows linearly over `model.anneal-steps` global updates (rounds here)."""
    m = config.model
    return min(m.beta_max, m.beta_max * server_round / max(m.anneal_steps, 1))


@dataclass(frozen=True)
class LocalResult:
    weights: OrderedDict[str, torch.Tensor] | None
    """None when the client refused to train."""
    users: int
    examples: int
    mean_loss: float
    epsilon: float
    refused: str = ""


def noise_multiplier_for(config: StrataConfig, store: DeviceStore, ledger: Ledger, run_id: str) -> float:
    """σ given directly, or calibrated so that this run's planned rounds bring the device's
    total ε (earlier runs in its ledger included) to `target-epsilon`."""
    p = config.privacy
    if p.target_epsilon <= 0:
        return p.noise_multiplier
    q, steps_per_epoch = poisson_plan(store.n_users, config.train.batch_size)
    steps_per_round = config.train.local_epochs * steps_per_epoch
    planned = max(1, round(config.federation.rounds * config.federation.fraction_train))
    return _calibrated(
        p.target_epsilon,
        resolved_delta(config, store),
        q,
        steps_per_round * planned,
        p.accountant,
        tuple(e for e in ledger.entries if e.run_id != run_id),
    )


@lru_cache(maxsize=1024)
def _calibrated(target: float, delta: float, q: float, steps: int, accountant: str, prior: tuple[LedgerEntry, ...]) -> float:
    return calibrate_noise_multiplier(
        target_epsilon=target, delta=delta, sample_rate=q, steps=steps, accountant=accountant, prior=prior
    )


def train_locally(
    store: DeviceStore,
    config: StrataConfig,
    weights: OrderedDict[str, torch.Tensor],
    *,
    server_round: int,
    run_id: str,
    ledger: Ledger,
) -> LocalResult:
    """One round of local training; appends the DP release to the ledger before replying."""
    p = config.privacy
    delta = resolved_delta(config, store)
    spent = epsilon_of(ledger.entries, delta, p.accountant) if ledger.entries else 0.0
    dp: DPSettings | None = None
    if p.mode == "local":
        sigma = noise_multiplier_for(config, store, ledger, run_id)
        dp = DPSettings(noise_multiplier=sigma, max_grad_norm=p.max_grad_norm, ghost_clipping=p.ghost_clipping)
        q, steps_per_epoch = poisson_plan(store.n_users, config.train.batch_size)
        steps = config.train.local_epochs * steps_per_epoch
        planned = LedgerEntry("dp-sgd", sigma, q, steps, run_id, server_round, store.client_id, p.max_grad_norm)
        if p.max_epsilon > 0:
            after = epsilon_of([*ledger.entries, planned], delta, p.accountant)
            if after > p.max_epsilon:
                reason = f"budget: this round would bring ε to {after:.3f} > max-epsilon {p.max_epsilon}"
                return LocalResult(None, store.n_users, 0, float("nan"), spent, refused=reason)
    model = model_for(store, config, weights)
    data = train_tensors(store.users, store.n_items, config.data.positive_threshold)
    seed = derive_seed(config.run.seed, store.client_id, server_round)
    optimizer = make_optimizer(model, "sgd", config.train.local_lr, config.train.weight_decay)
    # Dropout, the VAE's sampling and Opacus' noise draw from torch's global generator:
    # seed a private fork of it so a round is reproducible (and a resumed run identical).
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        stats = train_users(
            model,
            data,
            epochs=config.train.local_epochs,
            batch_size=config.train.batch_size,
            optimizer=optimizer,
            beta=beta_for_round(config, server_round),
            rating_weight=config.model.rating_weight,
            generator=torch.Generator().manual_seed(seed),
            dp=dp,
        )
    if dp is not None:
        entry = LedgerEntry(
            "dp-sgd", dp.noise_multiplier, stats.sample_rate, stats.steps, run_id, server_round, store.client_id, dp.max_grad_norm
        )
        ledger.append(entry)
        spent = epsilon_of(ledger.entries, delta, p.accountant)
    return LocalResult(parameters_of(model), store.n_users, data.n_ratings, stats.mean_loss, spent)


def evaluate_locally(store: DeviceStore, config: StrataConfig, weights: OrderedDict[str, torch.Tensor]) -> MetricSums:
    model = model_for(store, config, weights)
    return evaluate_model(model, store.users, store.n_items, config.data.positive_threshold)
