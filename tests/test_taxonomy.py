"""Clustering tools, AMI, and the interest taxonomy (determinism, planted sub-interest recovery)."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from shared.clustering import adjusted_mutual_information, choose_k, kmeans, silhouette
from shared.config import StrataConfig, load_config
from shared.run_dir import RunDir

# --- clustering and AMI on hand-made inputs -------------------------------------------------


def _mi(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information (nats) of two labelings, written out from the contingency table."""
    n, ca, cb = len(a), Counter(a.tolist()), Counter(b.tolist())
    cells = Counter(zip(a.tolist(), b.tolist(), strict=True))
    return sum(nij / n * math.log(n * nij / (ca[i] * cb[j])) for (i, j), nij in cells.items())


def _h(labels: np.ndarray) -> float:
    n = len(labels)
    return -sum(c / n * math.log(c / n) for c in Counter(labels.tolist()).values())


def test_ami_is_its_definition_with_the_expected_mi_over_all_permutations() -> None:
    # contingency [[2,1,0],[0,1,2]]: the 2-cells give (2/6)·ln(6·2/(3·2)) each, the 1-cells ln(1) = 0
    assert _mi(np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 2, 2])) == pytest.approx(2 / 3 * math.log(2))
    a = np.array([0, 0, 0, 1, 1, 2])
    b = np.array([0, 0, 1, 1, 2, 2])
    emi = float(np.mean([_mi(a, b[list(p)]) for p in itertools.permutations(range(6))]))
    expected = (_mi(a, b) - emi) / ((_h(a) + _h(b)) / 2 - emi)  # (MI − E[MI]) / (mean entropy − E[MI])
    assert adjusted_mutual_information(a, b) == pytest.approx(expected)
    assert adjusted_mutual_information(b, a) == pytest.approx(expected)


def test_ami_identical_renamed_independent_and_edge_cases() -> None:
    a = np.array([0, 0, 1, 1, 2, 2, 2])
    assert adjusted_mutual_information(a, a) == pytest.approx(1.0)
    assert adjusted_mutual_information(a, np.array([5, 5, 9, 9, 1, 1, 1])) == pytest.approx(1.0)
    assert adjusted_mutual_information(a, np.array(["x/1", "x/1", "y", "y", "x/0", "x/0", "x/0"])) == pytest.approx(1.0)
    assert adjusted_mutual_information([0, 0, 0, 0], [0, 1, 2, 3]) == 0.0
    assert adjusted_mutual_information([3, 3, 3], [7, 7, 7]) == 1.0  # both one cluster: they agree
    assert adjusted_mutual_information([0, 1, 2], [2, 0, 1]) == 1.0  # both all singletons: they agree
    with pytest.raises(ValueError):
        adjusted_mutual_information([0, 1, 1], [0, 1])
    rng = np.random.default_rng(0)
    rand = [adjusted_mutual_information(rng.integers(0, 4, 200), rng.integers(0, 4, 200)) for _ in range(20)]
    assert abs(float(np.mean(rand))) < 0.01  # adjusted for chance: about 0 on average


def test_silhouette_by_hand() -> None:
    x = np.array([[0.0], [1.0], [10.0], [11.0]])
    # point 0: a = 1, b = (10 + 11)/2; point 1: a = 1, b = (9 + 10)/2; the others mirror them
    expected = (2 * (1 - 1 / 10.5) + 2 * (1 - 1 / 9.5)) / 4
    assert silhouette(x, np.array([0, 0, 1, 1])) == pytest.approx(expected)
    assert silhouette(x, np.zeros(4, dtype=int)) == 0.0


def _blobs(sizes: list[int], seed: int = 0, spread: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(sizes), 8))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return centers[labels] + spread * rng.normal(size=(len(labels), 8)), labels


def test_kmeans_separates_blobs_deterministically() -> None:
    x, truth = _blobs([20, 15, 10])
    a, b = kmeans(x, 3, seed=1), kmeans(x, 3, seed=1)
    assert np.array_equal(a.labels, b.labels)
    assert adjusted_mutual_information(a.labels, truth) == pytest.approx(1.0)
    assert list(np.bincount(a.labels)) == [20, 15, 10]  # numbered by size


def test_choose_k_finds_the_number_of_blobs_and_respects_min_size() -> None:
    x, truth = _blobs([20, 15, 10])
    c = choose_k(x, k_max=6, min_size=5, seed=0)
    assert c.k == 3 and adjusted_mutual_information(c.labels, truth) == pytest.approx(1.0)
    x2, _ = _blobs([20, 15, 2])  # a 2-point blob is below min_size: merged into a neighbour
    c2 = choose_k(x2, k_max=6, min_size=5, seed=0)
    assert c2.k == 2 and np.bincount(c2.labels).min() >= 5


