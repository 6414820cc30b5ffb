"""Layered top-N recommendation for one user, on the device's own data (DESIGN.md §5).

Plain lists are the top-N decoder scores over items the user has not rated in train.
Layered lists (`layered=True`):

1. **Discovery slots.** round(`discovery_share` · N) slots (20% by default) go to the
   best-scoring unrated items of the user's L3 latent interests, one interest after another.
2. **Calibration** (Steck 2018). The remaining slots are filled greedily, each step adding
   the candidate that maximises (1 − λ)·Σ_{j∈S} r_j − λ·KL(p ‖ q̃(S)), where S holds the
   list so far (discovery items included), r_j = π_j / max π ∈ (0, 1] is the item's
   predicted probability relative to the best candidate, p is the user's blended L1
   distribution (client.profiles), q(S) the mean of p(g|j) over S and q̃ = (1 − α)q + αp
   with α = 0.01.
3. The calibrated items are ordered by score, and the discovery items placed at evenly
   spaced ranks among them.

Every item is explained by the layer it serves: L3 discovery (one of the user's L3
interests), L2 fine (one of the user's top L2 interests) or L1 core (the item's category
with the largest share in the user's profile).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from shared.data.matrices import train_tensors
from shared.data.split import UserRatings
from shared.data.types import Catalog
from shared.interests import InterestIndex
from shared.model import StrataModel
from shared.run_dir import JsonDict

from .profiles import ProfileSettings, l1_target, profile_from_distribution

log = logging.getLogger(__name__)

CALIBRATION_LAMBDA = 0.8
"""λ of the calibration trade-off (Steck 2018 sweeps 0..1; 0.5 keeps most of the accuracy)."""
CALIBRATION_ALPHA = 0.01
"""Smoothing α of q̃ so that KL stays finite."""
DISCOVERY_SHARE = 0.2
"""Share of a layered list reserved for L3 discovery items."""

LAYER_L1 = "L1 core"
LAYER_L2 = "L2 fine"
LAYER_L3 = "L3 discovery"


def miscalibration(
    items: Sequence[int], item_l1: np.ndarray, target: np.ndarray, alpha: float = CALIBRATION_ALPHA
) -> float:
    """Steck's KL(p ‖ q̃) between the target L1 distribution p and that of a list."""
    if len(items) == 0:
        return float("nan")
    q = item_l1[np.asarray(items, dtype=np.int64)].sum(0)
    q = q / q.sum() if q.sum() > 0 else q
    qt = (1 - alpha) * q + alpha * target
    nz = target > 0
    return float((target[nz] * np.log(target[nz] / qt[nz])).sum())


def calibrated_list(
    scores: np.ndarray,
    exclude: np.ndarray,
    item_l1: np.ndarray,
    target: np.ndarray,
    n: int,
    *,
    lam: float = CALIBRATION_LAMBDA,
    alpha: float = CALIBRATION_ALPHA,
    start: Sequence[int] = (),
    pool: int | None = None,
) -> list[int]:
    """Greedy calibrated list (Steck 2018) of `n` items, extending `start`; see the module docstring.

    `scores` are logits; `exclude` is a boolean mask of items that may not be chosen.
    Candidates are the `pool` best-scoring allowed items (default max(20n, 200)).
    """
    allowed = np.flatnonzero(~exclude)
    chosen = [int(i) for i in start]
    allowed = np.setdiff1d(allowed, np.asarray(chosen, dtype=np.int64))
    pool = pool or max(20 * n, 200)
    cand = allowed[np.lexsort((allowed, -scores[allowed]))][:pool]
    if len(cand) == 0:
        return chosen[:n]
    rel = np.exp(scores[cand] - scores[cand].max())
    feats = item_l1[cand]
    acc = item_l1[np.asarray(chosen, dtype=np.int64)].sum(0) if chosen else np.zeros(item_l1.shape[1])
    nz = target > 0
    alive = np.ones(len(cand), dtype=bool)
    while len(chosen) < n and alive.any():
        q = acc[None, :] + feats  # candidate lists' unnormalised category mass
        q = q / np.maximum(q.sum(1, keepdims=True), 1e-12)
        qt = (1 - alpha) * q + alpha * target[None, :]
        kl = (target[nz][None, :] * np.log(target[nz][None, :] / qt[:, nz])).sum(1)
        gain = (1 - lam) * rel - lam * kl
        gain[~alive] = -np.inf
        best = int(np.argmax(gain))
        chosen.append(int(cand[best]))
        acc = acc + feats[best]
        alive[best] = False
    return chosen


def discovery_items(
    scores: np.ndarray, exclude: np.ndarray, index: InterestIndex, l3_ids: Sequence[str], k: int
) -> list[int]:
    """Up to `k` best-scoring allowed items of the L3 interests, taking the interests in turn."""
    if k <= 0 or not l3_ids:
        return []
    pos = {c: j for j, c in enumerate(index.interests)}
    queues = []
    for cid in l3_ids:
        members = np.flatnonzero((index.l2[:, pos[cid]] > 0) & ~exclude)
        queues.append(list(members[np.lexsort((members, -scores[members]))]))
    out: list[int] = []
    while len(out) < k and any(queues):
        for q in queues:
            while q and int(q[0]) in out:
                q.pop(0)
            if q and len(out) < k:
                out.append(int(q.pop(0)))
    return out


def _spread(core: list[int], discovery: list[int], n: int) -> list[int]:
    """Place the discovery items at evenly spaced ranks among the core items."""
    out = list(core)
    for j, item in enumerate(discovery):
        rank = min(len(out), round((j + 1) * n / (len(discovery) + 1)))
        out.insert(rank, item)
    return out[:n]


