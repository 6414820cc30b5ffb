"""The simulation oracle: the runner's own evaluation of the global model on every user's
held-out ratings, exact and noiseless.

It reads the data set directly — never a device reply — so it is research instrumentation,
not a release: every figure it gives is labelled `shared.metrics.ORACLE_LABEL` in
`metrics.jsonl`, the summary, the reports and the benchmarks. A deployment has no oracle.
"""

from __future__ import annotations

import torch

from shared.config import StrataConfig
from shared.data.user_store import open_store
from shared.data.split import split_configured
from shared.features import model_features
from shared.metrics import evaluate_model
from shared.model import build_model


class OracleEvaluation:
    """Evaluate global weights on every user's held-out ratings (the same split the clients hold)."""

    def __init__(self, config: StrataConfig) -> None:
        data = open_store(config.data, config.run.seed)  # mapped: the process holds no copy of the data set
        self.config = config
        self.n_items = data.n_items
        self.features = model_features(data.catalog, config)
        self.users = split_configured(data, config.data, config.run.seed)

    def __call__(self, weights: dict[str, torch.Tensor]) -> dict[str, float]:
        """NDCG@100, Recall@20, RMSE and MAE of `weights` over all users."""
        model = build_model(self.n_items, self.config.model, self.features, seed=self.config.run.seed)
        model.load_state_dict(weights, strict=False)
        d = self.config.data
        scale = (d.rating_min, d.rating_max)
        return evaluate_model(model, self.users, self.n_items, d.positive_threshold, rating_range=scale).means()
