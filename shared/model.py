"""The Strata model: a Mult-VAE (Liang et al. 2018) with a rating-prediction head.

Only `nn.Linear` layers carry parameters, so Opacus computes exact per-user gradient
norms (ghost clipping included). The user latent μ_u is computed on the device from
the user's own history and never leaves it; only the shared weights travel. Two optional terms
without parameters use only the user's own history and public item features, so they cost no
privacy: a content score added to the decoder's item scores (`content-weight`) and, in evaluation,
a neighbour correction of predicted ratings (`content-ratings`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .model_config import ModelConfig

RATING_PRIOR = 3.5
"""Initial item bias of the rating head: a public constant, not a data statistic."""
CONTENT_RATINGS_MAX_ITEMS = 16_384
"""Largest catalog `content-ratings` accepts: its dense kernel takes 1 GiB there."""


class ItemScorer(nn.Module):
    """Scores every item from a user-side vector h: learned item vectors, public features, or both.

    score(h)_i = <h, W_i> + <A h, f_i> + b_i, where f_i are public catalog features.
    """

    def __init__(self, in_dim: int, n_items: int, item_side: str, features: torch.Tensor | None) -> None:
        super().__init__()
        self.learned = nn.Linear(in_dim, n_items) if item_side in ("learned", "both") else None
        self.to_features: nn.Linear | None = None
        self.item_bias: nn.Linear | None = None
        if item_side in ("catalog", "both"):
            if features is None:
                raise ValueError(f"item_side={item_side!r} needs catalog features.")
            self.to_features = nn.Linear(in_dim, features.shape[1], bias=False)
            self.register_buffer("features", features.float())
            if self.learned is None:
                self.item_bias = nn.Linear(1, n_items, bias=False)
                nn.init.zeros_(self.item_bias.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Return B×I item scores for B user-side vectors `h`."""
        out = self.learned(h) if self.learned is not None else 0.0
        if self.to_features is not None:
            out = out + self.to_features(h) @ self.features.T
        if self.item_bias is not None:
            out = out + self.item_bias(torch.ones(h.shape[0], 1, dtype=h.dtype, device=h.device))
        return out  # type: ignore[return-value]  # a tensor: every item_side builds a scoring layer

    def bias_linear(self) -> nn.Linear:
        """Return the layer whose parameters hold the item bias."""
        # One of the two exists: `learned` unless item_side="catalog", which builds `item_bias`.
        return self.item_bias if self.item_bias is not None else self.learned  # type: ignore[return-value]

    def bias(self) -> torch.Tensor:
        """Return the current item bias vector b (I,), detached."""
        if self.item_bias is not None:
            return self.item_bias.weight[:, 0].detach()
        assert self.learned is not None
        return self.learned.bias.detach()

    def set_bias(self, value: float | torch.Tensor) -> None:
        """Overwrite the item bias with `value` (a scalar or an (I,) vector)."""
        with torch.no_grad():
            if self.item_bias is not None:
                self.item_bias.weight[:, 0] = value
            else:
                assert self.learned is not None
                self.learned.bias[:] = value


@dataclass
class ModelOutput:
    """What one forward pass returns: decoder scores, the user latent and predicted ratings."""

    logits: torch.Tensor
    """B×I unnormalised item scores of the VAE decoder."""
    mu: torch.Tensor
    logvar: torch.Tensor
    rating: torch.Tensor
    """B×I predicted ratings."""
    rating_targets: torch.Tensor | None = None
    """B×I mask of the ratings the rating loss scores (None: every known one): in training with
    `rating-input = "ratings"`, the ones hidden from the head's input."""


