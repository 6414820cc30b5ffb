"""The training loop over a set of users, plain or with Opacus DP-SGD (privacy unit = user).

Used by the federated client (its own users, a few local epochs per round) and by the
central reference (all users, many epochs). DP-SGD samples users by Poisson sampling,
clips each user's gradient to `max_grad_norm`, adds N(0, σ²C²) and divides by the
*public* normaliser `batch_size` (never by the private dataset size, Opacus #819).
"""

from __future__ import annotations

import logging
import math
import secrets
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, TensorDataset

from .config import ModelConfig
from .data.matrices import UserTensors
from .bookkeeping import BookKeeping
from .model import StrataLoss, StrataModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DPSettings:
    """Parameters of one DP-SGD release; every one of them is public (config and public plan)."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float = 1.0
    """q of the Poisson sampling of users, from `shared.privacy.plan` (never from the private count)."""
    ghost_clipping: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"the DP-SGD sample rate must be in (0, 1], got {self.sample_rate}.")


@dataclass(frozen=True)
class TrainStats:
    """What a training call did; `sample_rate` and `steps` are what the accountant needs."""

    steps: int
    sample_rate: float
    mean_loss: float
    users: int


def update_norm(update: dict[str, torch.Tensor]) -> float:
    """Return the L2 norm of a model update over all its tensors together (in float64)."""
    return math.sqrt(sum(float(torch.linalg.vector_norm(v, dtype=torch.float64)) ** 2 for v in update.values()))


def kl_weight(step: int, model: ModelConfig) -> float:
    """β after `step` updates: linear from 0 to `beta-max` over `anneal-steps` (Liang et al. 2018).

    The central reference counts optimizer steps; a federated client counts rounds.
    """
    return min(model.beta_max, model.beta_max * step / max(model.anneal_steps, 1))


def cosine_lr(lr: float, final: float, step: int, steps: int) -> float:
    """Return the learning rate of step `step` (1-based) of `steps`: `lr` decayed by a half cosine to
    `final` · `lr` at the last step (`final` = 1: constant)."""
    if final == 1.0 or steps <= 1:
        return lr
    progress = min(max(step - 1, 0), steps - 1) / (steps - 1)
    return lr * (final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, kind: str, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Build an `sgd` or `adam` optimizer over the model's parameters."""
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', not {kind!r}.")


def train_users(
    model: StrataModel,
    data: UserTensors,
    *,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    beta: float | list[float],
    rating_weight: float,
    generator: torch.Generator,
    dp: DPSettings | None = None,
) -> TrainStats:
    """Train `model` in place for `epochs` passes over the users in `data`.

    `beta` is the KL weight, fixed or one value per step (annealing). Without DP the
    batches are shuffled fixed-size; with DP they are Poisson samples at the public rate
    `dp.sample_rate` (`shared.privacy.plan`), ⌊1/q⌋ steps per epoch.
    """
    n = data.n_users
    if n == 0:
        return TrainStats(steps=0, sample_rate=0.0, mean_loss=float("nan"), users=0)
    dataset = TensorDataset(*data.as_tuple())
    loader = DataLoader(dataset, batch_size=min(batch_size, n), shuffle=True, generator=generator)
    criterion = StrataLoss(
        beta=0.0, rating_weight=rating_weight, reduction="mean", rating_loss=model.config.rating_loss
    )
    model.train()
    if dp is None:
        return _plain_loop(model, loader, optimizer, criterion, epochs, beta)

    # Opacus is imported lazily: a heavy import (start-up time), needed only when DP is on.
    from opacus import PrivacyEngine
    from opacus.data_loader import DPDataLoader

    # Which users a step samples, and the noise it adds, must be secret: draw both from
    # generators seeded by the OS, never from the (public) run seed.
    sampling_rng = torch.Generator().manual_seed(secrets.randbits(63))
    noise_rng = torch.Generator().manual_seed(secrets.randbits(63))
    poisson_loader = DPDataLoader(dataset, sample_rate=dp.sample_rate, generator=sampling_rng)
    if dp.ghost_clipping:
        # Per-user norms and the clipped sum from one backward pass (`shared.bookkeeping`);
        # Opacus' optimizer adds N(0, σ²C²) to that sum, divides by the public batch size and steps.
        from opacus.optimizers import DPOptimizerFastGradientClipping

        keeper = BookKeeping(model, dp.max_grad_norm)
        dp_opt = DPOptimizerFastGradientClipping(
            optimizer,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            expected_batch_size=batch_size,  # public normaliser, not len(dataset) * sample_rate
            loss_reduction="mean",
            generator=noise_rng,
        )
        try:
            stats = _dp_loop(model, poisson_loader, dp_opt, criterion, epochs, beta, keeper)
        finally:
            keeper.close()
        return TrainStats(steps=stats[0], sample_rate=dp.sample_rate, mean_loss=stats[1], users=n)
    with warnings.catch_warnings():
        # Secure mode is not needed: sampling and noise use the OS-seeded generators above.
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        warnings.filterwarnings("ignore", message=".*non-full backward hook.*")
        engine = PrivacyEngine(secure_mode=False)
        private_model, dp_opt, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=poisson_loader,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            poisson_sampling=False,  # the loader above already samples users by Poisson sampling
            noise_generator=noise_rng,
            loss_reduction="mean",
            grad_sample_mode="hooks",
        )
    # Public normaliser: the configured batch size, not len(dataset) * sample_rate.
    dp_opt.expected_batch_size = batch_size
    sample_rate = float(dp_loader.sample_rate)
    stats = _dp_loop(private_model, dp_loader, dp_opt, criterion, epochs, beta)
    private_model._close()  # remove Opacus hooks; `model` keeps the trained weights
    return TrainStats(steps=stats[0], sample_rate=sample_rate, mean_loss=stats[1], users=n)


