"""The server's side of a one-shot DP release: ask every client for its users' bounded sum,
add the noise itself under central privacy (recorded in its ledger first), return the total.

Two releases use it: the popularity prior before round 1 (round 0 in the ledgers) and the
interest census after the last round (round `federation.rounds` + 1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MessageType
from flwr.serverapp import Grid

from shared.config import StrataConfig
from shared.data.types import Catalog
from shared.interests import InterestIndex
from shared.model import StrataModel
from shared.privacy.accounting import epsilon_of
from shared.privacy.ledger import SERVER, Ledger, LedgerEntry
from shared.privacy.release import (
    CENSUS,
    CENSUS_TOP_K,
    POPULARITY,
    bias_from_popularity,
    gaussian_noise,
    noise_holder,
    release_bound,
    release_entry,
    release_round,
)
from shared.protocol import CohortRes, ProtocolError, ReleaseIns, ReleaseRes, cohort_ins
from shared.run_dir import JsonDict, RunDir

from .cohorts import cohort_devices, cohort_outcomes, split_into_cohorts
from .replies import match_replies
from .instruction_log import InstructionLog, Kind, Outcome
from .taxonomy import taxonomy_from_model, write_taxonomy

log = logging.getLogger(__name__)


@dataclass
class Release:
    """What a release gave: the (noisy) total, who contributed, the clients' ε afterwards."""

    total: np.ndarray
    clients: int
    failed: int
    refused: int = 0
    """Clients whose budget (max-epsilon) refused the release; their users are missing."""
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
    instructions: InstructionLog | None = None,
) -> Release | None:
    """Run one release of `kind` over every connected client; see the module docstring.

    None when the server adds the noise and the release would take the central ε above
    `privacy.central-max-epsilon`: then no client is asked and nothing is released.
    """
    server_round = release_round(kind, config)
    p = config.privacy
    server_entry = release_entry(
        noise_multiplier=p.release_noise_multiplier,
        bound=release_bound(kind),
        run_id=run_id,
        server_round=server_round,
        holder=SERVER,
    )
    if noise_holder(p.mode) == "server":
        if server_ledger is None:
            raise ValueError("a central-privacy release needs the server's ledger.")
        if p.central_max_epsilon > 0:
            after = epsilon_of([*server_ledger.entries, server_entry], p.resolved_delta, p.accountant)
            if after > p.central_max_epsilon:
                log.warning(
                    "%s release skipped: it would bring the central ε to %.3f > privacy.central-max-epsilon %g",
                    kind,
                    after,
                    p.central_max_epsilon,
                )
                return None
    ins = ReleaseIns(kind=kind, server_round=server_round, run_id=run_id, arrays=arrays, interests=interests)
    content = ins.to_record()
    nodes = sorted(grid.get_node_ids())
    cohort_of_node: dict[int, tuple[int, ...]] = {}
    devices = cohort_devices(config)
    if devices:  # every device answers, in the cohort of one of the cohort nodes
        cohort_of_node = split_into_cohorts(list(range(devices)), nodes, config.federation.cohorts)
        messages = [
            Message(content=cohort_ins(content, ds), message_type=MessageType.QUERY, dst_node_id=n)
            for n, ds in cohort_of_node.items()
        ]
    else:
        messages = [Message(content=content, message_type=MessageType.QUERY, dst_node_id=n) for n in nodes]
    total = np.zeros(dim, dtype=np.float64)
    out = Release(total=total, clients=0, failed=0)
    instruction_kind: Kind = "popularity" if kind == POPULARITY else "census"

    def record(node: int, device: str, outcome: Outcome) -> None:
        if instructions is not None:
            instructions.append(
                run_id=run_id,
                server_round=server_round,
                kind=instruction_kind,
                node=node,
                device=device,
                outcome=outcome,
            )

    replies = list(match_replies(messages, grid.send_and_receive(messages, timeout=timeout)))
    with instructions.batch() if instructions is not None else nullcontext():  # one fsync for all
        if cohort_of_node:
            _add_cohorts(replies, cohort_of_node, total, out, kind, record)
            replies = []
        for node, msg in replies:
            if msg is None or msg.has_error():
                out.failed += 1
                why = "no reply within the timeout" if msg is None else msg.error.reason
                log.warning("%s release: client %d failed: %s", kind, node, why)
                record(node, "", "failed")
                continue
            try:
                reply = ReleaseRes.from_record(msg.content)
            except ProtocolError as exc:
                out.failed += 1
                log.warning("%s release: malformed reply from client %d: %s", kind, node, exc)
                record(node, "", "failed")
                continue
            out.client_epsilon[node] = reply.epsilon
            part = reply.total
            if part is None:
                out.refused += 1
                log.info("%s release: client %d refused: %s", kind, node, reply.reason)
                record(node, reply.key, "refused")
                continue
            if part.shape != (dim,) or not np.all(np.isfinite(part)):
                record(node, reply.key, "rejected")
                out.failed += 1
                log.warning(
                    "%s release: client %d sent a sum of shape %s (expected (%d,)) or non-finite values",
                    kind,
                    node,
                    part.shape,
                    dim,
                )
                continue
            total += part
            out.clients += 1
            record(node, reply.key, "accepted")
    if noise_holder(p.mode) == "server":
        assert server_ledger is not None
        out.entry = server_entry
        server_ledger.append(out.entry)
        out.total = total + gaussian_noise(dim, p.release_noise_multiplier * release_bound(kind))
    log.info(
        "%s release: %d clients (%d failed, %d refused), noise added by %s",
        kind,
        out.clients,
        out.failed,
        out.refused,
        noise_holder(config.privacy.mode) or "nobody (privacy off)",
    )
    return out


