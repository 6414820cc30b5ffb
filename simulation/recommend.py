"""`strata recommend`: one user of a run's data set, recommended as their device would.

The lookup of the user in the whole data set is the simulation's part; the ranking and
the explanations are the device's (`client.recommend.recommend`), from the model, the
taxonomy and this user's own train ratings only.
"""

from __future__ import annotations

import numpy as np

from client.recommend import recommend
from server.taxonomy import load_taxonomy
from shared.data.source import load_source
from shared.data.split import split_configured
from shared.interests import InterestIndex
from shared.run_dir import JsonDict, RunDir


class UnknownUserError(ValueError):
    """The user id is not in the run's data."""


def recommend_for_user(run: RunDir, user_id: str, *, n: int = 10, layered: bool = False) -> JsonDict:
    """Top-`n` unrated items for user `user_id` (an original id of the run's data source)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    model, manifest, config = run.load_model()
    taxonomy = load_taxonomy(run)
    data = load_source(config.data, config.run.seed)
    user_id = str(user_id)
    if user_id not in data.user_ids:
        ids = data.user_ids
        raise UnknownUserError(
            f"user {user_id!r} is not in the data of run {run} ({data.name}, {len(ids)} users; ids such as "
            f"{', '.join(ids[:5])} … {ids[-1]}). User ids are the original ids of the run's data source "
            f"data.source={config.data.source!r} (for a ratings CSV, its `user` column)."
        )
    u = data.user_ids.index(user_id)
    (split,) = split_configured(data, config.data, config.run.seed, np.array([u]))
    index = InterestIndex.from_taxonomy(taxonomy, data.catalog.categories)
    result = recommend(
        model, index, data.catalog, split, n=n, layered=layered,
        positive_threshold=config.data.positive_threshold,
        rating_range=(float(data.ratings.min()), float(data.ratings.max())),
    )
    return {
        "run": str(run),
        "user": user_id,
        "model_fingerprint": manifest["weights_fingerprint"],
        "taxonomy_fingerprint": taxonomy["fingerprint"],
        **result,
    }
