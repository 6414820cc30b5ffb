"""The global interest taxonomy (DESIGN.md §5): L1 catalog categories, L2 clusters of item vectors.

Built by the server from the aggregated model and the public catalog only, never from ratings.

- **Item representation.** The decoder scores item i for a user-side hidden vector h as
  <h, v_i> + b_i with v_i = W_i (learned item vectors) + A^T f_i (projection of the public
  features f_i), whichever the model has. The vectors are centred, their leading principal
  component is removed ("all-but-the-top", Mu & Viswanath 2018: in trained item/word
  vectors it encodes popularity — on ML-100K it correlates −0.88 with log item count — and
  otherwise every category splits into "popular" and "obscure"), and they are L2-normalised.
- **L2 clusters.** Within each category, k-means++ for k = 2..k_max with clusters smaller
  than `min_size` merged into their neighbours; the k with the best mean silhouette wins if
  it reaches `min_silhouette`, else the category is one interest (`shared.clustering.choose_k`).
  Items with several categories are clustered in each of them.
- **Names.** Representative titles are the members closest to the centroid (cosine; the
  model's item bias, a popularity signal, plays no part); keywords are title words
  over-represented in the cluster against its category (tf-idf-like, in ≥ 2 titles); the
  decade span covers the 10th–90th percentile of release years.
- **Population prior.** prior_i = E_{z~N(0,I)} softmax(decode(z))_i over `prior_samples`
  fixed-seed draws: the model's item distribution for an average user. L1/L2 prior shares
  are Σ_i prior_i p(interest | i) with p spread 1/|categories| over an item's categories.
- **Versioning.** `model_fingerprint` is the manifest's weights fingerprint; `fingerprint`
  is SHA-256 over the canonical JSON of everything else. Building twice gives the same file.

`taxonomy.json`: {format, run, model_fingerprint, params, n_items, categories: [{id,
n_items, prior_share, silhouette, interests: [{id, category, name, titles, keywords,
decades, n_items, prior_share, items (indices into the manifest's item_index)}]}],
fingerprint}.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from shared.clustering import choose_k
from shared.data.source import load_catalog
from shared.data.types import Catalog
from shared.model import StrataModel
from shared.run_dir import TAXONOMY_FORMAT, JsonDict, RunDir
from shared.seeds import CLUSTERING, make_seed

log = logging.getLogger(__name__)


_STOPWORDS = frozenset(
    [
        "the",
        "a",
        "an",
        "of",
        "and",
        "in",
        "to",
        "on",
        "for",
        "with",
        "from",
        "at",
        "by",
        "is",
        "it",
        "my",
        "me",
        "you",
        "your",
        "his",
        "her",
        "our",
        "its",
        "la",
        "le",
        "les",
        "de",
        "du",
        "des",
        "el",
        "il",
        "der",
        "die",
        "das",
        "und",
        "ii",
        "iii",
        "iv",
        "part",
        "movie",
        "film",
    ]
)
_YEAR_SUFFIX = re.compile(r"\s*\(\d{4}\)\s*$")


@dataclass(frozen=True)
class TaxonomyParams:
    """Settings of the L2 clustering; stored in taxonomy.json."""

    k_max: int = 8
    """Most L2 interests per category."""
    min_size: int = 5
    """Smallest L2 interest (items); smaller clusters are merged into their neighbours."""
    min_silhouette: float = 0.02
    """A category is split only if its best partition reaches this mean silhouette."""
    remove_top_components: int = 1
    """Leading principal components removed from the item vectors (popularity directions)."""
    n_titles: int = 3
    """Representative titles per interest."""
    n_keywords: int = 3
    prior_samples: int = 1024
    """Draws z ~ N(0, I) averaged for the population prior."""


def item_vectors(model: StrataModel) -> tuple[np.ndarray, str]:
    """I×h decoder item vectors (learned and/or projected public features) and which parts were used."""
    scorer = getattr(model, "dec_items", None)
    if scorer is None:
        raise ValueError("the model has no `dec_items` item scorer: cannot build a taxonomy from it.")
    parts: list[np.ndarray] = []
    names: list[str] = []
    with torch.no_grad():
        if getattr(scorer, "learned", None) is not None:
            parts.append(scorer.learned.weight.double().numpy())
            names.append("learned")
        if getattr(scorer, "to_features", None) is not None:
            parts.append((scorer.features.double() @ scorer.to_features.weight.double()).numpy())
            names.append("features")
    if not parts:
        raise ValueError("the model's decoder has neither learned item vectors nor a feature projection.")
    return np.sum(parts, axis=0), "+".join(names)


def normalise_vectors(vectors: np.ndarray, remove_top: int) -> np.ndarray:
    """Centre, drop the `remove_top` leading principal components, L2-normalise rows."""
    x = vectors - vectors.mean(0)
    if remove_top > 0:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        top = vt[:remove_top]
        x = x - (x @ top.T) @ top
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x / np.where(norms > 0, norms, 1.0), dtype=np.float64)


def population_prior(model: StrataModel, *, samples: int, seed: int) -> np.ndarray:
    """Return E_{z~N(0,I)} softmax(decode(z)): the item distribution of an average user (sums to 1)."""
    latent = model.config.latent_dim
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, latent, generator=gen)
    with torch.no_grad():
        probs = torch.softmax(model.decode(z).double(), dim=1).mean(0)
    return (probs / probs.sum()).numpy()


def _category_seed(seed: int, category: str) -> int:
    """Return the clustering seed of one category (below 2**31: scikit-learn takes 32-bit seeds)."""
    return make_seed(seed, CLUSTERING, category) % 2**31


def _tokens(title: str) -> set[str]:
    words = re.findall(r"[a-z][a-z']+", _YEAR_SUFFIX.sub("", title).lower())
    return {w.strip("'") for w in words if len(w) >= 3 and w not in _STOPWORDS}


def _short_title(title: str) -> str:
    return _YEAR_SUFFIX.sub("", title).strip() or title


def _decades(years: list[int]) -> str:
    if not years:
        return ""
    lo, hi = (int(np.percentile(years, q)) // 10 * 10 for q in (10, 90))
    return f"{lo}s" if lo == hi else f"{lo}s–{hi}s"


def _keywords(members: np.ndarray, category_items: np.ndarray, tokens: list[set[str]], n: int) -> list[str]:
    """Title words over-represented in the cluster against its category (in at least 2 titles)."""
    in_cluster = Counter(t for i in members for t in tokens[i])
    in_category = Counter(t for i in category_items for t in tokens[i])
    n_c, n_g = len(members), len(category_items)
    scored = []
    for word, df in in_cluster.items():
        if df < 2 or df / n_c <= in_category[word] / n_g:
            continue
        scored.append((-(df / n_c) * np.log((1 + n_g) / (1 + in_category[word])), word))
    return [w for _, w in sorted(scored)[:n]]


def _interest(
    interest_id: str,
    category: str,
    members: np.ndarray,
    centroid: np.ndarray,
    x: np.ndarray,
    category_items: np.ndarray,
    catalog: Catalog,
    tokens: list[set[str]],
    share: np.ndarray,
    params: TaxonomyParams,
) -> JsonDict:
    closeness = x[members] @ centroid
    order = np.lexsort((members, -np.round(closeness, 9)))
    titles = [_short_title(catalog.titles[i]) or catalog.item_ids[i] for i in members[order[: params.n_titles]]]
    keywords = _keywords(members, category_items, tokens, params.n_keywords)
    decades = _decades([y for y in (catalog.years[i] for i in members) if y is not None])
    name = ", ".join(titles) + (f" ({decades})" if decades else "") + (f" [{', '.join(keywords)}]" if keywords else "")
    return {
        "id": interest_id,
        "category": category,
        "name": name,
        "titles": titles,
        "keywords": keywords,
        "decades": decades,
        "n_items": len(members),
        "prior_share": round(float(share[members].sum()), 9),
        "items": [int(i) for i in np.sort(members)],
    }


def taxonomy_from_model(
    model: StrataModel,
    catalog: Catalog,
    *,
    seed: int,
    model_fingerprint: str,
    run_name: str = "",
    params: TaxonomyParams | None = None,
) -> JsonDict:
    """Build the taxonomy of a model over a catalog (no file access); see the module docstring."""
    params = params or TaxonomyParams()
    vectors, representation = item_vectors(model)
    if vectors.shape[0] != catalog.n_items:
        raise ValueError(f"the model scores {vectors.shape[0]} items but the catalog has {catalog.n_items}.")
    x = normalise_vectors(vectors, params.remove_top_components)
    prior = population_prior(model, samples=params.prior_samples, seed=seed)
    n_cats = np.array([max(len(c), 1) for c in catalog.categories], dtype=np.float64)
    share = prior / n_cats  # prior mass an item gives each of its categories
    tokens = [_tokens(t) for t in catalog.titles]
    categories = []
    for category in catalog.category_names:
        items = np.array([i for i, cats in enumerate(catalog.categories) if category in cats], dtype=np.int64)
        c = choose_k(
            x[items],
            k_max=params.k_max,
            min_size=params.min_size,
            seed=_category_seed(seed, category),
            min_silhouette=params.min_silhouette,
        )
        interests = [
            _interest(
                f"{category}/{j}",
                category,
                items[c.labels == j],
                c.centroids[j],
                x,
                items,
                catalog,
                tokens,
                share,
                params,
            )
            for j in range(c.k)
        ]
        categories.append(
            {
                "id": category,
                "n_items": len(items),
                "prior_share": round(float(share[items].sum()), 9),
                "silhouette": round(c.silhouette, 6),
                "interests": interests,
            }
        )
        log.debug("category %s: %d items, %d interests (silhouette %.3f)", category, len(items), c.k, c.silhouette)
    body = {
        "format": TAXONOMY_FORMAT,
        "run": run_name,
        "model_fingerprint": model_fingerprint,
        "params": {
            **asdict(params),
            "seed": seed,
            "representation": representation,
            "prior": "mean softmax(decode(z)), z~N(0,I)",
        },
        "n_items": catalog.n_items,
        "categories": categories,
    }
    body["fingerprint"] = taxonomy_fingerprint(body)
    return body


def taxonomy_fingerprint(taxonomy: JsonDict) -> str:
    """SHA-256 of the canonical JSON of a taxonomy without its own fingerprint."""
    body = {k: v for k, v in taxonomy.items() if k != "fingerprint"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def build_taxonomy(run: RunDir, params: TaxonomyParams | None = None) -> JsonDict:
    """Build the taxonomy of a run's final model and public catalog; write its `taxonomy.json`."""
    model, manifest, config = run.load_model()
    catalog = load_catalog(config.data, config.run.seed)
    taxonomy = taxonomy_from_model(
        model,
        catalog,
        seed=config.run.seed,
        model_fingerprint=manifest["weights_fingerprint"],
        run_name=config.run.name,
        params=params,
    )
    write_taxonomy(run, taxonomy)
    return taxonomy