def _add_cohorts(
    replies: list[tuple[int, Message | None]],
    cohort_of_node: dict[int, tuple[int, ...]],
    total: np.ndarray,
    out: Release,
    kind: str,
    record: Callable[[int, str, Outcome], None],
) -> None:
    """Cohort mode: add each cohort's sum to `total` and count every device in `out`
    (`cohorts.cohort_outcomes`: a failed node, or one whose sum does not fit, fails all its devices)."""
    dim = total.shape[0]

    def fits(res: CohortRes) -> str:
        if res.total is not None and (res.total.shape != (dim,) or not np.isfinite(res.total).all()):
            return f"a cohort sum not of shape ({dim},) or not finite"
        return ""

    for res, outcomes in cohort_outcomes(replies, cohort_of_node, what=f"{kind} release", check=fits):
        for o in outcomes:
            if res is not None:
                out.client_epsilon[o.device] = o.epsilon
            if o.outcome == "accepted":
                out.clients += 1
            elif o.outcome == "refused":
                out.refused += 1
            else:
                out.failed += 1
            record(o.device, o.key, o.outcome)
        if res is not None and res.total is not None:
            total += res.total


def popularity_prior(
    grid: Grid,
    config: StrataConfig,
    model: StrataModel,
    *,
    run_id: str,
    server_ledger: Ledger | None,
    timeout: float,
    instructions: InstructionLog | None = None,
) -> tuple[dict[str, torch.Tensor], dict[int, float]]:
    """Return weights whose decoder item bias comes from a (DP) popularity release (round 0), and
    the clients' ε after it; the model's own initial weights when the release was refused."""
    release = collect_release(
        grid,
        config,
        POPULARITY,
        run_id=run_id,
        dim=model.n_items,
        server_ledger=server_ledger,
        timeout=timeout,
        instructions=instructions,
    )
    if release is None:
        return {k: v.detach().clone() for k, v in model.named_parameters()}, {}
    model.start_from_popularity(torch.from_numpy(bias_from_popularity(release.total)))
    return {k: v.detach().clone() for k, v in model.named_parameters()}, release.client_epsilon


def interest_census(
    grid: Grid,
    config: StrataConfig,
    model: StrataModel,
    final: dict[str, torch.Tensor],
    catalog: Catalog,
    *,
    model_fingerprint: str,
    run_id: str,
    server_ledger: Ledger | None,
    delta: float,
    timeout: float,
    instructions: InstructionLog | None = None,
) -> tuple[JsonDict | None, dict[int, float]]:
    """Build the taxonomy of the final model, release the DP interest census and write both
    (`taxonomy.json`, `census.json`); return the census (None when the server's budget refused
    it) and the clients' ε after it."""
    run = RunDir.of(config.run_dir)
    model.load_state_dict(final, strict=False)
    taxonomy = taxonomy_from_model(
        model, catalog, seed=config.run.seed, model_fingerprint=model_fingerprint, run_name=config.run.name
    )
    write_taxonomy(run, taxonomy)
    index = InterestIndex.from_taxonomy(taxonomy, catalog.categories)
    release = collect_release(
        grid,
        config,
        CENSUS,
        run_id=run_id,
        dim=len(index.interests),
        server_ledger=server_ledger,
        timeout=timeout,
        arrays=ArrayRecord(final),
        interests=index.l2,
        instructions=instructions,
    )
    if release is None:
        return None, {}
    census = census_record(taxonomy, release, config, delta)
    run.write_census(census)
    eps = "no DP" if census["epsilon"] is None else f"census ε {census['epsilon']:.3f}"
    log.info(
        "census of %d interests from %d clients -> %s (%s)",
        len(census["interests"]),
        release.clients,
        run.census_path,
        eps,
    )
    return census, release.client_epsilon


def census_record(taxonomy: JsonDict, release: Release, config: StrataConfig, delta: float) -> JsonDict:
    """`census.json`: noisy holder counts per L2 interest and the census release's own (ε, δ)."""
    interests = [it for c in taxonomy["categories"] for it in c["interests"]]
    z = config.privacy.release_noise_multiplier
    holder = noise_holder(config.privacy.mode)
    one = release_entry(noise_multiplier=z, bound=release_bound(CENSUS), run_id="", server_round=0, holder="census")
    return {
        "interests": [
            {"id": it["id"], "label": it.get("name", it["id"]), "count": round(float(c), 3)}
            for it, c in zip(interests, release.total, strict=True)
        ],
        "epsilon": epsilon_of([one], delta, config.privacy.accountant) if holder else None,  # None: no DP
        "delta": delta,
        # each client adds its own noise under local privacy: the stds add in quadrature
        "noise_std": z * release_bound(CENSUS) * (np.sqrt(max(release.clients, 1)) if holder == "client" else 1.0)
        if holder
        else 0.0,
        "noise_added_by": holder or "nobody (privacy off)",
        "top_k": CENSUS_TOP_K,
        "taxonomy_fingerprint": taxonomy["fingerprint"],
        "clients": release.clients,
        "failed_clients": release.failed,  # their users are missing from the counts
        "refused_clients": release.refused,  # their budget refused: their users are missing too
    }
