"""The server's side of a one-shot DP release: ask every client for its users' bounded sum,
add the noise itself under central privacy (recorded in its ledger first), return the total.

Two releases use it: the popularity prior before round 1 (round 0 in the ledgers) and the
interest census after the last round (round `federation.rounds` + 1).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from shared.config import StrataConfig
from shared.privacy.accounting import epsilon_of
from shared.privacy.ledger import Ledger, LedgerEntry
from shared.privacy.release import (
    CENSUS,
    CENSUS_TOP_K,
    gaussian_noise,
    noise_holder,
    release_bound,
    release_entry,
    release_round,
)

from .central_dp import SERVER

log = logging.getLogger("strata")

CENSUS_FILENAME = "census.json"


@dataclass
class Release:
    """What a release gave: the (noisy) total, who contributed, the clients' ε afterwards."""

    total: np.ndarray
    clients: int
    users: int
    failed: int
    client_epsilon: dict[int, float] = field(default_factory=dict)
    entry: LedgerEntry | None = None
    """The server's ledger entry when the server added the noise."""


def collect_release(
    grid: Grid,
    config: StrataConfig,
    kind: str,
    *,
    run_id: str,
    dim: int,
    server_ledger: Ledger | None,
    timeout: float,
    arrays: ArrayRecord | None = None,
    interests: np.ndarray | None = None,
) -> Release:
    """Run one release of `kind` over every connected client; see the module docstring."""
    server_round = release_round(kind, config)
    content = RecordDict({"config": ConfigRecord({"release": kind, "run-id": run_id, "server-round": server_round})})
    if arrays is not None:
        content["arrays"] = arrays
    if interests is not None:
        content["interests"] = ArrayRecord({"l2": Array(np.ascontiguousarray(interests, dtype=np.float64))})
    nodes = sorted(grid.get_node_ids())
    messages = [Message(content=content, message_type=MessageType.QUERY, dst_node_id=n) for n in nodes]
    total = np.zeros(dim, dtype=np.float64)
    out = Release(total=total, clients=0, users=0, failed=0)
    for msg in grid.send_and_receive(messages, timeout=timeout):
        node = msg.metadata.src_node_id
        if msg.has_error():
            out.failed += 1
            log.warning("%s release: client %d failed: %s", kind, node, msg.error.reason)
            continue
        part = msg.content["release"]["sum"].numpy()
        if part.shape != (dim,) or not np.all(np.isfinite(part)):
            out.failed += 1
            log.warning("%s release: client %d sent a sum of shape %s (expected (%d,)) or non-finite values", kind, node, part.shape, dim)
            continue
        total += part
        out.clients += 1
        out.users += int(msg.content["metrics"]["num-users"])
        out.client_epsilon[node] = float(msg.content["metrics"]["epsilon"])
    if noise_holder(config.privacy.mode) == "server":
        if server_ledger is None:
            raise ValueError("a central-privacy release needs the server's ledger.")
        z = config.privacy.release_noise_multiplier
        out.entry = release_entry(
            noise_multiplier=z, bound=release_bound(kind), run_id=run_id, server_round=server_round, holder=SERVER
        )
        server_ledger.append(out.entry)
        out.total = total + gaussian_noise(dim, z * release_bound(kind))
    log.info(
        "%s release: %d clients (%d users, %d failed), noise added by %s",
        kind, out.clients, out.users, out.failed, noise_holder(config.privacy.mode) or "nobody (privacy off)",
    )
    return out


def write_census(run_dir: Path, taxonomy: dict, release: Release, config: StrataConfig, delta: float) -> dict:
    """`census.json`: noisy holder counts per L2 interest and the census release's own (ε, δ)."""
    interests = [it for c in taxonomy["categories"] for it in c["interests"]]
    z = config.privacy.release_noise_multiplier
    holder = noise_holder(config.privacy.mode)
    one = release_entry(noise_multiplier=z, bound=release_bound(CENSUS), run_id="", server_round=0, holder="census")
    census = {
        "interests": [
            {"id": it["id"], "label": it.get("name", it["id"]), "count": round(float(c), 3)}
            for it, c in zip(interests, release.total, strict=True)
        ],
        "epsilon": epsilon_of([one], delta, config.privacy.accountant) if holder else None,  # None: no DP
        "delta": delta,
        "noise_std": z * release_bound(CENSUS) if holder else 0.0,
        "noise_added_by": holder or "nobody (privacy off)",
        "top_k": CENSUS_TOP_K,
        "taxonomy_fingerprint": taxonomy["fingerprint"],
        "clients": release.clients,
        "failed_clients": release.failed,  # their users are missing from the counts
    }
    (Path(run_dir) / CENSUS_FILENAME).write_text(json.dumps(census, indent=1) + "\n", encoding="utf-8")
    return census
