"""Public item features from the catalog (costless under DP: they are not private data)."""

from __future__ import annotations

import numpy as np

from .data.types import Catalog


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
