"""Model shapes, loss decrease, and the DP-SGD properties of the training loop."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Literal

import pytest
import torch
from conftest import trained_run_config

from client.trainer import _with_parameters
from shared.config import ModelConfig
from shared.data import RatingsData
from shared.data.matrices import UserTensors, train_tensors
from shared.data.split import split_users
from shared.data.synthetic import make_synthetic
from shared.features import catalog_features
from shared.model import StrataLoss, StrataModel, build_model
from shared.privacy.plan import public_plan
from shared.run_dir import RunDir
from shared.training import DPSettings, cosine_lr, make_optimizer, train_users

ItemSide = Literal["learned", "catalog", "both"]  # ModelConfig.item_side
Setup = tuple[RatingsData, UserTensors, torch.Tensor]  # data, its train tensors, catalog features


@pytest.fixture(scope="module")
def setup() -> Setup:
    data, _ = make_synthetic(n_users=48, n_items=40, n_categories=2, subs_per_category=2, seed=0)
    users = split_users(data, seed=0)
    feats = torch.from_numpy(catalog_features(data.catalog))
    return data, train_tensors(users, data.n_items, 4.0), feats


@pytest.mark.parametrize("side", ["learned", "catalog", "both"])
def test_shapes_for_every_item_side(setup: Setup, side: ItemSide) -> None:
    data, t, feats = setup
    model = build_model(data.n_items, ModelConfig(hidden_dim=12, latent_dim=6, rating_dim=3, item_side=side), feats, 0)
    out = model(*t.as_tuple())
    assert out.logits.shape == (t.n_users, data.n_items)
    assert out.rating.shape == (t.n_users, data.n_items)
    assert out.mu.shape == out.logvar.shape == (t.n_users, 6)
    per_user = StrataLoss(reduction="none")(out, *t.as_tuple())
    assert per_user.shape == (t.n_users,)


def test_public_rating_head_has_no_per_item_parameter_and_learns(setup: Setup) -> None:
    data, t, feats = setup
    cfg = ModelConfig(hidden_dim=12, latent_dim=6, rating_dim=3, item_side="both", rating_head="public", dropout=0.0)
    model = build_model(data.n_items, cfg, feats, 0)
    rating = {n: p.shape for n, p in model.named_parameters() if n.startswith("rate_")}
    assert rating == {"rate_user.weight": (3, 6), "rate_user.bias": (3,), "rate_public.weight": (feats.shape[1] + 2, 3)}
    assert torch.all(model.item_bias() == 3.5)  # starts at the public prior
    with pytest.raises(ValueError, match="rating-head = 'public'"):
        ModelConfig(item_side="learned", rating_head="public")

    def rating_mse() -> float:
        model.eval()
        out = model(*t.as_tuple())
        return float((((out.rating - t.ratings) ** 2) * t.mask).sum() / t.mask.sum())

    before = rating_mse()
    train_users(
        model, t, epochs=30, batch_size=16, optimizer=make_optimizer(model, "adam", 1e-2), beta=0.0,
        rating_weight=1.0, generator=torch.Generator().manual_seed(0),
    )
    assert rating_mse() < 0.9 * before
    assert model.item_bias().std() > 0  # items differ through their public features and popularity


def test_same_seed_same_weights(setup: Setup) -> None:
    data, _, feats = setup
    cfg = ModelConfig(hidden_dim=12, latent_dim=6)
    a, b = build_model(data.n_items, cfg, feats, 5), build_model(data.n_items, cfg, feats, 5)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_loss_decreases(setup: Setup) -> None:
    data, t, feats = setup
    model = build_model(data.n_items, ModelConfig(hidden_dim=32, latent_dim=8, dropout=0.0), feats, 0)
    model.eval()
    crit = StrataLoss(beta=0.0)
    before = crit(model(*t.as_tuple()), *t.as_tuple()).item()
    opt = make_optimizer(model, "adam", 1e-2)
    train_users(
        model, t, epochs=30, batch_size=16, optimizer=opt, beta=0.0, rating_weight=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    model.eval()
    after = crit(model(*t.as_tuple()), *t.as_tuple()).item()
    assert after < 0.9 * before


def _one_user_step(
    setup: Setup, *, sigma: float, clip: float, seed: int, ghost: bool = True, dp: bool = True
) -> tuple[StrataModel, StrataModel]:
    """One SGD step (lr 1, normaliser 1) on a single user; returns (model before, model after)."""
    data, t, feats = setup
    single = type(t)(t.positives[:1], t.ratings[:1], t.mask[:1])
    model = build_model(data.n_items, ModelConfig(hidden_dim=12, latent_dim=6, dropout=0.0), feats, 0)
    before = copy.deepcopy(model)
    opt = make_optimizer(model, "sgd", 1.0)
    settings = DPSettings(noise_multiplier=sigma, max_grad_norm=clip, ghost_clipping=ghost) if dp else None
    torch.manual_seed(seed)  # the reparameterisation noise of the VAE
    train_users(model, single, epochs=1, batch_size=1, optimizer=opt, beta=0.0, rating_weight=1.0,
                generator=torch.Generator().manual_seed(seed), dp=settings)
    return before, model


def _update_norm(before: StrataModel, after: StrataModel) -> float:
    squares = (((a - b) ** 2).sum() for a, b in zip(after.parameters(), before.parameters(), strict=True))
    return torch.sqrt(sum(squares, torch.zeros(()))).item()


@pytest.mark.parametrize("ghost", [True, False])
def test_per_user_update_is_clipped_to_C(setup: Setup, ghost: bool) -> None:
    clip = 0.05
    before, after = _one_user_step(setup, sigma=0.0, clip=clip, seed=0, ghost=ghost)
    norm = _update_norm(before, after)
    assert norm <= clip * (1 + 1e-4)
    assert norm > 0.5 * clip  # the raw gradient is far larger, so it was clipped, not zeroed


def test_zero_noise_huge_clip_equals_plain_training(setup: Setup) -> None:
    b1, private = _one_user_step(setup, sigma=0.0, clip=1e9, seed=1)
    b2, plain = _one_user_step(setup, sigma=0.0, clip=1e9, seed=1, dp=False)
    for p, q in zip(private.parameters(), plain.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4)


def test_noise_is_present_with_the_stated_scale_and_varies(setup: Setup) -> None:
    clip, sigma = 1e-6, 2.0  # gradient contribution ≤ 1e-6: the update is essentially noise
    b, first = _one_user_step(setup, sigma=sigma, clip=clip, seed=0)
    _, second = _one_user_step(setup, sigma=sigma, clip=clip, seed=1)
    deltas = torch.cat([(p - q).flatten() for p, q in zip(first.parameters(), b.parameters(), strict=True)])
    # within 5 standard errors of a sample std (σ/√(2n)): the secret noise makes this a statistical check
    assert deltas.std().item() == pytest.approx(sigma * clip, rel=5 / math.sqrt(2 * deltas.numel()))
    assert not all(torch.equal(p, q) for p, q in zip(first.parameters(), second.parameters(), strict=True))


def test_public_plan_matches_opacus() -> None:
    """q = B / n̄ from the public expected count n̄, and Opacus' ⌊1/q⌋ steps per epoch."""
    assert public_plan(1, 100) == (1.0, 1)
    rate, steps = public_plan(250, 100)
    assert rate == pytest.approx(0.4) and steps == 2
    with pytest.raises(ValueError, match="public expected number"):
        public_plan(0, 100)


