"""Quality of a run's interest layers, measured on its held-out ratings (DESIGN.md §5, issue 4).

- **L3 lift**: over users with L3 interests and held-out positives, the mean share of a
  user's held-out positives (each item's weight p(c|i)) that falls in their L3 interests,
  divided by the mean share the population prior gives those interests.
- **L2 coherence**: mean cosine similarity, over the users' train positives, of item pairs
  inside each L2 interest, against random interests of the same sizes drawn within the same
  category (the ratio; > 1 means the model's fine interests group items liked together).
- **Plain vs layered lists** (top 10 as shown, and top 100 for NDCG@100): Steck's
  miscalibration KL against the user's L1 profile, intra-list diversity (mean pairwise
  1 − cosine of the items' category vectors), catalog coverage (distinct items over all
  lists / catalog size) and NDCG@100 on held-out positives.
"""

from __future__ import annotations

import logging
from typing import TypedDict

import numpy as np
import torch

from client.profiles import (
    ProfileSettings,
    l1_target,
    profile_from_distribution,
)
from client.recommend import CALIBRATION_LAMBDA, miscalibration, rank_items
from server.taxonomy import load_taxonomy
from shared.clustering import adjusted_mutual_information
from shared.data.matrices import train_tensors
from shared.data.source import load_source
from shared.data.split import split_configured
from shared.data.synthetic import make_synthetic
from shared.interests import InterestIndex
from shared.metrics import ndcg_at_k
from shared.run_dir import JsonDict, RunDir

log = logging.getLogger(__name__)

RANDOM_DRAWS = 20


class _ListStats(TypedDict):
    """Per-user figures of one kind of list (plain or layered), and the items its top 10 showed."""

    kl10: list[float]
    div10: list[float]
    kl100: list[float]
    ndcg: list[float]
    items10: set[int]


def _list_ndcg(items: list[int], relevant: np.ndarray, k: int = 100) -> float:
    scores = np.full((1, len(relevant)), -np.inf)
    scores[0, items] = np.arange(len(items), 0, -1, dtype=np.float64)
    return float(ndcg_at_k(scores, relevant[None, :].astype(bool), k)[0])


def _diversity(items: list[int], item_l1: np.ndarray) -> float:
    v = item_l1[items]
    norms = np.linalg.norm(v, axis=1)
    v = v / np.maximum(norms, 1e-12)[:, None]
    sim = v @ v.T
    n = len(items)
    return float((1 - sim[~np.eye(n, dtype=bool)]).mean()) if n > 1 else 0.0


def l2_coherence(index: InterestIndex, positives: np.ndarray, seed: int) -> dict[str, float]:
    """Within-interest co-consumption cosine, real vs random interests of the same sizes."""
    cols = positives.T.astype(np.float64)
    cols = cols / np.maximum(np.linalg.norm(cols, axis=1, keepdims=True), 1e-12)
    sim = cols @ cols.T
    rng = np.random.default_rng(seed)

    def mean_pair_sim(members: np.ndarray) -> tuple[float, int]:
        if len(members) < 2:
            return 0.0, 0
        block = sim[np.ix_(members, members)]
        pairs = len(members) * (len(members) - 1)
        return float(block.sum() - np.trace(block)), pairs

    real_sum = real_pairs = 0.0
    rand_sum = rand_pairs = 0.0
    for g in range(len(index.categories)):
        in_cat = np.flatnonzero(index.l1[:, g] > 0)
        for c in np.flatnonzero(index.interest_category == g):
            members = np.flatnonzero(index.l2[:, c] > 0)
            s, p = mean_pair_sim(members)
            real_sum, real_pairs = real_sum + s, real_pairs + p
            for _ in range(RANDOM_DRAWS):
                s, p = mean_pair_sim(rng.choice(in_cat, size=len(members), replace=False))
                rand_sum, rand_pairs = rand_sum + s, rand_pairs + p
    real = real_sum / max(real_pairs, 1)
    rand = rand_sum / max(rand_pairs, 1)
    return {"coherence": real, "random_coherence": rand, "coherence_ratio": real / rand if rand > 0 else float("nan")}


