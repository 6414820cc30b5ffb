"""A client's part of a one-shot DP release: the sum of its users' bounded vectors.

Under local privacy the client adds the Gaussian noise itself and records the release in its
own ledger before replying, so its users' guarantee never depends on the server.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from shared.config import StrataConfig
from shared.data.matrices import train_tensors
from shared.privacy.accounting import epsilon_of
from shared.privacy.ledger import Ledger
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

from .profiles import interest_shares
from .store import DeviceStore
from .trainer import model_for, resolved_delta


def contribute(
    store: DeviceStore,
    config: StrataConfig,
    kind: str,
    *,
    run_id: str,
    server_round: int,
    ledger: Ledger,
    weights: OrderedDict[str, torch.Tensor] | None = None,
    interest_matrix: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """(this client's sum, its ε afterwards) for a release of `kind`; noised and recorded here
    under local privacy."""
    pos = train_tensors(store.users, store.n_items, config.data.positive_threshold).positives
    if kind == POPULARITY:
        rows = popularity_rows(pos.numpy())
    elif kind == CENSUS:
        if weights is None or interest_matrix is None:
            raise ValueError("a census contribution needs the model weights and the item × interest matrix.")
        if interest_matrix.shape[0] != store.n_items:
            raise ValueError(f"the interest matrix covers {interest_matrix.shape[0]} items, the client {store.n_items}.")
        rows = census_rows(interest_shares(model_for(store, config, weights), pos, interest_matrix))
    else:
        raise ValueError(f"unknown release {kind!r}; known: {POPULARITY}, {CENSUS}.")
    bound = release_bound(kind)
    total = bounded_rows(rows, bound).sum(axis=0) if len(rows) else np.zeros(rows.shape[1])
    p = config.privacy
    if noise_holder(p.mode) == "client":
        z = p.release_noise_multiplier
        ledger.append(
            release_entry(noise_multiplier=z, bound=bound, run_id=run_id, server_round=server_round, holder=store.client_id)
        )
        total = total + gaussian_noise(total.shape[0], z * bound)
    spent = epsilon_of(ledger.entries, resolved_delta(config, store), p.accountant) if len(ledger) else 0.0
    return total, spent