def rank_items(
    scores: np.ndarray,
    exclude: np.ndarray,
    profile: JsonDict,
    index: InterestIndex,
    n: int,
    *,
    layered: bool,
    discovery_share: float = DISCOVERY_SHARE,
    lam: float = CALIBRATION_LAMBDA,
) -> tuple[list[int], set[int]]:
    """Item indices of the list and which of them fill discovery slots."""
    allowed = np.flatnonzero(~exclude)
    if not layered:
        return [int(i) for i in allowed[np.lexsort((allowed, -scores[allowed]))][:n]], set()
    l3_ids = [e["id"] for e in profile["l3"]]
    disc = discovery_items(scores, exclude, index, l3_ids, int(round(discovery_share * n)))
    target = l1_target(profile, index)
    full = calibrated_list(scores, exclude, index.l1, target, n, lam=lam, start=disc)
    core = sorted(full[len(disc) :], key=lambda i: (-scores[i], i))  # calibration picks the set; rank it by score
    return _spread(core, disc, n), set(disc)


def explain(item: int, profile: JsonDict, index: InterestIndex, discovery_slot: bool) -> JsonDict:
    """Which layer and interest an item serves for this user."""
    item_interests = [index.interests[c] for c in np.flatnonzero(index.l2[item] > 0)]
    l3 = {e["id"]: e for e in profile["l3"]}
    hits = sorted((e for c, e in l3.items() if c in item_interests), key=lambda e: -e["lift"])
    if hits:
        e = hits[0]
        return {
            "layer": LAYER_L3,
            "interest": e["id"],
            "interest_name": e["name"],
            "why": f"discovery: the model rates your affinity for {e['id']} {e['lift']:.1f}× the average user's, "
            f"while it is {100 * e['observed']:.0f}% of your history" + (" (discovery slot)" if discovery_slot else ""),
        }
    fine = sorted((e for e in profile["l2"] if e["id"] in item_interests), key=lambda e: -e["share"])
    if fine:
        e = fine[0]
        return {
            "layer": LAYER_L2,
            "interest": e["id"],
            "interest_name": e["name"],
            "why": f"fine interest {e['id']}: {100 * e['share']:.0f}% of your profile",
        }
    shares = {e["id"]: e["share"] for e in profile["l1"]}
    cats = [index.categories[g] for g in np.flatnonzero(index.l1[item] > 0)]
    if not cats:
        return {"layer": LAYER_L1, "interest": "", "interest_name": "", "why": "top score (item has no category)"}
    g = max(cats, key=lambda c: (shares.get(c, 0.0), c))
    return {
        "layer": LAYER_L1,
        "interest": g,
        "interest_name": g,
        "why": f"core interest {g}: {100 * shares.get(g, 0.0):.0f}% of your profile",
    }


def recommend(
    model: StrataModel,
    index: InterestIndex,
    catalog: Catalog,
    user: UserRatings,
    *,
    n: int = 10,
    layered: bool = False,
    positive_threshold: float = 4.0,
    rating_range: tuple[float, float] = (1.0, 5.0),
) -> JsonDict:
    """Top-`n` unrated items for one user from the model and their own train ratings, each
    explained; see the module docstring. This is what the user's device computes."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    tensors = train_tensors([user], catalog.n_items, positive_threshold)
    with torch.no_grad():
        out = model(*tensors.as_tuple())
    scores = out.logits[0].double().numpy()
    ratings = out.rating[0].double().numpy()
    pi = torch.softmax(out.logits[0].double(), dim=0).numpy()
    profile = profile_from_distribution(pi, tensors.positives[0].numpy(), index, ProfileSettings())
    exclude = np.zeros(catalog.n_items, dtype=bool)
    exclude[user.train_items] = True
    items, disc = rank_items(scores, exclude, profile, index, n, layered=layered)
    lo, hi = rating_range
    rows = [
        {
            "rank": rank,
            "item": catalog.item_ids[i],
            "title": catalog.titles[i],
            "score": round(float(scores[i]), 4),
            "predicted_rating": round(float(np.clip(ratings[i], lo, hi)), 2),
            **explain(i, profile, index, i in disc),
        }
        for rank, i in enumerate(items, start=1)
    ]
    target = l1_target(profile, index)
    return {
        "layered": layered,
        "history": {"train_ratings": int(len(user.train_items)), "train_positives": profile["n_positives"]},
        "profile": profile,
        "miscalibration": round(miscalibration(items, index.l1, target), 6),
        "items": rows,
    }


def format_recommendations(result: JsonDict) -> str:
    """Format a terminal view: the user's layered profile, then the explained list."""
    p = result["profile"]
    kind = "layered (calibrated + discovery)" if result["layered"] else "plain"
    lines = [
        (
            f"User {result['user']} · {result['history']['train_ratings']} train ratings, "
            f"{result['history']['train_positives']} positives · model {result['model_fingerprint'][:12]}"
            f" · taxonomy {result['taxonomy_fingerprint'][:12]}"
        ),
        "L1 core:      " + ", ".join(f"{e['id']} {100 * e['share']:.0f}%" for e in p["l1"][:5] if e["share"] > 0),
        "L2 fine:      " + ("; ".join(f"{e['id']} {100 * e['share']:.0f}% ({e['name']})" for e in p["l2"][:3]) or "—"),
        "L3 discovery: " + ("; ".join(f"{e['id']} lift {e['lift']:.1f}× ({e['name']})" for e in p["l3"]) or "—"),
        f"Top {len(result['items'])} ({kind}; miscalibration KL {result['miscalibration']:.3f}):",
    ]
    for r in result["items"]:
        lines.append(
            f"{r['rank']:>3}. {r['title'][:48]:<48} r̂ {r['predicted_rating']:.1f}  [{r['layer']}: {r['interest']}]"
        )
        lines.append(f"     {r['why']}")
    return "\n".join(lines)
