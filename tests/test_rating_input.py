"""The rating head over the user's own ratings (`model.rating-input = "ratings"`): a denoiser that is
never scored on a rating it was shown, its loss, its DP step, and that it learns."""

from __future__ import annotations

import copy

import pytest
import torch

from shared.config import ModelConfig
from shared.data.matrices import UserTensors, train_tensors
from shared.data.split import split_users
from shared.data.synthetic import make_synthetic
from shared.model import StrataLoss, StrataModel, build_model
from shared.training import DPSettings, make_optimizer, train_users


def _config(**kw: object) -> ModelConfig:
    base: dict[str, object] = {"hidden_dim": 12, "latent_dim": 6, "rating_dim": 4, "rating_input": "ratings"}
    return ModelConfig(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tensors() -> tuple[int, UserTensors]:
    data, _ = make_synthetic(n_users=40, n_items=30, n_categories=2, subs_per_category=2, seed=1)
    return data.n_items, train_tensors(split_users(data, seed=0), data.n_items, 4.0)


def test_bad_settings_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="model.rating-input"):
        ModelConfig(rating_input="everything")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model.rating-dropout"):
        ModelConfig(rating_dropout=1.0)
    with pytest.raises(ValueError, match="model.rating-loss"):
        ModelConfig(rating_loss="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rating_loss"):
        StrataLoss(rating_loss="median")


def test_the_layers_of_each_input(tensors: tuple[int, UserTensors]) -> None:
    n_items, _ = tensors
    own = {n: p.shape for n, p in build_model(n_items, _config(), None, 0).named_parameters() if n.startswith("rate_")}
    assert own == {
        "rate_ratings.weight": (4, 2 * n_items), "rate_ratings.bias": (4,),
        "rate_items.learned.weight": (n_items, 4), "rate_items.learned.bias": (n_items,),
    }
    latent = build_model(n_items, _config(rating_input="latent"), None, 0)
    assert latent.rate_ratings is None and latent.rate_user is not None


def test_training_scores_only_the_hidden_ratings_and_never_sees_them(tensors: tuple[int, UserTensors]) -> None:
    n_items, t = tensors
    model = build_model(n_items, _config(rating_dropout=0.4), None, 0)
    with torch.no_grad():  # away from the zero start, so every rating depends on the input
        model.rate_items.learned.weight.normal_(0.0, 0.5)  # type: ignore[union-attr]
    model.train()
    torch.manual_seed(5)
    out = model(*t.as_tuple())
    hidden = out.rating_targets
    assert hidden is not None
    shown = t.mask - hidden
    assert torch.all((hidden == 0) | (t.mask == 1)) and torch.all(shown >= 0)  # hidden ⊆ rated
    assert 0.2 < float(hidden.sum() / t.mask.sum()) < 0.6  # about rating-dropout of them
    # Other values at the hidden positions (the same draws of the masks): the same predictions.
    changed = torch.where(hidden > 0, 6.0 - t.ratings, t.ratings)
    torch.manual_seed(5)
    again = model(t.positives, changed, t.mask)
    assert again.rating_targets is not None and torch.equal(again.rating_targets, hidden)
    assert torch.allclose(again.rating, out.rating)
    # ... while a shown rating does move them.
    torch.manual_seed(5)
    moved = model(t.positives, torch.where(shown > 0, 6.0 - t.ratings, t.ratings), t.mask)
    assert not torch.allclose(moved.rating, out.rating)


def test_evaluation_uses_every_known_rating(tensors: tuple[int, UserTensors]) -> None:
    n_items, t = tensors
    model = build_model(n_items, _config(), None, 0)
    model.eval()
    first, second = model(*t.as_tuple()), model(*t.as_tuple())
    assert first.rating_targets is None and torch.equal(first.rating, second.rating)
    assert model.latent_ratings(torch.zeros(3, 6)).shape == (3, n_items)  # generation: an empty history


def test_sum_loss_counts_every_rating_and_mean_each_user(tensors: tuple[int, UserTensors]) -> None:
    n_items, t = tensors
    model = build_model(n_items, _config(), None, 0)
    model.eval()
    out = model(*t.as_tuple())
    sq = (((out.rating - t.ratings) ** 2) * t.mask).sum(1)
    base = StrataLoss(rating_weight=0.0, reduction="none")(out, *t.as_tuple())
    per_sum = StrataLoss(rating_weight=1.0, reduction="none", rating_loss="sum")(out, *t.as_tuple())
    per_mean = StrataLoss(rating_weight=1.0, reduction="none", rating_loss="mean")(out, *t.as_tuple())
    assert torch.allclose(per_sum - base, sq, rtol=1e-5)
    assert torch.allclose(per_mean - base, sq / t.mask.sum(1).clamp(min=1.0), rtol=1e-5)


def _one_user_step(n_items: int, t: UserTensors, *, clip: float, dp: bool) -> tuple[StrataModel, StrataModel]:
    single = type(t)(t.positives[:1], t.ratings[:1], t.mask[:1])
    model = build_model(n_items, _config(dropout=0.0, rating_loss="sum"), None, 0)
    before = copy.deepcopy(model)
    settings = DPSettings(noise_multiplier=0.0, max_grad_norm=clip, ghost_clipping=True) if dp else None
    torch.manual_seed(3)  # the VAE's sampling and the rating mask
    train_users(model, single, epochs=1, batch_size=1, optimizer=make_optimizer(model, "sgd", 1.0), beta=0.0,
                rating_weight=1.0, generator=torch.Generator().manual_seed(3), dp=settings)
    return before, model


def test_ghost_clipping_bounds_and_keeps_the_step(tensors: tuple[int, UserTensors]) -> None:
    n_items, t = tensors
    before, clipped = _one_user_step(n_items, t, clip=0.05, dp=True)
    squares = [((a - b) ** 2).sum() for a, b in zip(clipped.parameters(), before.parameters(), strict=True)]
    norm = torch.stack(squares).sum().sqrt()
    assert 0.5 * 0.05 < float(norm) <= 0.05 * (1 + 1e-4)
    _, private = _one_user_step(n_items, t, clip=1e9, dp=True)
    _, plain = _one_user_step(n_items, t, clip=1e9, dp=False)
    for (name, p), q in zip(private.named_parameters(), plain.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4), name  # every layer's per-user gradient is exact


def test_the_denoiser_learns_held_back_ratings(tensors: tuple[int, UserTensors]) -> None:
    n_items, t = tensors
    model = build_model(n_items, _config(rating_loss="sum", rating_dim=8), None, 0)

    def rmse() -> float:
        model.eval()
        out = model(*t.as_tuple())
        return float(torch.sqrt((((out.rating - t.ratings) ** 2) * t.mask).sum() / t.mask.sum()))

    start = rmse()
    train_users(model, t, epochs=60, batch_size=8, optimizer=make_optimizer(model, "adam", 1e-2), beta=0.0,
                rating_weight=1.0, generator=torch.Generator().manual_seed(0))
    assert rmse() < 0.9 * start