def test_a_device_model_is_its_own_copy_and_training_it_leaves_the_template_alone(setup: Setup) -> None:
    data, t, feats = setup
    template = build_model(data.n_items, ModelConfig(hidden_dim=12, latent_dim=6, item_side="both"), feats, 0)
    before = {k: v.detach().clone() for k, v in template.named_parameters()}
    weights = {k: v + 0.5 for k, v in before.items()}
    fresh = {id(p): torch.nn.Parameter(weights[n].clone()) for n, p in template.named_parameters()}
    model = _with_parameters(template, fresh)
    assert [n for n, _ in model.named_parameters()] == list(before)  # the same names, in order
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), weights[n], rtol=0, atol=0)
    assert all(a is not b for a, b in zip(model.modules(), template.modules(), strict=True))
    model.enc_out.register_forward_hook(lambda *_: None)  # Opacus hooks the copy; the template must not see it
    assert not template.enc_out._forward_hooks
    reference = copy.deepcopy(template)
    reference.load_state_dict({**template.state_dict(), **weights})
    model.eval(), reference.eval()  # no dropout, the mean latent
    out, ref = model(*t.as_tuple()), reference(*t.as_tuple())
    torch.testing.assert_close(out.logits, ref.logits)  # behaves as a deep copy holding the weights
    assert template.training  # eval() reached the copy's modules only
    model.train()
    train_users(
        model, t, epochs=1, batch_size=16, optimizer=make_optimizer(model, "sgd", 0.5, 0.0), beta=0.2,
        rating_weight=1.0, generator=torch.Generator().manual_seed(0),
    )
    assert any(not torch.equal(p.detach(), weights[n]) for n, p in model.named_parameters())
    for n, p in template.named_parameters():
        torch.testing.assert_close(p.detach(), before[n], rtol=0, atol=0)


def test_cosine_lr_decays_from_lr_to_its_final_fraction() -> None:
    rates = [cosine_lr(0.01, 0.1, epoch, 5) for epoch in range(1, 6)]
    assert rates[0] == 0.01 and rates[-1] == pytest.approx(0.001)
    assert rates[2] == pytest.approx(0.0055)  # half way: the mean of the two ends
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    assert [cosine_lr(0.01, 1.0, epoch, 5) for epoch in range(1, 6)] == [0.01] * 5
    assert cosine_lr(0.01, 0.0, 1, 1) == 0.01  # one epoch: the configured rate


def test_central_training_follows_the_decay(tmp_path: Path) -> None:
    """`train.lr-final = 0`: the last of two epochs steps at learning rate 0, so the run ends with
    the weights of the same run stopped after its first epoch."""
    from simulation.central import run_central

    runs = {}
    for epochs in (1, 2):
        config = trained_run_config(tmp_path / f"e{epochs}").replace({"train.epochs": epochs, "train.lr-final": 0.0})
        run_central(config, eval_every=epochs)
        runs[epochs] = RunDir.of(config.run_dir).load_weights()
    assert runs[1].keys() == runs[2].keys()
    for name, tensor in runs[1].items():
        assert torch.equal(tensor, runs[2][name]), name
    constant = trained_run_config(tmp_path / "constant").replace({"train.epochs": 2})
    run_central(constant, eval_every=2)
    moved = RunDir.of(constant.run_dir).load_weights()
    assert any(not torch.equal(t, moved[n]) for n, t in runs[1].items())  # a constant rate keeps training
