"""Synthetic user profiles sampled from a run's model (DESIGN.md §5 "Content generation").

`generate_profiles` writes N synthetic users in the generic CSV format (`user,item,rating`)
plus the catalog next to it (`<stem>_catalog.csv`, found by `strata data validate`):

1. **Latents.** z ~ N(0, I) in the model's latent space (the Mult-VAE prior).
   *Conditioned on an L2 interest c* (`interest=`): z ~ N(z_c, I), the prior recentred on
   z_c = μ(x_c), the encoder's latent for a user whose positives are exactly the items of c
   (x_c the multi-hot of c's items in the taxonomy). z_c is computed from the model and the
   taxonomy only (the taxonomy is itself built from the model and the public catalog).
2. **Refinement** (`refine_steps`, default 1). With β ≤ 0.2 the users' posteriors sit far
   from N(0, I), and a raw prior draw decodes to a near-flat item distribution (on ML-100K:
   Gini of item counts 0.25 against 0.63 in the real ratings). Each step runs the model's own
   encode–decode chain once (Rezende et al. 2014, §5): draw a profile (length L, step 3)
   from softmax(decode(z)), then z ← μ(profile), which lands z where the encoder puts users. The final profile is
   drawn from softmax(decode(z)) of the last z.
3. **Profile length** L ~ round(LogNormal(ln `length_median`, `length_sigma`²)), clipped to
   [`MIN_LENGTH`, number of items]: a fixed public distribution whose defaults are generic
   constants, not fitted to any data set (no private statistic is read).
4. **Items.** L distinct items drawn from π = softmax(decode(z)) without replacement (Gumbel top-L, i.e.
   successive sampling proportional to π).
5. **Ratings.** The rating head at z with a neutral user bias (b_u = 0): b_i + ⟨P z, q_i⟩,
   rounded to the public rating scale `rating_scale` = (lowest, highest, step), default 1..5
   in steps of 1.

**Privacy.** Steps 1–5 read only the model weights, the public catalog and the taxonomy, and a
seeded generator: the profiles are post-processing of the trained model and carry its
user-level (ε, δ) guarantee unchanged. If the run trained without DP the profiles are *not*
private (they may reveal training data); the summary says which.

**Evaluation (touches real data; only on request).** With `compare_with_real=True`
(`strata generate --compare-to-real`), `<out stem>_comparison_NOT_PRIVATE.json` compares the
synthetic profiles with the run's real ratings: category marginals (each rating spreads
1/|categories| over its item's categories) with total variation distance, L2 interest
marginals, popularity (share of ratings on the top 1% / 10% of items, Gini of item counts),
profile lengths and ratings. These are exact statistics of the private data, **not part of
the private release** and carrying no DP guarantee: the file says so in its name and in its
first keys (`"private": false` and a `warning`), and the summary in `comparison`. Without the
flag nothing derived from the real ratings is computed or written.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from client.recommend import recommend
from server.run_report import SYNTHETIC_EXAMPLE_LABEL
from server.taxonomy import load_taxonomy
from shared.data.csv_writer import write_catalog_csv
from shared.data.source import load_source
from shared.data.split import UserRatings
from shared.data.types import Catalog, RatingsData
from shared.interests import InterestIndex
from shared.model import StrataModel
from shared.run_dir import JsonDict, RunDir

log = logging.getLogger(__name__)

LENGTH_MEDIAN = 50.0
"""Median synthetic profile length (public constant, not fitted to data)."""
LENGTH_SIGMA = 0.8
"""σ of log profile length (public constant)."""
MIN_LENGTH = 5
"""Shortest synthetic profile (= `strata data validate`'s minimum ratings per user)."""
RATING_SCALE = (1.0, 5.0, 1.0)
"""Public rating scale (lowest, highest, step) the predicted ratings are rounded to."""
REFINE_STEPS = 1
"""Encode–decode steps applied to each prior draw (see the module docstring, step 2)."""
BATCH = 1024
"""Latents decoded per batch."""
COMPARISON_FORMAT = "strata-generate-comparison/2"
COMPARISON_SUFFIX = "_comparison_NOT_PRIVATE.json"
"""`<out stem>` + this: the comparison with the real ratings (`compare_with_real=True` only)."""
COMPARISON_WARNING = (
    "NOT PRIVATE: EXACT STATISTICS OF THE REAL (PRIVATE) RATINGS, with no DP guarantee — an evaluation for the "
    "operator only, not part of the private release; only the synthetic CSV and its catalog are the DP "
    "(post-processed) output. Do not publish this file next to them."
)


@dataclass(frozen=True)
class Profiles:
    """Synthetic ratings as parallel arrays: user index, item index, rating."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    n_users: int


def generate_profiles(
    run_dir: Path,
    *,
    n: int,
    out: Path,
    interest: str | None = None,
    seed: int = 0,
    length_median: float = LENGTH_MEDIAN,
    length_sigma: float = LENGTH_SIGMA,
    rating_scale: tuple[float, float, float] = RATING_SCALE,
    refine_steps: int = REFINE_STEPS,
    compare_with_real: bool = False,
) -> JsonDict:
    """Write `n` synthetic users to `out` (+ catalog); return the summary.

    With `compare_with_real` also write the comparison with the real ratings
    (`<stem>_comparison_NOT_PRIVATE.json`, not private). See the module docstring for the
    method and its privacy.
    """
    if n < 1:
        raise ValueError(f"generate: n must be at least 1, got {n}.")
    if refine_steps < 0:
        raise ValueError(f"generate: refine_steps must be ≥ 0, got {refine_steps}.")
    if length_median < 1 or length_sigma < 0:
        raise ValueError(
            f"generate: length_median must be ≥ 1 and length_sigma ≥ 0, got {length_median}, {length_sigma}."
        )
    lo, hi, step = rating_scale
    if not (hi > lo and step > 0):
        raise ValueError(
            "generate: rating_scale must be (lowest, highest, step) with highest > lowest, step > 0; "
            f"got {rating_scale}."
        )
    run, out = RunDir.of(run_dir), Path(out)
    model, manifest, config = run.load_model()
    data = load_source(config.data, config.run.seed)  # the catalog is public; ratings only for the comparison
    catalog = data.catalog
    taxonomy = load_taxonomy(run)
    centre = None
    if interest is not None:
        centre = interest_latent(model, taxonomy, interest)
    gen = torch.Generator().manual_seed(seed)
    profiles = sample_profiles(
        model, n=n, generator=gen, centre=centre, length_median=length_median, length_sigma=length_sigma,
        rating_scale=rating_scale, refine_steps=refine_steps,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    catalog_path = out.with_name(f"{out.stem}_catalog.csv")
    write_profiles_csv(out, profiles, catalog)
    write_catalog_csv(catalog, catalog_path)
    privacy = privacy_statement(run, config.privacy.mode)
    summary: JsonDict = {
        "out": str(out),
        "catalog": str(catalog_path),
        "run": str(run),
        "model_fingerprint": manifest["weights_fingerprint"],
        "taxonomy_fingerprint": taxonomy["fingerprint"],
        "n_users": n,
        "n_ratings": int(len(profiles.items)),
        "seed": seed,
        "interest": interest,
        "method": {
            "latent": f"z ~ N(z_c, I), z_c = encoder μ of interest {interest}'s items" if interest else "z ~ N(0, I)",
            "refine_steps": refine_steps,
            "items": "distinct items drawn from softmax(decode(z)) without replacement (Gumbel top-L)",
            "length": (
                f"round(LogNormal(ln {length_median:g}, {length_sigma:g}²)) "
                f"clipped to [{MIN_LENGTH}, {catalog.n_items}] (public)"
            ),
            "ratings": f"rating head at z with user bias 0, rounded to {lo:g}..{hi:g} step {step:g}",
        },
        "privacy": privacy,
    }
    log.info("wrote %d synthetic users (%d ratings) to %s and %s", n, len(profiles.items), out, catalog_path)
    log.info("privacy: %s", privacy["statement"])
    if not compare_with_real:
        summary["comparison"] = None  # nothing derived from the real ratings is computed or written
    else:
        report = compare_to_real(
            profiles, data, taxonomy, interest=interest, positive_threshold=config.data.positive_threshold
        )
        path = out.with_name(f"{out.stem}{COMPARISON_SUFFIX}")
        head: JsonDict = {"private": False, "warning": COMPARISON_WARNING, "format": COMPARISON_FORMAT}
        path.write_text(
            json.dumps({**head, "generation": summary, **report}, indent=1, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        summary["comparison"] = {"path": str(path), "private": False, "warning": COMPARISON_WARNING, "tv": report["tv"]}
        log.warning("wrote %s: %s", path, COMPARISON_WARNING)
        log.info("%s", format_comparison(report))
    return summary


def synthetic_example(run: RunDir, *, n: int = 10, seed: int = 0) -> JsonDict:
    """One synthetic user sampled from the run's model, recommended as a device would.

    The profile is `sample_profiles`' (the model, the public rating scale and a seeded
    generator only); its layered profile and top-`n` list are `client.recommend.recommend`'s
    on that profile as the user's train ratings. No real rating is read: the result is
    post-processing of the model, fit for a report (`strata report`'s default example user).
    """
    model, manifest, config = run.load_model()
    catalog = load_source(config.data, config.run.seed).catalog  # public; the ratings are not used
    taxonomy = load_taxonomy(run)
    # at most n_items - n ratings, so that n items are left to recommend
    max_length = max(MIN_LENGTH, catalog.n_items - n)
    profiles = sample_profiles(model, n=1, generator=torch.Generator().manual_seed(seed), max_length=max_length)
    user = UserRatings(
        user=0,
        train_items=profiles.items.astype(np.int64),
        train_ratings=profiles.ratings.astype(np.float32),
        test_items=np.zeros(0, dtype=np.int64),
        test_ratings=np.zeros(0, dtype=np.float32),
    )
    index = InterestIndex.from_taxonomy(taxonomy, catalog.categories)
    lo, hi, _ = RATING_SCALE
    result = recommend(
        model, index, catalog, user, n=n, layered=True,
        positive_threshold=config.data.positive_threshold, rating_range=(lo, hi),
    )
    return {
        "run": str(run),
        "user": synthetic_user_id(0, 1),
        "synthetic": True,
        "label": SYNTHETIC_EXAMPLE_LABEL,
        "seed": seed,
        "model_fingerprint": manifest["weights_fingerprint"],
        "taxonomy_fingerprint": taxonomy["fingerprint"],
        **result,
    }


# --------------------------------------------------------------------------- sampling


def interest_latent(model: StrataModel, taxonomy: JsonDict, interest: str) -> torch.Tensor:
    """z_c: the encoder's latent μ for a user whose positives are exactly interest c's items."""
    interests = {i["id"]: i for c in taxonomy["categories"] for i in c["interests"]}
    if interest not in interests:
        some = ", ".join(list(interests)[:6])
        raise ValueError(
            f"interest {interest!r} is not in the taxonomy of run {taxonomy.get('run') or '?'} "
            f"({len(interests)} L2 interests, e.g. {some}); `strata layers RUN` lists them."
        )
    x = torch.zeros(1, int(taxonomy["n_items"]))
    x[0, interests[interest]["items"]] = 1.0
    with torch.no_grad():
        mu, _ = model.encode(x)
    return mu[0]


def sample_lengths(
    n: int, n_items: int, *, median: float, sigma: float, generator: torch.Generator, max_length: int | None = None
) -> np.ndarray:
    """Profile lengths from the public log-normal, clipped to [MIN_LENGTH, min(n_items, max_length)]."""
    z = torch.randn(n, generator=generator, dtype=torch.float64).numpy()
    raw = np.rint(np.exp(math.log(median) + sigma * z))
    hi = n_items if max_length is None else max(1, min(n_items, max_length))
    return np.clip(raw, min(MIN_LENGTH, hi), hi).astype(np.int64)


def sample_profiles(
    model: StrataModel,
    *,
    n: int,
    generator: torch.Generator,
    centre: torch.Tensor | None = None,
    length_median: float = LENGTH_MEDIAN,
    length_sigma: float = LENGTH_SIGMA,
    rating_scale: tuple[float, float, float] = RATING_SCALE,
    refine_steps: int = REFINE_STEPS,
    max_length: int | None = None,
) -> Profiles:
    """N synthetic profiles from the model alone (steps 1–5 of the module docstring)."""
    latent = int(model.config.latent_dim)
    n_items = int(model.n_items)
    lengths = sample_lengths(
        n, n_items, median=length_median, sigma=length_sigma, generator=generator, max_length=max_length
    )
    lo, hi, step = rating_scale
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    ratings: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, n, BATCH):
            b = min(BATCH, n - start)
            k = lengths[start : start + b]
            z = torch.randn(b, latent, generator=generator)
            if centre is not None:
                z = z + centre[None, :]
            for _ in range(refine_steps):
                x = torch.zeros(b, n_items)
                for j, chosen in enumerate(_draw_items(model.decode(z), k, generator)):
                    x[j, chosen] = 1.0
                z, _ = model.encode(x)
            rhat = model.latent_ratings(z).double().numpy()
            for j, chosen in enumerate(_draw_items(model.decode(z), k, generator)):
                users.append(np.full(len(chosen), start + j, dtype=np.int64))
                items.append(chosen)
                ratings.append(np.clip(lo + np.round((rhat[j, chosen] - lo) / step) * step, lo, hi))
    return Profiles(
        users=np.concatenate(users),
        items=np.concatenate(items),
        ratings=np.concatenate(ratings).astype(np.float64),
        n_users=n,
    )


def _draw_items(logits: torch.Tensor, lengths: np.ndarray, generator: torch.Generator) -> list[np.ndarray]:
    """Per row, `lengths[j]` distinct items drawn from softmax(logits) without replacement (Gumbel top-k)."""
    logp = torch.log_softmax(logits.double(), dim=1)
    u = torch.rand(logp.shape, generator=generator, dtype=torch.float64).clamp_(1e-300, 1.0)
    keys = (logp - torch.log(-torch.log(u))).numpy()
    n_items = keys.shape[1]
    out = []
    for j, k in enumerate(lengths):
        k = int(k)
        chosen = np.argpartition(-keys[j], k - 1)[:k] if k < n_items else np.arange(n_items)
        out.append(np.sort(chosen).astype(np.int64))
    return out


# ---------------------------------------------------------------------------- writing


def synthetic_user_id(u: int, n: int) -> str:
    """`syn0001`-style ids, zero-padded to the width of n."""
    return f"syn{u + 1:0{len(str(n))}d}"


def write_profiles_csv(path: Path, profiles: Profiles, catalog: Catalog) -> None:
    """Write the generic ratings CSV: `user,item,rating` (ratings written as the shortest exact form)."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user", "item", "rating"])
        for u, i, r in zip(profiles.users, profiles.items, profiles.ratings, strict=True):
            w.writerow([synthetic_user_id(int(u), profiles.n_users), catalog.item_ids[int(i)], f"{float(r):g}"])


