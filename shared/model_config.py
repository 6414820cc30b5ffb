"""The model section of the config (`[model]`): architecture, heads and their losses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ModelConfig:
    """Shape and loss weights of the Mult-VAE recommender."""

    hidden_dim: int = 600
    """Width of the Mult-VAE encoder/decoder hidden layer (600 in Liang et al.)."""
    latent_dim: int = 200
    """Size of the user latent (200 in Liang et al.)."""
    rating_dim: int = 32
    """Size of the user/item interaction in the rating head."""
    item_side: Literal["learned", "catalog", "both"] = "learned"
    """Item representation: learned vectors, public catalog features, or both."""
    dropout: float = 0.5
    """Input dropout of the VAE encoder."""
    beta_max: float = 0.2
    """Final KL weight of the annealed β."""
    anneal_steps: int = 2000
    """Optimizer steps over which β grows linearly from 0 to beta-max."""
    rating_weight: float = 1.0
    """Weight of the rating MSE in the per-user loss."""
    rating_head: Literal["per-item", "public"] = "per-item"
    """`per-item` vectors and biases like the decoder's, or `public`: public item features and the
    decoder's item bias only, no parameter per item (for DP; needs item-side `catalog` or `both`)."""
    rating_input: Literal["latent", "ratings"] = "latent"
    """Where the rating head's user vector comes from: `latent`, the VAE's μ (the user's positives);
    `ratings`, an encoding of the user's own centred ratings and which items they rated, trained as a
    denoiser (each step hides `rating-dropout` of them from the input and scores the hidden ones)."""
    rating_dropout: float = 0.25
    """Share of a user's ratings hidden from the `ratings` input in each training step."""
    rating_loss: Literal["mean", "sum"] = "mean"
    """A user's rating loss: the `mean` squared error over their scored ratings (each user counts the
    same), or the `sum` (each rating counts the same, as in RMSE)."""
    user_bias_damping: float = 5.0
    """Damping λ of the closed-form user bias Σ(r - b_i) / (n_u + λ)."""
    text_dims: int = 0
    """Add this many PCA dimensions of MiniLM embeddings of each item's title and genres to
    the public item features (0: off; needs the optional `text` extra)."""
    content_weight: float = 0.0
    """Weight γ of a fixed content score added to the decoder's item scores: γ·⟨x̂F̃, f̃_i⟩ for
    every item i but the user's own, with x̂ the user's normalised positives and F̃ the public item
    features centred over the catalog, one unit row per item. No parameter: it is computed on the
    device from the user's own history and public features, so it costs no privacy (0: off)."""
    content_ratings: bool = False
    """At prediction time (eval mode), add to each predicted rating the mean of the user's own rating
    residuals (known rating minus prediction) over the items like it, weighted by their squared
    positive cosine in the centred public feature space and shrunk by one: a free, on-device
    neighbourhood correction (no parameter; training is unchanged)."""
    popularity_prior: bool = False
    """Initialise the decoder's item bias from a popularity release before training: a
    Gaussian release of bounded per-user vectors (`privacy.release-noise-multiplier`),
    in the ledger; exact only with privacy off."""

    def __post_init__(self) -> None:
        for name in ("hidden_dim", "latent_dim", "rating_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name.replace('_', '-')} must be positive.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("model.dropout must be in [0, 1).")
        if not 0.0 <= self.content_weight < float("inf"):
            raise ValueError(f"model.content-weight must be a finite number >= 0, not {self.content_weight:g}.")
        if self.text_dims < 0:
            raise ValueError("model.text-dims must be >= 0 (0: no text features).")
        if self.rating_head not in ("per-item", "public"):
            raise ValueError(f"model.rating-head must be 'per-item' or 'public', not {self.rating_head!r}.")
        if self.rating_input not in ("latent", "ratings"):
            raise ValueError(f"model.rating-input must be 'latent' or 'ratings', not {self.rating_input!r}.")
        if self.rating_loss not in ("mean", "sum"):
            raise ValueError(f"model.rating-loss must be 'mean' or 'sum', not {self.rating_loss!r}.")
        if not 0.0 <= self.rating_dropout < 1.0:
            raise ValueError(f"model.rating-dropout must be in [0, 1), not {self.rating_dropout:g}.")
        if self.rating_head == "public" and self.item_side == "learned":
            raise ValueError(
                "model.rating-head = 'public' scores items by their public features: set model.item-side to "
                "'catalog' or 'both'."
            )
