"""On-device layered interest profiles (DESIGN.md §5), from the user's own train positives.

Computed on the device from the model and the taxonomy; never uploaded.

- **Item → interest weights.** p(g|i) = 1/|categories(i)| for each catalog category g of item
  i (Steck 2018); p(c|i) is that same weight on the L2 interest c that holds i within g.
- **Observed share** of an interest: Σ_{i ∈ positives} p(·|i) / |positives|.
- **Predicted share**: Σ_i π_i p(·|i) with π = softmax(decode(μ(positives))), the model's
  item distribution for this user (all items, the user's own included).
- **Blend**: share = (1 − a)·observed + a·predicted with a = κ / (n + κ), n the number of
  positives and κ = `kappa` (default 10): a user with no history is described by the model
  alone; with 10 positives the two count equally; long histories are mostly observation.
- **Population prior**: the taxonomy's `prior_share`, i.e. E_{z~N(0,I)} softmax(decode(z))
  summed per interest — the predicted share of an average user.
- **L2 fine interests**: interests with observed share > 0, ranked by blended share.
- **L3 latent interests**: among the `l3_pool` interests of highest predicted share, those
  whose observed share is at most `max_observed_ratio` × predicted share and whose lift
  (predicted share ÷ prior share) is at least `min_lift`, ranked by lift.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from shared.interests import InterestIndex, normalised
from shared.model import StrataModel
from shared.run_dir import JsonDict


@dataclass(frozen=True)
class ProfileSettings:
    """Knobs of a profile; the defaults are documented in the module docstring."""

    kappa: float = 10.0
    top_l2: int = 5
    n_l3: int = 3
    l3_pool: int = 20
    max_observed_ratio: float = 0.5
    min_lift: float = 1.5


def predicted_distribution(model: StrataModel, positives_row: torch.Tensor) -> np.ndarray:
    """π = softmax(decode(μ) + the content score) for one user's positives (1-D or 1×I), in eval mode:
    the scores the model ranks by."""
    row = positives_row.reshape(1, -1).float()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            mu, _ = model.encode(row)
            logits = model.decode(mu) + model.content_scores(row)
    finally:
        model.train(was_training)
    return torch.softmax(logits.double(), dim=1)[0].numpy()


def profile_from_distribution(
    pi: np.ndarray, positives: np.ndarray, index: InterestIndex, settings: ProfileSettings | None = None
) -> JsonDict:
    """Return the layered profile of one user from π (model) and their train positives (0/1 per item)."""
    s = settings or ProfileSettings()
    pos = np.asarray(positives, dtype=np.float64).reshape(-1)
    n_pos = int((pos > 0).sum())
    a = s.kappa / (n_pos + s.kappa) if s.kappa > 0 else float(n_pos == 0)
    obs1 = normalised(pos @ index.l1)
    obs2 = normalised(pos @ index.l2)
    pred1 = normalised(pi @ index.l1)
    pred2 = normalised(pi @ index.l2)
    share1 = (1 - a) * obs1 + a * pred1
    share2 = (1 - a) * obs2 + a * pred2
    with np.errstate(divide="ignore", invalid="ignore"):
        lift2 = np.where(index.prior_l2 > 0, pred2 / index.prior_l2, 0.0)  # no prior: no lift claimed

    def l2_entry(c: int) -> JsonDict:
        return {
            "id": index.interests[c],
            "name": index.names[c],
            "category": index.categories[index.interest_category[c]],
            "observed": round(float(obs2[c]), 6),
            "predicted": round(float(pred2[c]), 6),
            "share": round(float(share2[c]), 6),
            "prior": round(float(index.prior_l2[c]), 6),
            "lift": round(float(lift2[c]), 4),
        }

    pool = np.lexsort((np.arange(len(pred2)), -pred2))[: s.l3_pool]
    l3 = [int(c) for c in pool if obs2[c] <= s.max_observed_ratio * pred2[c] and lift2[c] >= s.min_lift]
    l3 = sorted(l3, key=lambda c: (-lift2[c], c))[: s.n_l3]
    fine = [int(c) for c in np.lexsort((np.arange(len(share2)), -share2)) if obs2[c] > 0 and int(c) not in l3]
    l1_order = np.lexsort((np.arange(len(share1)), -share1))
    return {
        "n_positives": n_pos,
        "blend": {"model_weight": round(a, 6), "kappa": s.kappa},
        "l1": [
            {
                "id": index.categories[g],
                "observed": round(float(obs1[g]), 6),
                "predicted": round(float(pred1[g]), 6),
                "share": round(float(share1[g]), 6),
                "prior": round(float(index.prior_l1[g]), 6),
            }
            for g in l1_order
        ],
        "l2": [l2_entry(c) for c in fine[: s.top_l2]],
        "l3": [l2_entry(c) for c in l3],
    }


def interest_shares(
    model: StrataModel,
    positives: torch.Tensor,
    interest_matrix: np.ndarray,
    settings: ProfileSettings | None = None,
) -> np.ndarray:
    """B×C blended L2 shares of B users at once (the `share` of `profile_from_distribution`),
    from their B×I train positives and the I×C item × interest weights."""
    s = settings or ProfileSettings()
    if positives.shape[0] == 0:
        return np.zeros((0, interest_matrix.shape[1]))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            mu, _ = model.encode(positives.float())
            pi = torch.softmax(model.decode(mu).double(), dim=1).numpy()
    finally:
        model.train(was_training)
    pos = positives.double().numpy()
    n_pos = (pos > 0).sum(axis=1, keepdims=True)
    a = s.kappa / (n_pos + s.kappa) if s.kappa > 0 else (n_pos == 0).astype(np.float64)

    def rows_normalised(m: np.ndarray) -> np.ndarray:
        total = m.sum(axis=1, keepdims=True)
        return np.asarray(np.divide(m, total, out=np.zeros_like(m), where=total > 0), dtype=np.float64)

    return np.asarray((1 - a) * rows_normalised(pos @ interest_matrix) + a * rows_normalised(pi @ interest_matrix))


def user_profile(
    model: StrataModel,
    taxonomy: JsonDict,
    positives_row: torch.Tensor,
    item_categories: Sequence[Sequence[str]],
    *,
    settings: ProfileSettings | None = None,
    index: InterestIndex | None = None,
) -> JsonDict:
    """Return a user's L1/L2/L3 profile from their train positives, the model and the taxonomy.

    `index` may be passed to reuse the taxonomy's matrices across users.
    """
    index = index or InterestIndex.from_taxonomy(taxonomy, item_categories)
    pi = predicted_distribution(model, positives_row)
    positives = positives_row.reshape(-1).detach().cpu().numpy()
    return profile_from_distribution(pi, positives, index, settings)


def l1_target(profile: JsonDict, index: InterestIndex) -> np.ndarray:
    """Return the blended L1 distribution of a profile as a vector over `index.categories`."""
    shares = {e["id"]: e["share"] for e in profile["l1"]}
    return normalised(np.array([shares.get(g, 0.0) for g in index.categories], dtype=np.float64))
