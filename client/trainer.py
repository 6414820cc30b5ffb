"""Local training and evaluation of a client over its own users (no Flower, no budget here).

Without central DP a client trains one model over its users and returns its weights.
With central DP (DP-FedAvg) the privacy unit of the server's clipping is the user, so a
client trains one copy of the global model per user (from the same global weights, with
local DP-SGD too under `local+central`), clips each user's update to `privacy.update-clip`
and returns the *sum* of the clipped updates; in the `device` topology that is one user. With
`privacy.user-sample-rate` q < 1 each user takes part in the round with probability q, by a coin
of the device's own (OS-seeded, not replayable from the run's seed): the server learns neither
who nor how many, and every user's inclusion is independent (the amplification the ledger claims).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import TypeVar

import torch

from shared.config import StrataConfig
from shared.data.matrices import UserTensors, train_tensors
from shared.model import StrataModel, build_model
from shared.privacy.plan import device_plan
from shared.seeds import LOCAL_TRAINING, make_seed
from shared.training import (
    DPSettings,
    TrainStats,
    kl_weight,
    make_optimizer,
    train_users,
    update_norm,
)

from .store import DeviceStore

M = TypeVar("M", bound=torch.nn.Module)

log = logging.getLogger(__name__)

Weights = OrderedDict[str, torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class TrainOutcome:
    """What one round of local training produced; `sample_rate` and `steps` are what its
    DP-SGD (if any) ran, for the ledger."""

    weights: Weights
    """New weights; under central DP the sum of clipped per-user updates."""
    examples: int
    mean_loss: float
    sample_rate: float
    steps: int


_templates: dict[tuple[int, object, int], tuple[torch.Tensor, StrataModel]] = {}
"""Per process: one freshly built model per (items, model config, seed), copied for each client."""


def _template(store: DeviceStore, config: StrataConfig) -> StrataModel:
    """Return the model of `config` over the store's catalog, built once per process (its random
    initialisation, overwritten by the received weights anyway, cost 2/3 of a simulated client)."""
    key = (store.n_items, config.model, config.run.seed)
    cached = _templates.get(key)
    if cached is None or cached[0] is not store.features:
        if len(_templates) >= 4:
            _templates.clear()
        cached = (store.features, build_model(store.n_items, config.model, store.features, seed=config.run.seed))
        _templates[key] = cached
    return cached[1]


def model_for(store: DeviceStore, config: StrataConfig, weights: dict[str, torch.Tensor]) -> StrataModel:
    """Return a model of `config` over the device's catalog, holding a copy of `weights` (the
    process's template is copied with its parameters replaced: training never touches it)."""
    template = _template(store, config)
    params = dict(template.named_parameters())
    missing = set(params) ^ set(weights)
    if missing:
        raise ValueError(f"received weights do not match the model: differing keys {sorted(missing)[:5]}")
    for name, p in params.items():
        if weights[name].shape != p.shape:
            raise ValueError(
                f"received weights do not match the model: {name} has shape "
                f"{tuple(weights[name].shape)}, expected {tuple(p.shape)}"
            )
    fresh = {
        id(p): torch.nn.Parameter(weights[name].detach().to(p.dtype, copy=True), requires_grad=p.requires_grad)
        for name, p in params.items()
    }
    return _with_parameters(template, fresh)


def _with_parameters(module: M, fresh: dict[int, torch.nn.Parameter]) -> M:
    """Copy `module`'s tree with each parameter replaced by `fresh[id(parameter)]`.

    Each module is a new object whose dicts and sets (parameters, buffers, hooks, children) are its
    own: hooks added to the copy (Opacus adds them) never reach the template. Buffers and plain
    attributes are shared: the model's buffers are its public item features, read only. One copy of
    the weights and none of the template's; `copy.deepcopy` with a memo did the same in 2.6 ms per
    device on the 600/200 model, 2.2 ms of it walking Python objects."""
    clone = module.__class__.__new__(module.__class__)
    clone.__dict__.update({k: v.copy() if isinstance(v, dict | set) else v for k, v in module.__dict__.items()})
    clone._parameters = {n: None if p is None else fresh[id(p)] for n, p in module._parameters.items()}
    clone._modules = {n: None if c is None else _with_parameters(c, fresh) for n, c in module._modules.items()}
    return clone


