"""Local training and evaluation of a client over its own users (no Flower here).

Without central DP a client trains one model over its users and returns its weights.
With central DP (DP-FedAvg) the privacy unit of the server's clipping is the user, so a
client trains one copy of the global model per user (from the same global weights, with
local DP-SGD too under `local+central`), clips each user's update to `privacy.update-clip`
and returns the *sum* of the clipped updates; in the `device` topology that is one user.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import torch

from shared.config import StrataConfig
from shared.data.matrices import train_tensors
from shared.metrics import MetricSums, evaluate_model
from shared.model import StrataModel, build_model
from shared.privacy.accounting import (
    calibrate_noise_multiplier,
    default_delta,
    epsilon_of,
)
from shared.privacy.ledger import Ledger, LedgerEntry
from shared.privacy.release import planned_releases
from shared.training import (
    DPSettings,
    make_optimizer,
    poisson_plan,
    train_users,
    update_norm,
)

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
    """New weights; under central DP the sum of clipped per-user updates. None when the client refused to train."""
    users: int
    examples: int
    mean_loss: float
    epsilon: float
    refused: str = ""


def noise_multiplier_for(config: StrataConfig, store: DeviceStore, ledger: Ledger, run_id: str) -> float:
    """σ given directly, or calibrated so that this run's planned rounds bring the device's
    total ε (earlier runs in its ledger and this run's releases included) to `target-epsilon`."""
    p = config.privacy
    if p.target_epsilon <= 0:
        return p.noise_multiplier
    q, steps_per_round = local_plan(config, store)
    planned = max(1, round(config.federation.rounds * config.federation.fraction_train))
    return _calibrated(
        p.target_epsilon,
        resolved_delta(config, store),
        q,
        steps_per_round * planned,
        p.accountant,
        (
            *(e for e in ledger.entries if e.run_id != run_id),
            *planned_releases(config, run_id=run_id, holder=store.client_id, server=False),
        ),
    )


@lru_cache(maxsize=1024)
def _calibrated(target: float, delta: float, q: float, steps: int, accountant: str, prior: tuple[LedgerEntry, ...]) -> float:
    return calibrate_noise_multiplier(
        target_epsilon=target, delta=delta, sample_rate=q, steps=steps, accountant=accountant, prior=prior
    )


def local_plan(config: StrataConfig, store: DeviceStore) -> tuple[float, int]:
    """(sample rate, steps per round) of the client's DP-SGD: over all its users, or over
    each user alone under central DP (one model copy per user)."""
    n = min(store.n_users, 1) if config.privacy.central_dp else store.n_users
    q, steps_per_epoch = poisson_plan(n, config.train.batch_size)
    return q, config.train.local_epochs * steps_per_epoch


def clip_update(update: OrderedDict[str, torch.Tensor], *, max_norm: float) -> tuple[OrderedDict[str, torch.Tensor], float]:
    """`update` scaled to L2 norm (over all tensors) at most `max_norm`; and its norm before."""
    norm = update_norm(update)
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return OrderedDict((k, v * scale) for k, v in update.items()), norm


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
    if p.local_dp:
        sigma = noise_multiplier_for(config, store, ledger, run_id)
        dp = DPSettings(noise_multiplier=sigma, max_grad_norm=p.max_grad_norm, ghost_clipping=p.ghost_clipping)
        q, steps = local_plan(config, store)
        planned = LedgerEntry("dp-sgd", sigma, q, steps, run_id, server_round, store.client_id, p.max_grad_norm)
        if p.max_epsilon > 0:
            after = epsilon_of([*ledger.entries, planned], delta, p.accountant)
            if after > p.max_epsilon:
                reason = f"budget: this round would bring ε to {after:.3f} > max-epsilon {p.max_epsilon}"
                return LocalResult(None, store.n_users, 0, float("nan"), spent, refused=reason)
    if p.central_dp:
        if dp is None and config.train.local_epochs == 1 and config.train.weight_decay == 0 and store.n_users:
            return _clipped_step_sum(store, config, weights, server_round=server_round, spent=spent)
        return _clipped_update_sum(
            store, config, weights, server_round=server_round, run_id=run_id, ledger=ledger, dp=dp, spent=spent
        )
    model = model_for(store, config, weights)
    data = train_tensors(store.users, store.n_items, config.data.positive_threshold)
    seed = derive_seed(config.run.seed, store.client_id, server_round)
    stats = _seeded_train(model, data, config, beta_for_round(config, server_round), seed, dp)
    if dp is not None:
        entry = LedgerEntry(
            "dp-sgd", dp.noise_multiplier, stats.sample_rate, stats.steps, run_id, server_round, store.client_id, dp.max_grad_norm
        )
        ledger.append(entry)
        spent = epsilon_of(ledger.entries, delta, p.accountant)
    return LocalResult(parameters_of(model), store.n_users, data.n_ratings, stats.mean_loss, spent)


def _seeded_train(model: StrataModel, data, config: StrataConfig, beta: float, seed: int, dp: DPSettings | None):
    """Local SGD on `data`, reproducible from `seed` where it may be.

    Dropout and the VAE's sampling draw from torch's global generator: a private fork of it
    is seeded, so a non-DP round is reproducible (and a resumed run identical). DP noise and
    Poisson sampling use their own secret generators inside `train_users`.
    """
    optimizer = make_optimizer(model, "sgd", config.train.local_lr, config.train.weight_decay)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return train_users(
            model,
            data,
            epochs=config.train.local_epochs,
            batch_size=config.train.batch_size,
            optimizer=optimizer,
            beta=beta,
            rating_weight=config.model.rating_weight,
            generator=torch.Generator().manual_seed(seed),
            dp=dp,
        )


def _clipped_update_sum(
    store: DeviceStore,
    config: StrataConfig,
    weights: OrderedDict[str, torch.Tensor],
    *,
    server_round: int,
    run_id: str,
    ledger: Ledger,
    dp: DPSettings | None,
    spent: float,
) -> LocalResult:
    """Central DP: train a copy of the global model on each user alone, clip each user's
    update to S and return their sum (norm ≤ n_users · S). Each user only touches their own
    copy, so local DP-SGD (if on) is one ledger entry per round for all of them."""
    p = config.privacy
    base = model_for(store, config, weights)
    start = parameters_of(base)
    total: OrderedDict[str, torch.Tensor] = OrderedDict((k, torch.zeros_like(v)) for k, v in start.items())
    beta = beta_for_round(config, server_round)
    loss_sum, examples, clipped = 0.0, 0, 0
    sample_rate, steps = 0.0, 0
    for index, user in enumerate(store.users):
        model = copy.deepcopy(base)
        data = train_tensors([user], store.n_items, config.data.positive_threshold)
        seed = derive_seed(config.run.seed, store.client_id, server_round, index)
        stats = _seeded_train(model, data, config, beta, seed, dp)
        update = OrderedDict((k, v.detach() - start[k]) for k, v in model.named_parameters())
        update, norm = clip_update(update, max_norm=p.update_clip)
        clipped += norm > p.update_clip
        for k, v in update.items():
            total[k].add_(v)
        if math.isfinite(stats.mean_loss):
            loss_sum += stats.mean_loss
        examples += data.n_ratings
        sample_rate, steps = stats.sample_rate, stats.steps
    log.debug("client %s: %d of %d user updates clipped to %g", store.client_id, clipped, store.n_users, p.update_clip)
    if dp is not None and store.n_users:
        ledger.append(
            LedgerEntry("dp-sgd", dp.noise_multiplier, sample_rate, steps, run_id, server_round, store.client_id, dp.max_grad_norm)
        )
        spent = epsilon_of(ledger.entries, resolved_delta(config, store), p.accountant)
    mean_loss = loss_sum / store.n_users if store.n_users else float("nan")
    return LocalResult(total, store.n_users, examples, mean_loss, spent)


def _clipped_step_sum(
    store: DeviceStore, config: StrataConfig, weights: OrderedDict[str, torch.Tensor], *, server_round: int, spent: float
) -> LocalResult:
    """`_clipped_update_sum` in one batched pass when each user's update is one plain SGD
    step: update_u = -lr·g_u, so Σ clip_S(update_u) = -lr·Σ clip_{S/lr}(g_u), which Opacus
    computes (ghost clipping, noise 0, public normaliser n) as n · (new - old) weights."""
    model = model_for(store, config, weights)
    start = parameters_of(model)
    data = train_tensors(store.users, store.n_items, config.data.positive_threshold)
    n, lr = data.n_users, config.train.local_lr
    clip = DPSettings(noise_multiplier=0.0, max_grad_norm=config.privacy.update_clip / lr, ghost_clipping=True)
    seed = derive_seed(config.run.seed, store.client_id, server_round)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        stats = train_users(
            model, data, epochs=1, batch_size=n, optimizer=make_optimizer(model, "sgd", lr),
            beta=beta_for_round(config, server_round), rating_weight=config.model.rating_weight,
            generator=torch.Generator().manual_seed(seed), dp=clip,
        )
    total = OrderedDict((k, (v.detach() - start[k]) * n) for k, v in model.named_parameters())
    return LocalResult(total, n, data.n_ratings, stats.mean_loss, spent)


def evaluate_locally(store: DeviceStore, config: StrataConfig, weights: OrderedDict[str, torch.Tensor]) -> MetricSums:
    model = model_for(store, config, weights)
    return evaluate_model(model, store.users, store.n_items, config.data.positive_threshold)
