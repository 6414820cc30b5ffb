"""A client's part of a one-shot DP release: the sum of its users' bounded vectors.

Under local privacy the client adds the Gaussian noise itself and records the release in its
own ledger before replying, so its users' guarantee never depends on the server.
"""

from __future__ import annotations

import logging

import numpy as np

from shared.config import StrataConfig
from shared.data.matrices import train_tensors
from shared.privacy.release import (
    CENSUS,
    POPULARITY,
    bounded_rows,
    census_rows,
    gaussian_noise,
    noise_holder,
    popularity_rows,
    release_bound,
    release_entry,
)
from shared.protocol import ReleaseIns, ReleaseRes

from .budget import ClientBudget
from .policy import PERMISSIVE, Policy, release_refusal
from .profiles import interest_shares
from .store import DeviceStore
from .trainer import model_for

log = logging.getLogger(__name__)


def contribute(
    store: DeviceStore, config: StrataConfig, ins: ReleaseIns, budget: ClientBudget, policy: Policy = PERMISSIVE
) -> ReleaseRes:
    """Return the client's sum for a release of `ins.kind` (noised and recorded here under local
    privacy), and its ε afterwards."""
    reason = release_refusal(policy, config, ins.kind)
    if reason:
        log.warning("client %s refused the %s release: %s", store.client_id, ins.kind, reason)
        return ReleaseRes(total=None, num_users=store.n_users, epsilon=budget.spent())
    pos = train_tensors(store.users, store.n_items, config.data.positive_threshold).positives
    if ins.kind == POPULARITY:
        rows = popularity_rows(pos.numpy())
    elif ins.kind == CENSUS:
        weights, interest_matrix = ins.weights(), ins.interests
        if weights is None or interest_matrix is None:
            raise ValueError("a census contribution needs the model weights and the item × interest matrix.")
        if interest_matrix.shape[0] != store.n_items:
            raise ValueError(
                f"the interest matrix covers {interest_matrix.shape[0]} items, the client {store.n_items}."
            )
        rows = census_rows(interest_shares(model_for(store, config, weights), pos, interest_matrix))
    else:
        raise ValueError(f"unknown release {ins.kind!r}; known: {POPULARITY}, {CENSUS}.")
    bound = release_bound(ins.kind)
    total = bounded_rows(rows, bound).sum(axis=0) if len(rows) else np.zeros(rows.shape[1])
    p = config.privacy
    if noise_holder(p.mode) == "client":
        z = p.release_noise_multiplier
        entry = release_entry(
            noise_multiplier=z, bound=bound, run_id=ins.run_id, server_round=ins.server_round, holder=store.client_id
        )
        reason = budget.refusal(entry)
        if reason:  # the cap binds one-shot releases as it binds rounds
            log.warning("client %s refused the %s release: %s", store.client_id, ins.kind, reason)
            return ReleaseRes(total=None, num_users=store.n_users, epsilon=budget.spent())
        budget.record(entry)
        total = total + gaussian_noise(total.shape[0], z * bound)
    return ReleaseRes(total=total, num_users=store.n_users, epsilon=budget.spent())