def parameters_of(model: torch.nn.Module, *, clone: bool = True) -> Weights:
    """Only trainable parameters travel (buffers such as public features stay). `clone=False` for a
    model that is dropped right after: its own tensors become the reply."""
    return OrderedDict((k, v.detach().clone() if clone else v.detach()) for k, v in model.named_parameters())


def local_plan(config: StrataConfig) -> tuple[float, int]:
    """Return (sample rate, steps per round) of the client's DP-SGD, from public quantities only."""
    return device_plan(config)


def clip_update(update: Weights, *, max_norm: float) -> tuple[Weights, float]:
    """Scale `update` in place to L2 norm (over all tensors) at most `max_norm`; return it and its
    norm before.

    An update that is not finite (a diverged local step) becomes 0, a point of the same ball: the
    sum it joins keeps its bound, and nothing but the mechanism's output leaves the device."""
    norm = update_norm(update)
    if not math.isfinite(norm):
        for v in update.values():
            v.zero_()
    elif norm > max_norm:
        for v in update.values():
            v.mul_(max_norm / norm)
    return update, norm


def sample_users(store: DeviceStore, rate: float) -> DeviceStore:
    """Return the store with each user kept independently with probability `rate` (everyone at 1),
    by coins from the OS: nobody can replay them from the run's public seed."""
    if rate >= 1.0:
        return store
    coins = random.SystemRandom()
    return dataclasses.replace(store, users=[u for u in store.users if coins.random() < rate])


def train_locally(
    store: DeviceStore,
    config: StrataConfig,
    weights: dict[str, torch.Tensor],
    *,
    server_round: int,
    dp: DPSettings | None,
) -> TrainOutcome:
    """One round of local training over the device's users, with DP-SGD when `dp` is given."""
    if config.privacy.central_dp:
        store = sample_users(store, config.privacy.user_sample_rate)
        if dp is None and config.train.local_epochs == 1 and config.train.weight_decay == 0 and store.n_users:
            if store.n_users == 1:
                return _clipped_one_step(store, config, weights, server_round=server_round)
            return _clipped_step_sum(store, config, weights, server_round=server_round)
        return _clipped_update_sum(store, config, weights, server_round=server_round, dp=dp)
    model = model_for(store, config, weights)
    data = train_tensors(store.users, store.n_items, config.data.positive_threshold)
    seed = make_seed(config.run.seed, LOCAL_TRAINING, store.client_id, server_round)
    stats = _seeded_train(model, data, config, kl_weight(server_round, config.model), seed, dp)
    return TrainOutcome(
        weights=parameters_of(model, clone=False),  # the model is this call's own
        examples=data.n_ratings,
        mean_loss=stats.mean_loss,
        sample_rate=stats.sample_rate,
        steps=stats.steps,
    )