def privacy_statement(run: RunDir, mode: str) -> JsonDict:
    """Return the guarantee the synthetic profiles inherit from the run (post-processing)."""
    if mode == "off":
        return {
            "private": False,
            "epsilon": "inf",
            "statement": "NOT private: the run trained without DP (privacy.mode = 'off'); the profiles are "
            "post-processing of a non-private model and may reveal its training data.",
        }
    eps: float | str | None = None
    delta: float | None = None
    source = ""
    report_path = run.privacy_report_json
    summary = run.read_summary()
    if report_path.is_file():
        g = json.loads(report_path.read_text(encoding="utf-8")).get("guarantee", {})
        eps, delta, source = g.get("epsilon"), g.get("delta"), report_path.name
    elif summary is not None:
        s = summary
        eps = max(float(s.get("epsilon", 0.0)), float(s.get("central_epsilon", 0.0) or 0.0))
        delta, source = (
            s.get("delta"),
            "summary.json (largest of local and central ε; `strata privacy-report` composes them)",
        )
    shown = "unknown (no summary.json)" if eps is None else (f"{eps:.3f}" if isinstance(eps, float) else str(eps))
    return {
        "private": True,
        "epsilon": eps,
        "delta": delta,
        "source": source,
        "statement": f"private by post-processing: the profiles read only the model, the public catalog and the "
        f"taxonomy, so they hold the run's user-level guarantee (privacy.mode = {mode!r}, ε = {shown}"
        + (f", δ = {delta:.3g}" if isinstance(delta, float) else "")
        + ").",
    }