def evaluate_layers(run: RunDir, *, lam: float = CALIBRATION_LAMBDA) -> JsonDict:
    """Measure the layer metrics of a run (its exported model, taxonomy and held-out ratings)."""
    model, _, config = run.load_model()
    taxonomy = load_taxonomy(run)
    data = load_source(config.data, config.run.seed)
    users = split_configured(data, config.data, config.run.seed)
    threshold = config.data.positive_threshold
    index = InterestIndex.from_taxonomy(taxonomy, data.catalog.categories)
    tensors = train_tensors(users, data.n_items, threshold)
    model.eval()
    with torch.no_grad():
        mu, _ = model.encode(tensors.positives)
        logits = model.decode(mu).double()
    pi = torch.softmax(logits, dim=1).numpy()
    scores = logits.numpy()
    pos = tensors.positives.numpy()
    settings = ProfileSettings()
    lift_hit, lift_prior = [], []
    plain: _ListStats = {"kl10": [], "div10": [], "kl100": [], "ndcg": [], "items10": set()}
    layered: _ListStats = {"kl10": [], "div10": [], "kl100": [], "ndcg": [], "items10": set()}
    interest_pos = {c: j for j, c in enumerate(index.interests)}
    for u, user in enumerate(users):
        test_pos = user.test_items[user.test_ratings >= threshold]
        if len(test_pos) == 0:
            continue
        profile = profile_from_distribution(pi[u], pos[u], index, settings)
        l3 = [interest_pos[e["id"]] for e in profile["l3"]]
        if l3:
            lift_hit.append(float(index.l2[test_pos][:, l3].sum() / len(test_pos)))
            lift_prior.append(float(index.prior_l2[l3].sum()))
        exclude = np.zeros(data.n_items, dtype=bool)
        exclude[user.train_items] = True
        relevant = np.zeros(data.n_items, dtype=bool)
        relevant[test_pos] = True
        target = l1_target(profile, index)
        for layered_list, acc in ((False, plain), (True, layered)):
            top10, _ = rank_items(scores[u], exclude, profile, index, 10, layered=layered_list, lam=lam)
            top100, _ = rank_items(scores[u], exclude, profile, index, 100, layered=layered_list, lam=lam)
            acc["kl10"].append(miscalibration(top10, index.l1, target))
            acc["kl100"].append(miscalibration(top100, index.l1, target))
            acc["div10"].append(_diversity(top10, index.l1))
            acc["ndcg"].append(_list_ndcg(top100, relevant))
            acc["items10"].update(top10)

    def summary(acc: _ListStats) -> dict[str, float]:
        return {
            "miscalibration@10": float(np.mean(acc["kl10"])),
            "miscalibration@100": float(np.mean(acc["kl100"])),
            "diversity@10": float(np.mean(acc["div10"])),
            "coverage@10": len(acc["items10"]) / data.n_items,
            "ndcg@100": float(np.mean(acc["ndcg"])),
        }

    p, lay = summary(plain), summary(layered)
    return {
        "l3_lift": float(np.mean(lift_hit) / np.mean(lift_prior)) if lift_prior else float("nan"),
        "l3_users": len(lift_hit),
        **l2_coherence(index, pos, config.run.seed),
        "n_interests": len(index.interests),
        "plain": p,
        "layered": lay,
        "miscalibration_cut@10": 1 - lay["miscalibration@10"] / p["miscalibration@10"],
        "ndcg_change": lay["ndcg@100"] / p["ndcg@100"] - 1,
        "lambda": lam,
    }


def planted_ami(run: RunDir) -> dict[str, float]:
    """Return, for a synthetic run, the AMI between the L2 interests and the planted sub-interests, over
    all items and within each planted category (mean)."""
    config = run.read_config()
    d = config.data
    if d.source != "synthetic":
        raise ValueError(
            f"{run} was not trained on synthetic data (data.source={d.source!r}): no planted interests."
        )
    data, planted = make_synthetic(
        n_users=d.synthetic_users, n_items=d.synthetic_items, n_categories=d.synthetic_categories,
        subs_per_category=d.synthetic_subs_per_category, seed=config.run.seed,
    )
    taxonomy = load_taxonomy(run)
    primary = np.array([cs[0] for cs in data.catalog.categories])  # an item's planted category comes first
    assigned = {
        i: it["id"]
        for c in taxonomy["categories"]
        for it in c["interests"]
        for i in it["items"]
        if primary[i] == c["id"]
    }
    labels = np.array([assigned[i] for i in range(data.n_items)])
    within = [adjusted_mutual_information(labels[primary == c], planted[primary == c]) for c in sorted(set(primary))]
    return {"ami": adjusted_mutual_information(labels, planted), "ami_within_category": float(np.mean(within))}


def format_layer_metrics(m: JsonDict) -> str:
    """Format the result of `evaluate_layers` as a readable summary."""
    p, lay = m["plain"], m["layered"]
    return "\n".join(
        [
            "",
            f"Interest layers on the held-out ratings ({m['n_interests']} L2 interests):",
            (
                f"  L3 lift            {m['l3_lift']:.2f}  "
                f"({m['l3_users']} users with L3 interests and held-out positives)"
            ),
            (
                f"  L2 coherence       {m['coherence']:.4f} vs {m['random_coherence']:.4f} for random interests "
                f"(ratio {m['coherence_ratio']:.2f})"
            ),
            f"  Lists (λ = {m['lambda']:g})     plain → layered",
            (
                f"  miscalibration@10  {p['miscalibration@10']:.3f} → {lay['miscalibration@10']:.3f}  "
                f"(cut {100 * m['miscalibration_cut@10']:.0f}%)"
            ),
            f"  diversity@10       {p['diversity@10']:.3f} → {lay['diversity@10']:.3f}",
            f"  coverage@10        {p['coverage@10']:.3f} → {lay['coverage@10']:.3f}",
            f"  NDCG@100           {p['ndcg@100']:.4f} → {lay['ndcg@100']:.4f}  ({100 * m['ndcg_change']:+.1f}%)",
        ]
    )