def _seeded_train(
    model: StrataModel, data: UserTensors, config: StrataConfig, beta: float, seed: int, dp: DPSettings | None
) -> TrainStats:
    """Local SGD on `data`, reproducible from `seed` where it may be.

    Dropout and the VAE's sampling draw from torch's global generator: a private fork of it
    is seeded, so a non-DP round is reproducible (and a resumed run identical). DP noise and
    Poisson sampling use their own secret generators inside `train_users`.
    """
    optimizer = make_optimizer(model, "sgd", config.train.local_lr, config.train.weight_decay)
    # The CPU generator only (training runs on the CPU): torch.manual_seed would also queue lazy
    # CUDA/MPS/XPU seeding with a stack trace each, ~0.7 ms per device in a cohort's profile.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
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
    weights: dict[str, torch.Tensor],
    *,
    server_round: int,
    dp: DPSettings | None,
) -> TrainOutcome:
    """Central DP: train a copy of the global model on each user alone, clip each user's
    update to S and return their sum (norm ≤ n_users · S). Each user only touches their own
    copy, so local DP-SGD (if on) is one ledger entry per round for all of them."""
    clip = config.privacy.update_clip
    base = model_for(store, config, weights)
    start = parameters_of(base)
    total: Weights = OrderedDict((k, torch.zeros_like(v)) for k, v in start.items())
    beta = kl_weight(server_round, config.model)
    loss_sum, examples, clipped = 0.0, 0, 0
    sample_rate, steps = 0.0, 0
    for index, user in enumerate(store.users):
        model = copy.deepcopy(base)
        data = train_tensors([user], store.n_items, config.data.positive_threshold)
        seed = make_seed(config.run.seed, LOCAL_TRAINING, store.client_id, server_round, index)
        stats = _seeded_train(model, data, config, beta, seed, dp)
        update = OrderedDict((k, v.detach() - start[k]) for k, v in model.named_parameters())
        update, norm = clip_update(update, max_norm=clip)
        clipped += norm > clip
        for k, v in update.items():
            total[k].add_(v)
        if math.isfinite(stats.mean_loss):
            loss_sum += stats.mean_loss
        examples += data.n_ratings
        sample_rate, steps = stats.sample_rate, stats.steps
    log.debug("client %s: %d of %d user updates clipped to %g", store.client_id, clipped, store.n_users, clip)
    mean_loss = loss_sum / store.n_users if store.n_users else float("nan")
    return TrainOutcome(weights=total, examples=examples, mean_loss=mean_loss, sample_rate=sample_rate, steps=steps)


def _clipped_step_sum(
    store: DeviceStore, config: StrataConfig, weights: dict[str, torch.Tensor], *, server_round: int
) -> TrainOutcome:
    """`_clipped_update_sum` in one batched pass when each user's update is one plain SGD
    step: update_u = -lr·g_u, so Σ clip_S(update_u) = -lr·Σ clip_{S/lr}(g_u), which Opacus
    computes (ghost clipping, noise 0, public normaliser n) as n · (new - old) weights."""
    model = model_for(store, config, weights)
    start = parameters_of(model)
    data = train_tensors(store.users, store.n_items, config.data.positive_threshold)
    n, lr = data.n_users, config.train.local_lr
    clip = DPSettings(
        noise_multiplier=0.0, max_grad_norm=config.privacy.update_clip / lr, sample_rate=1.0, ghost_clipping=True
    )
    seed = make_seed(config.run.seed, LOCAL_TRAINING, store.client_id, server_round)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        stats = train_users(
            model,
            data,
            epochs=1,
            batch_size=n,
            optimizer=make_optimizer(model, "sgd", lr),
            beta=kl_weight(server_round, config.model),
            rating_weight=config.model.rating_weight,
            generator=torch.Generator().manual_seed(seed),
            dp=clip,
        )
    total = OrderedDict((k, (v.detach() - start[k]) * n) for k, v in model.named_parameters())
    return TrainOutcome(weights=total, examples=data.n_ratings, mean_loss=stats.mean_loss, sample_rate=1.0, steps=0)


def _clipped_one_step(
    store: DeviceStore, config: StrataConfig, weights: dict[str, torch.Tensor], *, server_round: int
) -> TrainOutcome:
    """`_clipped_step_sum` for a device of one user: a plain SGD step, its update clipped to S.

    clip_S(-lr·g) = -lr·clip_{S/lr}(g): the same update without the per-sample machinery (a test
    compares the two)."""
    model = model_for(store, config, weights)
    data = train_tensors(store.users, store.n_items, config.data.positive_threshold)
    seed = make_seed(config.run.seed, LOCAL_TRAINING, store.client_id, server_round)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        stats = train_users(
            model,
            data,
            epochs=1,
            batch_size=1,
            optimizer=make_optimizer(model, "sgd", config.train.local_lr),
            beta=kl_weight(server_round, config.model),
            rating_weight=config.model.rating_weight,
            generator=torch.Generator().manual_seed(seed),
            dp=None,
        )
    # In place on this call's own model: the update, then its clipping.
    update = OrderedDict((k, v.detach().sub_(weights[k])) for k, v in model.named_parameters())
    update, _ = clip_update(update, max_norm=config.privacy.update_clip)
    return TrainOutcome(weights=update, examples=data.n_ratings, mean_loss=stats.mean_loss, sample_rate=1.0, steps=0)
