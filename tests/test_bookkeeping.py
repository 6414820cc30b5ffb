"""Book-keeping clipping (`shared.bookkeeping`): the clipped sum of one backward pass equals the
sum of every user's own gradient clipped alone, and models it cannot handle are refused."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from torch import nn

from shared.bookkeeping import BookKeeping
from shared.config import ModelConfig
from shared.data.matrices import train_tensors
from shared.data.split import split_users
from shared.data.synthetic import make_synthetic
from shared.features import catalog_features
from shared.model import StrataLoss, build_model


def _setup(  # type: ignore[no-untyped-def]
    side: Literal["learned", "catalog", "both"],
    head: Literal["per-item", "public"] = "per-item",
    rating_input: Literal["latent", "ratings"] = "latent",
):
    data, _ = make_synthetic(n_users=24, n_items=30, n_categories=2, subs_per_category=2, seed=3)
    t = train_tensors(split_users(data, seed=0), data.n_items, 4.0)
    feats = torch.from_numpy(catalog_features(data.catalog))
    shape = ModelConfig(
        hidden_dim=10, latent_dim=4, rating_dim=3, item_side=side, rating_head=head, rating_input=rating_input
    )
    model = build_model(data.n_items, shape, feats, 0)
    if head == "public":  # away from its zero start, so every rating parameter has a gradient
        with torch.no_grad():
            model.rate_public.weight.normal_(0.0, 0.3)  # type: ignore[union-attr]
    elif rating_input == "ratings":  # the denoiser's item vectors start at 0 too
        with torch.no_grad():
            model.rate_items.learned.weight.normal_(0.0, 0.3)  # type: ignore[union-attr]
    model.eval()  # deterministic forward (no dropout, z = μ): the same function for a batch and for one row
    return model, t


@pytest.mark.parametrize(("side", "head", "rating_input"), [
    ("learned", "per-item", "latent"), ("catalog", "per-item", "latent"), ("both", "per-item", "latent"),
    ("both", "public", "latent"), ("catalog", "public", "latent"), ("learned", "per-item", "ratings"),
    ("both", "public", "ratings"),
])
def test_clipped_sum_equals_each_users_gradient_clipped_alone(
    side: Literal["learned", "catalog", "both"],
    head: Literal["per-item", "public"],
    rating_input: Literal["latent", "ratings"],
) -> None:
    model, t = _setup(side, head, rating_input)
    crit = StrataLoss(beta=0.1, rating_weight=1.0, reduction="none")
    params = [p for p in model.parameters() if p.requires_grad]
    # The reference: each user's gradient on its own, its norm, clipped at C, summed.
    own = []
    for i in range(t.n_users):
        x, r, m = (v[i : i + 1] for v in t.as_tuple())
        own.append(torch.autograd.grad(crit(model(x, r, m), x, r, m).sum(), params))
    own_norms = torch.stack([torch.cat([g.double().flatten() for g in grads]).norm() for grads in own])
    clip = float(own_norms.median())  # about half the users are clipped
    factors = [min(1.0, clip / (float(n) + 1e-6)) for n in own_norms]
    expected = [
        torch.stack([grads[k].double() * f for grads, f in zip(own, factors, strict=True)]).sum(0)
        for k in range(len(params))
    ]
    keeper = BookKeeping(model, clip)
    with torch.enable_grad():
        norms = keeper.clipped_sum(crit(model(*t.as_tuple()), *t.as_tuple()))
    keeper.close()
    assert torch.allclose(norms.double(), own_norms, rtol=1e-4, atol=1e-6)
    for p, want in zip(params, expected, strict=True):
        assert p.grad is not None and torch.allclose(p.grad.double(), want, rtol=1e-4, atol=1e-6)


def test_one_users_contribution_is_bounded_by_the_clip() -> None:
    model, t = _setup("both")
    crit = StrataLoss(reduction="none")
    keeper = BookKeeping(model, 1e-3)
    x, r, m = (v[:1] for v in t.as_tuple())
    norms = keeper.clipped_sum(crit(model(x, r, m), x, r, m))
    assert float(norms[0]) > 1e-2  # the raw gradient is far larger than C
    total = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None))
    assert float(total) == pytest.approx(1e-3, rel=1e-4)


@pytest.mark.parametrize("rating_input", ["latent", "ratings"])
def test_a_user_whose_gradient_is_not_finite_contributes_zero(rating_input: Literal["latent", "ratings"]) -> None:
    """One user's NaN (a diverged step) leaves the others' clipped sum as it is without them, finite."""
    model, t = _setup("both", rating_input=rating_input)
    crit = StrataLoss(beta=0.1, reduction="none")
    x, r, m = t.as_tuple()
    rated = int(m[3].nonzero()[0, 0])
    r_bad = r.clone()
    r_bad[3, rated] = float("nan")  # user 3's rating loss (and, for `ratings`, its input) is NaN
    keep = [i for i in range(t.n_users) if i != 3]
    keeper = BookKeeping(model, 0.5)
    with torch.enable_grad():
        norms = keeper.clipped_sum(crit(model(x, r_bad, m), x, r_bad, m))
        broken = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        keeper.clipped_sum(crit(model(x[keep], r[keep], m[keep]), x[keep], r[keep], m[keep]))
    keeper.close()
    assert not torch.isfinite(norms[3]) and bool(torch.isfinite(norms[keep]).all())
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.allclose(broken[name], p.grad, rtol=1e-5, atol=1e-7), name


def test_models_the_identity_does_not_hold_for_are_refused() -> None:
    class Shared(nn.Module):  # one layer applied twice
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.layer(self.layer(x))
            return out

    shared = Shared()
    BookKeeping(shared, 1.0)
    with pytest.raises(RuntimeError, match="ran twice"):
        shared(torch.ones(2, 3))

    class Sequence(nn.Module):  # a 3-D input: per-user gradients are sums of outer products
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.layer(x)
            return out

    seq = Sequence()
    BookKeeping(seq, 1.0)
    with pytest.raises(RuntimeError, match="3-D input"):
        seq(torch.ones(2, 4, 3))

    class Skipping(nn.Module):  # a trainable layer that does not run: its gradient would be missing
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(3, 1), nn.Linear(3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.used(x)
            return out

    skipping = Skipping()
    keeper = BookKeeping(skipping, 1.0)
    with pytest.raises(RuntimeError, match="did not run"):
        keeper.clipped_sum(skipping(torch.ones(2, 3)).squeeze(1))

    class Embedded(nn.Module):  # a parameter outside any nn.Linear
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Embedding(5, 2)

    with pytest.raises(ValueError, match="table.weight"):
        BookKeeping(Embedded(), 1.0)
