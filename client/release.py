"""A client's part of a DP release: the sum of its users' bounded vectors.

Three releases use it: the popularity prior, the interest census (`ReleaseIns`) and each
federated evaluation (`EvaluateIns`). Under local privacy the client adds the Gaussian noise
itself and records the release in its own ledger before replying, so its users' guarantee
never depends on the server; under central privacy the server does both.
"""

from __future__ import annotations

import logging

import numpy as np

from shared.config import StrataConfig
from shared.data.matrices import train_tensors
from shared.metrics import user_metric_rows
from shared.privacy.release import (
    CENSUS,
    EVALUATION,
    POPULARITY,
    bounded_rows,
    census_rows,
    gaussian_noise,
    noise_holder,
    popularity_rows,
    release_bound,
    release_entry,
    release_noise_multiplier,
)
from shared.protocol import EvaluateIns, EvaluateRes, ReleaseIns, ReleaseRes

from .budget import ClientBudget
from .policy import PERMISSIVE, Policy, release_refusal
from .profiles import interest_shares
from .store import DeviceStore
from .trainer import model_for

log = logging.getLogger(__name__)


def private_sum(
    store: DeviceStore,
    config: StrataConfig,
    rows: np.ndarray,
    *,
    kind: str,
    run_id: str,
    server_round: int,
    budget: ClientBudget,
) -> tuple[np.ndarray | None, str]:
    """Return the sum of `rows` each scaled to the release's bound, noised and recorded here when the
    client holds the noise; or (None, why) when the budget refuses the release."""
    bound = release_bound(kind)
    total = bounded_rows(rows, bound).sum(axis=0)
    if noise_holder(config.privacy.mode) != "client":
        return total, ""
    z = release_noise_multiplier(kind, config.privacy)
    entry = release_entry(
        noise_multiplier=z, bound=bound, run_id=run_id, server_round=server_round, holder=store.client_id
    )
    reason = budget.refusal(entry)  # the cap binds releases as it binds rounds
    if reason:
        return None, reason
    budget.record(entry)  # durable before the release leaves the device
    return total + gaussian_noise(total.shape[0], z * bound), ""


def _release_rows(store: DeviceStore, config: StrataConfig, ins: ReleaseIns) -> np.ndarray:
    pos = train_tensors(store.users, store.n_items, config.data.positive_threshold).positives
    if ins.kind == POPULARITY:
        return popularity_rows(pos.numpy())
    if ins.kind == CENSUS:
        weights, interest_matrix = ins.weights(), ins.interests
        if weights is None or interest_matrix is None:
            raise ValueError("a census contribution needs the model weights and the item × interest matrix.")
        if interest_matrix.shape[0] != store.n_items:
            raise ValueError(
                f"the interest matrix covers {interest_matrix.shape[0]} items, the client {store.n_items}."
            )
        return census_rows(interest_shares(model_for(store, config, weights), pos, interest_matrix))
    raise ValueError(f"unknown release {ins.kind!r}; known: {POPULARITY}, {CENSUS}.")


def contribute(
    store: DeviceStore, config: StrataConfig, ins: ReleaseIns, budget: ClientBudget, policy: Policy = PERMISSIVE
) -> ReleaseRes:
    """Return the client's sum for a release of `ins.kind` (noised and recorded here under local
    privacy), and its ε afterwards; a refusal names its reason."""
    reason = release_refusal(policy, config, ins.kind)
    total = None
    if not reason:
        rows = _release_rows(store, config, ins)
        total, reason = private_sum(
            store, config, rows, kind=ins.kind, run_id=ins.run_id, server_round=ins.server_round, budget=budget
        )
    if reason:
        log.warning("client %s refused the %s release: %s", store.client_id, ins.kind, reason)
    return ReleaseRes(total=total, epsilon=budget.spent(), reason=reason, key=budget.key)


def evaluate(
    store: DeviceStore, config: StrataConfig, ins: EvaluateIns, budget: ClientBudget, policy: Policy = PERMISSIVE
) -> EvaluateRes:
    """Return the client's evaluation release of the global weights: the sum of its users' bounded
    metric vectors (`shared.metrics.user_metric_rows`), noised and recorded here under local privacy."""
    reason = release_refusal(policy, config, EVALUATION)
    total = None
    if not reason:
        d = config.data
        model = model_for(store, config, ins.weights())
        rows = user_metric_rows(model, store.users, store.n_items, d.positive_threshold, (d.rating_min, d.rating_max))
        total, reason = private_sum(
            store, config, rows, kind=EVALUATION, run_id=ins.run_id, server_round=ins.server_round, budget=budget
        )
    if reason:
        log.warning("client %s refused the evaluation release: %s", store.client_id, reason)
    return EvaluateRes(total=total, epsilon=budget.spent(), reason=reason, key=budget.key)