def _beta_at(beta: float | list[float], step: int) -> float:
    if isinstance(beta, list):
        return beta[min(step, len(beta) - 1)]
    return beta


def _plain_loop(
    model: StrataModel,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    optimizer: torch.optim.Optimizer,
    criterion: StrataLoss,
    epochs: int,
    beta: float | list[float],
) -> TrainStats:
    steps, total, count = 0, 0.0, 0
    for _ in range(epochs):
        for x, r, m in loader:
            criterion.beta = _beta_at(beta, steps)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x, r, m), x, r, m)
            loss.backward()
            optimizer.step()
            steps += 1
            total += loss.item() * len(x)
            count += len(x)
    n_users = len(loader.dataset)  # type: ignore[arg-type]  # torch's Dataset stub has no __len__
    return TrainStats(steps=steps, sample_rate=1.0, mean_loss=total / max(count, 1), users=n_users)


def _dp_loop(
    model: torch.nn.Module,
    loader: Iterable[tuple[torch.Tensor, ...]],
    optimizer: torch.optim.Optimizer,
    criterion: StrataLoss,
    epochs: int,
    beta: float | list[float],
    keeper: BookKeeping | None = None,
) -> tuple[int, float]:
    """DP-SGD steps: with `keeper` the clipped sum is book-kept from one backward pass, without
    it `model` is Opacus' per-sample-gradient wrapper and its optimizer clips."""
    # An empty Poisson sample is secret: Opacus' "First batch is empty" warning would log it.
    opacus_loader_log = logging.getLogger("opacus.data_loader")
    opacus_loader_log.addFilter(_drop_empty_batch_warning)
    try:
        with warnings.catch_warnings():
            # Opacus' per-sample hooks fire on layers whose inputs need no grad.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            steps, total, count = 0, 0.0, 0
            for _ in range(epochs):
                for x, r, m in loader:
                    criterion.beta = _beta_at(beta, steps)
                    optimizer.zero_grad(set_to_none=True)
                    if len(x) == 0:
                        _empty_step(model, optimizer)
                        steps += 1
                        continue
                    out = model(x, r, m)
                    if keeper is not None:
                        per_user = criterion.per_user(out, x, r, m)
                        keeper.clipped_sum(per_user)
                        loss = per_user.mean().detach()
                    else:
                        loss = criterion(out, x, r, m)
                        loss.backward()
                    optimizer.step()
                    steps += 1
                    total += float(loss.item()) * len(x)
                    count += len(x)
            return steps, total / max(count, 1)
    finally:
        opacus_loader_log.removeFilter(_drop_empty_batch_warning)


def _drop_empty_batch_warning(record: logging.LogRecord) -> bool:
    """Drop (return False for) Opacus' log warning that a Poisson sample came out empty."""
    return "batch is empty" not in record.getMessage()


def _empty_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Take one DP step on zero gradients: an empty Poisson batch still releases noise.

    Both Opacus optimizers add N(0, σ²C²) to the summed clipped gradient. Ghost clipping's
    optimizer sums `p.grad`; the hooks-mode optimizer clips and sums the per-sample gradients
    `p.grad_sample` and raises on None ("Per sample gradient is not initialized"), so each
    parameter also gets an empty (0, *shape) per-sample gradient: the sum of none is zeros.
    It is cleared after the step; ghost clipping would otherwise stack the next batch's
    per-sample gradients onto it.
    """
    params = list(model.parameters())
    for p in params:
        p.grad_sample = p.new_zeros((0, *p.shape))  # type: ignore[attr-defined]  # an attribute Opacus adds
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for p in params:
        p.grad_sample = None  # type: ignore[attr-defined]