class StrataModel(nn.Module):
    """Mult-VAE encoder/decoder plus a rating head on the user latent μ_u."""

    def __init__(self, n_items: int, config: ModelConfig, features: torch.Tensor | None = None) -> None:
        super().__init__()
        self.n_items = n_items
        self.config = config
        side = config.item_side
        self.enc_items = nn.Linear(n_items, config.hidden_dim) if side in ("learned", "both") else None
        self.enc_features = None
        if side in ("catalog", "both"):
            if features is None:
                raise ValueError(f"model.item-side={side!r} needs catalog features.")
            self.register_buffer("item_features", features.float())
            self.enc_features = nn.Linear(features.shape[1], config.hidden_dim)
        self.enc_out = nn.Linear(config.hidden_dim, 2 * config.latent_dim)
        self.dec_hidden = nn.Linear(config.latent_dim, config.hidden_dim)
        self.dec_items = ItemScorer(config.hidden_dim, n_items, side, features)
        # the rating head's user vector: from μ, or from the user's own ratings and rated items
        self.rate_user: nn.Linear | None = None
        self.rate_ratings: nn.Linear | None = None
        if config.rating_input == "ratings":
            self.rate_ratings = nn.Linear(2 * n_items, config.rating_dim)
        else:
            self.rate_user = nn.Linear(config.latent_dim, config.rating_dim)
        self.rate_items: ItemScorer | None = None
        self.rate_public: nn.Linear | None = None
        if config.rating_head == "public":
            # item i's rating features: its public features, its standardised popularity, 1
            assert features is not None  # the config requires item-side catalog or both
            n_public = int(features.shape[1]) + 2
            self.rate_public = nn.Linear(config.rating_dim, n_public, bias=False)
            nn.init.zeros_(self.rate_public.weight)  # starts at the public prior RATING_PRIOR
        else:
            self.rate_items = ItemScorer(config.rating_dim, n_items, side, features)
            self.rate_items.set_bias(RATING_PRIOR)
            if self.rate_ratings is not None and self.rate_items.learned is not None:
                # the denoiser starts at the biases: its item vectors grow from 0 as it learns
                nn.init.zeros_(self.rate_items.learned.weight)
        self.drop = nn.Dropout(config.dropout)
        if config.content_weight > 0 or config.content_ratings:
            if features is None:
                raise ValueError("model.content-weight and content-ratings use public item features: none were given.")
            centred = features.float() - features.float().mean(0)
            basis = F.normalize(centred, p=2, dim=1)
            self.register_buffer("content_basis", basis)
            if config.content_ratings:
                if n_items > CONTENT_RATINGS_MAX_ITEMS:
                    raise ValueError(
                        f"model.content-ratings keeps an items × items kernel: {n_items} items would need "
                        f"{n_items**2 * 4 / 2**30:.1f} GiB per process (at most {CONTENT_RATINGS_MAX_ITEMS})."
                    )
                kernel = (basis @ basis.T).clamp(min=0).pow(2)
                kernel.fill_diagonal_(0.0)  # a rating never corrects itself
                self.register_buffer("rating_kernel", kernel)

    def start_from_popularity(self, item_bias: torch.Tensor) -> None:
        """Set the decoder item bias to `item_bias` and the decoder item weights to 0, so the
        untrained model ranks exactly by that popularity; training learns the personal part on top."""
        self.dec_items.set_bias(item_bias)
        with torch.no_grad():
            for layer in (self.dec_items.learned, self.dec_items.to_features):
                if layer is not None:
                    layer.weight.zero_()

    def encode(self, positives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the latent mean μ and log-variance of each user's B×I positives."""
        x = F.normalize(positives, p=2, dim=1)
        x = self.drop(x)
        h: torch.Tensor | float = 0.0
        if self.enc_items is not None:
            h = h + self.enc_items(x)
        if self.enc_features is not None:
            h = h + self.enc_features(F.normalize(x @ self.item_features, p=2, dim=1))
        h = torch.tanh(h)  # type: ignore[arg-type]  # a tensor: every item_side builds an encoder
        mu, logvar = self.enc_out(h).chunk(2, dim=1)
        return mu, logvar

    def content_scores(self, positives: torch.Tensor) -> torch.Tensor:
        """Return γ·(x̂F̃F̃ᵀ − x̂): each item's similarity to the user's history in the public feature
        space, the item's similarity to itself removed (0 without `content-weight`)."""
        if self.config.content_weight == 0:
            return torch.zeros_like(positives)
        basis: torch.Tensor = self.content_basis  # type: ignore[assignment]  # a registered buffer
        x = F.normalize(positives, p=2, dim=1)
        return self.config.content_weight * ((x @ basis) @ basis.T - x * basis.pow(2).sum(1))

    def neighbour_correction(self, ratings: torch.Tensor, mask: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        """Return B×I: for each item, Σ_j k_ij (r_j − r̂_j) / (Σ_j k_ij + 1) over the user's known
        ratings j (`mask`), with k the squared positive cosine of the public features (`content-ratings`)."""
        kernel: torch.Tensor = self.rating_kernel  # type: ignore[assignment]  # a registered buffer
        residual = ((ratings - predicted) * mask).to_sparse()
        weight = torch.sparse.mm(mask.to_sparse(), kernel)
        correction: torch.Tensor = torch.sparse.mm(residual, kernel) / (weight + 1.0)
        return correction

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Return B×I unnormalised item scores for latents `z`."""
        logits: torch.Tensor = self.dec_items(torch.tanh(self.dec_hidden(z)))
        return logits

    def _public_item_matrix(self) -> torch.Tensor:
        """Return I×(F+2): public features, the standardised decoder item bias (the model's own
        popularity, detached: the rating loss does not move the ranking), and a constant."""
        pop = self.dec_items.bias()
        pop = (pop - pop.mean()) / pop.std().clamp(min=1e-6)
        ones = torch.ones_like(pop)
        features: torch.Tensor = self.item_features  # type: ignore[assignment]  # a registered buffer
        return torch.cat([features, pop[:, None], ones[:, None]], dim=1)

    def item_ratings(self, h: torch.Tensor) -> torch.Tensor:
        """Return B×I ratings of the head before the user's own bias, for rating-head vectors `h`."""
        if self.rate_public is not None:
            scores: torch.Tensor = RATING_PRIOR + self.rate_public(h) @ self._public_item_matrix().T
            return scores
        assert self.rate_items is not None  # one of the two heads exists
        per_item: torch.Tensor = self.rate_items(h)
        return per_item

    def item_bias(self) -> torch.Tensor:
        """Return the (I,) rating of each item for a user at the latent origin, detached."""
        if self.rate_public is not None:
            # from the weights, not by calling the layers: book-keeping clipping sees each layer run once
            with torch.no_grad():
                theta = self.rate_public.weight @ self._origin_user()
                bias: torch.Tensor = RATING_PRIOR + self._public_item_matrix() @ theta
                return bias
        assert self.rate_items is not None
        return self.rate_items.bias()

    def _origin_user(self) -> torch.Tensor:
        """Return the rating head's user vector of a user at the latent origin (`latent`) or with no
        known rating (`ratings`), read from the weights (no layer call)."""
        if self.rate_ratings is not None:
            return torch.tanh(self.rate_ratings.bias)
        assert self.rate_user is not None
        return self.rate_user.bias

    def latent_ratings(self, z: torch.Tensor) -> torch.Tensor:
        """Return B×I ratings before the user bias for latents `z` (generation). With
        `rating-input = "ratings"` a generated user has no ratings yet: every one gets the ratings
        of a user with an empty history."""
        if self.rate_user is not None:
            return self.item_ratings(self.rate_user(z))
        return self.item_ratings(self._origin_user().expand(z.shape[0], -1))

    def _ratings_vector(self, ratings: torch.Tensor, shown: torch.Tensor, user_bias: torch.Tensor) -> torch.Tensor:
        """Encode the user's `shown` ratings, centred on the item and user biases, and which items
        they are, each scaled by 1/√(number shown)."""
        assert self.rate_ratings is not None
        scale = shown.sum(1, keepdim=True).clamp(min=1.0).rsqrt()
        resid = (ratings - self.item_bias() - user_bias) * shown * scale
        return torch.tanh(self.rate_ratings(torch.cat([resid, shown * scale], dim=1)))

    def user_bias(self, ratings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Closed-form damped user bias from the user's own train ratings (B×1)."""
        resid = (ratings - self.item_bias()) * mask
        return resid.sum(1, keepdim=True) / (mask.sum(1, keepdim=True) + self.config.user_bias_damping)

    def forward(self, positives: torch.Tensor, ratings: torch.Tensor, mask: torch.Tensor) -> ModelOutput:
        """Encode, sample z (the mean in eval mode), decode, and predict ratings."""
        mu, logvar = self.encode(positives)
        if self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        else:
            z = mu
        logits = self.decode(z)
        if self.config.content_weight > 0:
            logits = logits + self.content_scores(positives)
        if self.rate_user is not None:
            rating = self.item_ratings(self.rate_user(mu)) + self.user_bias(ratings, mask)
            return ModelOutput(logits=logits, mu=mu, logvar=logvar, rating=self._corrected(rating, ratings, mask))
        shown, targets = mask, None
        if self.training and self.config.rating_dropout > 0:
            shown = mask * (torch.rand_like(mask) >= self.config.rating_dropout)
            targets = mask - shown  # the head learns to predict what it was not shown
        bias = self.user_bias(ratings, shown)
        rating = self.item_ratings(self._ratings_vector(ratings, shown, bias)) + bias
        rating = self._corrected(rating, ratings, shown)
        return ModelOutput(logits=logits, mu=mu, logvar=logvar, rating=rating, rating_targets=targets)

    def _corrected(self, rating: torch.Tensor, ratings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`rating` plus the neighbour correction in eval mode with `content-ratings`, else unchanged."""
        if self.training or not self.config.content_ratings:
            return rating
        return rating + self.neighbour_correction(ratings, mask, rating)


class StrataLoss(nn.Module):
    """Per-user loss: multinomial NLL + β·KL + w·(squared rating error: the user's mean, or their sum
    when `rating_loss="sum"`).

    Has a `reduction` attribute so Opacus ghost clipping can ask for per-user losses.
    """

    def __init__(
        self, *, beta: float = 0.0, rating_weight: float = 1.0, reduction: str = "mean", rating_loss: str = "mean"
    ) -> None:
        super().__init__()
        if rating_loss not in ("mean", "sum"):
            raise ValueError(f"rating_loss must be 'mean' or 'sum', not {rating_loss!r}.")
        self.beta = beta
        self.rating_weight = rating_weight
        self.rating_loss = rating_loss
        self.reduction = reduction

    def per_user(
        self, out: ModelOutput, positives: torch.Tensor, ratings: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Return the loss of each user (B,)."""
        nll = -(F.log_softmax(out.logits, dim=1) * positives).sum(1)
        kl = -0.5 * (1 + out.logvar - out.mu.pow(2) - out.logvar.exp()).sum(1)
        scored = mask if out.rating_targets is None else out.rating_targets
        sq = ((out.rating - ratings) ** 2 * scored).sum(1)
        if self.rating_loss == "mean":
            sq = sq / scored.sum(1).clamp(min=1.0)
        return nll + self.beta * kl + self.rating_weight * sq

    def forward(
        self, out: ModelOutput, positives: torch.Tensor, ratings: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Return the per-user losses reduced by `reduction` (`none`, `sum`, else mean)."""
        loss = self.per_user(out, positives, ratings, mask)
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        return loss.mean()


def build_model(n_items: int, config: ModelConfig, features: torch.Tensor | None, seed: int) -> StrataModel:
    """Build a freshly initialised model; the same seed gives the same weights everywhere."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return StrataModel(n_items, config, features)
    finally:
        torch.random.set_rng_state(gen_state)