# ------------------------------------------------------------- evaluation (real data)


def _item_shares(items: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Distribution over the columns of an item × group weight matrix, one unit per rating."""
    mass: np.ndarray = weights[items].sum(0)
    return mass / mass.sum() if mass.sum() > 0 else mass


def _gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 equal, → 1 concentrated)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    if x.sum() == 0:
        return 0.0
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


def profile_statistics(
    users: np.ndarray, items: np.ndarray, ratings: np.ndarray, n_users: int, n_items: int
) -> JsonDict:
    """Lengths, popularity concentration and rating distribution of a set of profiles."""
    lengths = np.bincount(users, minlength=n_users)
    counts = np.sort(np.bincount(items, minlength=n_items))[::-1]
    top = {
        f"top_{p}pct_share": float(counts[: max(1, math.ceil(p / 100 * n_items))].sum() / max(counts.sum(), 1))
        for p in (1, 10)
    }
    values, freq = np.unique(ratings, return_counts=True)
    return {
        "n_users": int(n_users),
        "n_ratings": int(len(items)),
        "length_mean": round(float(lengths.mean()), 3),
        "length_median": float(np.median(lengths)),
        **{k: round(v, 4) for k, v in top.items()},
        "gini": round(_gini(counts), 4),
        "items_covered": int((counts > 0).sum()),
        "rating_mean": round(float(ratings.mean()), 4),
        "rating_hist": {f"{v:g}": round(float(c / len(ratings)), 4) for v, c in zip(values, freq, strict=True)},
    }


def _tv(p: np.ndarray, q: np.ndarray) -> float:
    return round(float(0.5 * np.abs(p - q).sum()), 4)


def compare_to_real(
    profiles: Profiles, data: RatingsData, taxonomy: JsonDict, *, interest: str | None, positive_threshold: float
) -> JsonDict:
    """Synthetic vs the run's real ratings (all, and positives only). Reads the private data."""
    index = InterestIndex.from_taxonomy(taxonomy, data.catalog.categories)
    pos = data.ratings >= positive_threshold
    sides = {
        "synthetic": (profiles.users, profiles.items, profiles.ratings, profiles.n_users),
        "real": (data.users, data.items, data.ratings, data.n_users),
        "real_positives": (data.users[pos], data.items[pos], data.ratings[pos], data.n_users),
    }
    stats = {k: profile_statistics(u, i, r, n, data.n_items) for k, (u, i, r, n) in sides.items()}
    l1 = {k: _item_shares(v[1], index.l1) for k, v in sides.items()}
    l2 = {k: _item_shares(v[1], index.l2) for k, v in sides.items()}
    l1["model_prior"], l2["model_prior"] = index.prior_l1, index.prior_l2
    report: JsonDict = {
        "stats": stats,
        "categories": {
            g: {k: round(float(v[j]), 4) for k, v in l1.items()} for j, g in enumerate(index.categories)
        },
        "interests": {
            c: {k: round(float(v[j]), 4) for k, v in l2.items()} for j, c in enumerate(index.interests)
        },
        "tv": {
            "categories_vs_real": _tv(l1["synthetic"], l1["real"]),
            "categories_vs_real_positives": _tv(l1["synthetic"], l1["real_positives"]),
            "interests_vs_real": _tv(l2["synthetic"], l2["real"]),
            "interests_vs_real_positives": _tv(l2["synthetic"], l2["real_positives"]),
            "categories_real_positives_vs_model_prior": _tv(l1["real_positives"], l1["model_prior"]),
        },
    }
    if interest is not None:
        c = index.interests.index(interest)
        report["interest"] = {
            "id": interest, "name": index.names[c], **{k: round(float(v[c]), 4) for k, v in l2.items()}
        }
    return report


def format_comparison(report: JsonDict) -> str:
    """Summarise the comparison of `compare_to_real` in a few lines of text."""
    s, tv = report["stats"], report["tv"]
    rows: list[tuple[str, ...]] = [("", "synthetic", "real", "real ≥ threshold")]
    for key, label in (
        ("n_users", "users"), ("n_ratings", "ratings"), ("length_mean", "profile length mean"),
        ("length_median", "profile length median"), ("top_1pct_share", "share on top 1% items"),
        ("top_10pct_share", "share on top 10% items"), ("gini", "Gini (item counts)"),
        ("items_covered", "items covered"), ("rating_mean", "mean rating"),
    ):
        rows.append((label, *(f"{s[k][key]:g}" for k in ("synthetic", "real", "real_positives"))))
    lines = ["Synthetic vs real — NOT PRIVATE (exact statistics of the real ratings, not part of the release):"]
    lines += [f"  {a:<24}{b:>12}{c:>12}{d:>18}" for a, b, c, d in rows]
    lines.append(
        f"  TV distance, categories: {tv['categories_vs_real']:.3f} vs real, "
        f"{tv['categories_vs_real_positives']:.3f} vs positives; "
        f"L2 interests: {tv['interests_vs_real']:.3f} / {tv['interests_vs_real_positives']:.3f}"
    )
    if "interest" in report:
        it = report["interest"]
        lines.append(
            f"  interest {it['id']}: {100 * it['synthetic']:.1f}% of synthetic ratings, "
            f"{100 * it['real']:.1f}% of real, model prior {100 * it['model_prior']:.1f}%"
        )
    return "\n".join(lines)