def test_kmeans_does_not_depend_on_the_thread_count() -> None:
    from threadpoolctl import threadpool_limits

    x, _ = _blobs([700, 600, 500], spread=1.0)  # several 256-point chunks: threads would sum them in any order
    with threadpool_limits(limits=1):
        a = kmeans(x, 3, seed=0)
    with threadpool_limits(limits=2):
        b = kmeans(x, 3, seed=0)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.centroids, b.centroids) and a.inertia == b.inertia


# --- the taxonomy of a trained model ----------------------------------------------------------


def _planted_config(out: Path) -> StrataConfig:
    return load_config(
        None,
        [
            f"run.out={json.dumps(str(out))}",
            'data.source="synthetic"',
            "data.synthetic-users=300",
            "data.synthetic-items=96",
            "data.synthetic-categories=3",
            "data.synthetic-subs-per-category=4",
            "model.hidden-dim=32",
            "model.latent-dim=8",
            "model.rating-dim=4",
            "model.anneal-steps=20",
            "train.epochs=15",
            "train.batch-size=30",
            "train.lr=0.01",
        ],
    )


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from simulation.central import run_central

    config = _planted_config(tmp_path_factory.mktemp("planted") / "run")
    run_central(config, eval_every=100)
    return config.run_dir


def test_taxonomy_is_deterministic_and_versioned(planted_run: Path) -> None:
    from server.taxonomy import build_taxonomy, render_tree, taxonomy_fingerprint

    first = build_taxonomy(RunDir.of(planted_run))
    text = (planted_run / "taxonomy.json").read_text()
    second = build_taxonomy(RunDir.of(planted_run))
    assert (planted_run / "taxonomy.json").read_text() == text
    assert first == second
    manifest = json.loads((planted_run / "model" / "manifest.json").read_text())
    assert first["model_fingerprint"] == manifest["weights_fingerprint"]
    assert first["fingerprint"] == taxonomy_fingerprint(first)
    tree = render_tree(first)
    assert all(i["id"] in tree for c in first["categories"] for i in c["interests"])


def test_every_item_is_in_one_interest_of_each_of_its_categories(planted_run: Path) -> None:
    from server.taxonomy import load_taxonomy
    from shared.data.source import load_source

    taxonomy = load_taxonomy(RunDir.of(planted_run))
    config = RunDir.of(planted_run).read_config()
    catalog = load_source(config.data, config.run.seed).catalog
    for cat in taxonomy["categories"]:
        members = sorted(i for it in cat["interests"] for i in it["items"])
        assert members == [i for i, cs in enumerate(catalog.categories) if cat["id"] in cs]
        assert all(it["id"].startswith(cat["id"] + "/") and it["name"] for it in cat["interests"])
    total = sum(c["prior_share"] for c in taxonomy["categories"])
    assert total == pytest.approx(1.0, abs=1e-4)


def test_l2_clusters_recover_planted_sub_interests(planted_run: Path) -> None:
    from simulation.layer_eval import planted_ami

    ami = planted_ami(RunDir.of(planted_run))
    assert ami["ami"] > 0.8
    assert ami["ami_within_category"] > 0.6


def test_layer_metrics_of_a_run(planted_run: Path) -> None:
    from simulation.layer_eval import evaluate_layers, format_layer_metrics

    m = evaluate_layers(RunDir.of(planted_run))
    assert "L3 lift" in format_layer_metrics(m) and "miscalibration@10" in format_layer_metrics(m)
    # Planted users draw held-out items from the sub-interests they already show, so L3 lift
    # is measured on ML-100K (docs/benchmarks.md); here it only has to be a finite ratio.
    assert m["l3_users"] > 0 and 0 <= m["l3_lift"] < float("inf")
    assert m["coherence_ratio"] > 1  # fine interests group items liked together, more than random ones
    for side in ("plain", "layered"):
        assert 0 < m[side]["ndcg@100"] <= 1 and 0 < m[side]["coverage@10"] <= 1 and 0 <= m[side]["diversity@10"] <= 1
    assert m["layered"]["miscalibration@10"] < m["plain"]["miscalibration@10"]


@pytest.mark.parametrize("side", ["catalog", "both"])
def test_taxonomy_of_feature_models(side: str) -> None:
    import torch

    from server.taxonomy import taxonomy_from_model
    from shared.config import ModelConfig
    from shared.data.synthetic import make_synthetic
    from shared.features import catalog_features
    from shared.model import build_model

    data, _ = make_synthetic(n_users=10, n_items=40, n_categories=2, subs_per_category=2, seed=0)
    feats = torch.from_numpy(catalog_features(data.catalog))
    model = build_model(40, ModelConfig(hidden_dim=8, latent_dim=4, item_side=side), feats, 0)  # type: ignore[arg-type]
    taxonomy = taxonomy_from_model(model, data.catalog, seed=0, model_fingerprint="f" * 64)
    expected = "features" if side == "catalog" else "learned+features"
    assert taxonomy["params"]["representation"] == expected
    assert sum(len(c["interests"]) for c in taxonomy["categories"]) >= 2