def write_taxonomy(run: RunDir, taxonomy: JsonDict) -> Path:
    """Write the run's `taxonomy.json`."""
    path = run.write_taxonomy(taxonomy)
    n_l2 = sum(len(c["interests"]) for c in taxonomy["categories"])
    log.info("taxonomy of %s: %d categories, %d interests -> %s", run, len(taxonomy["categories"]), n_l2, path)
    return path


def load_taxonomy(run: RunDir) -> JsonDict:
    """Return the run's `taxonomy.json` if it belongs to the run's current model, else build it (lazily)."""
    taxonomy = run.read_taxonomy()
    if taxonomy is not None:
        return taxonomy
    if run.taxonomy_path.is_file():
        log.info("%s belongs to another model; rebuilding it", run.taxonomy_path)
    return build_taxonomy(run)


def render_tree(taxonomy: JsonDict) -> str:
    """Render a readable text tree: L1 categories, their L2 interests with sizes and names."""
    n_l2 = sum(len(c["interests"]) for c in taxonomy["categories"])
    lines = [
        (
            f"Interest taxonomy of {taxonomy.get('run') or 'run'} · model {taxonomy['model_fingerprint'][:12]}"
            f" · taxonomy {taxonomy['fingerprint'][:12]}"
        ),
        (
            f"{len(taxonomy['categories'])} L1 categories, {n_l2} L2 interests, {taxonomy['n_items']} items"
            f" (item vectors: {taxonomy['params']['representation']})"
        ),
    ]
    for cat in taxonomy["categories"]:
        lines.append(f"{cat['id']} — {cat['n_items']} items, prior {100 * cat['prior_share']:.1f}%")
        for j, interest in enumerate(cat["interests"]):
            branch = "└──" if j == len(cat["interests"]) - 1 else "├──"
            lines.append(f"  {branch} {interest['id']} ({interest['n_items']}): {interest['name']}")
    return "\n".join(lines)
