"""Assembly of the privacy report: a typed, frozen `PrivacyReport` whose `to_dict()` is the JSON report.

DESIGN.md §4 "Budget report". The guarantee is user-level (ε, δ)-DP, composed by
`shared.privacy.guarantee`: the headline is the maximum over the holders' ledgers, by the PLD
accountant (RDP alongside as a cross-check; never GDP). With the server's DP-FedAvg ledger,
the report also states the local ε (the clients' own ledgers) and the central ε (the server's).
"""

from __future__ import annotations

import math
import platform
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from shared.privacy.accounting import PLD_DISCRETIZATION
from shared.privacy.guarantee import (
    HolderEpsilon,
    guarantee,
    holder_epsilon,
    holder_epsilons,
    holders,
    is_central_dp,
    local_epsilon,
    max_series,
)
from shared.config import StrataConfig
from shared.privacy.ledger import LedgerEntry
from shared.privacy.release import RELEASE, release_kind
from shared.run_dir import JsonDict

from .read import Replay, RunFiles
from .text import INF, adjacency, headline, limits, releases, trust_model
from .checks import Check
from .provenance import FAIL_CLOSED
from .verify import RDP_FACTOR

FORMAT = "strata-privacy-report/1"
PACKAGES = ("dp-accounting", "opacus", "flwr", "torch", "numpy", "scipy")
UNIT = "one user (all of their ratings)"


@dataclass(frozen=True)
class GuaranteeFacts:
    """The "guarantee" section: the (ε, δ) every user holds, and what it rests on."""

    dp: bool
    epsilon: float | str
    epsilon_rdp: float | str
    delta: float
    delta_source: str
    unit: str
    accountant: str
    held_by: str | None
    privacy_mode: str
    topology: str
    n_users: int | None
    holders: int
    central_dp: bool
    local_epsilon: float | None
    central_epsilon: float | None


@dataclass(frozen=True)
class RunRow:
    """One run found in the ledgers."""

    run_id: str
    entries: int
    clients: int
    first_round: int
    last_round: int


@dataclass(frozen=True)
class Composition:
    """What ε composes: the current run's rounds (those replayed) and every run in the ledgers."""

    current_run: str | None
    rounds: int
    replayed_rounds: tuple[int, ...]
    n_runs: int
    runs: tuple[RunRow, ...]


@dataclass(frozen=True)
class Distribution:
    """The spread of the holders' final ε."""

    holders: int
    min: float
    median: float
    max: float


@dataclass(frozen=True)
class MechanismRow:
    """Entries sharing one mechanism and its parameters."""

    mechanism: str
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    max_grad_norm: float
    entries: int
    clients: int


@dataclass(frozen=True)
class Accountants:
    """Which accountant plays which role."""

    headline: str
    cross_check: str
    event: str
    never: str


@dataclass(frozen=True)
class Fingerprints:
    """The manifest's catalog and weights fingerprints, each ledger file's SHA-256, and the public key
    that signed each ledger (its entries' `key`; verify checks them against the pinned keys)."""

    catalog: str | None
    weights: str | None
    ledgers_sha256: Mapping[str, str]
    signing_keys: Mapping[str, str]


@dataclass(frozen=True)
class RefusalRow:
    """One logged round's training replies: trained, refused, failed, skipped."""

    round: int
    clients: int
    refused: int
    failed: int
    skipped: bool


@dataclass(frozen=True)
class Verification:
    """What `verify` found: every check, and whether all passed."""

    tolerance: float
    rdp_factor: float
    passed: bool
    checks: tuple[Check, ...]


ACCOUNTANTS = Accountants(
    headline=f"PLD: dp_accounting.pld.PLDAccountant (pessimistic, value discretisation {PLD_DISCRETIZATION})",
    cross_check="RDP: dp_accounting.rdp.RdpAccountant (default orders)",
    event="SelfComposed(PoissonSampled(q, Gaussian(σ)), steps) per (σ, q), composed over all entries",
    never="GDP (it under-estimates ε at small sample rates)",
)


@dataclass(frozen=True)
class PrivacyReport:
    """The privacy report of a run; `to_dict()` is the JSON report's content (before `json_safe`)."""

    format: str
    run_dir: str
    run_name: str
    generated_at: str
    headline: str
    guarantee: GuaranteeFacts
    composition: Composition
    per_client: Mapping[str, HolderEpsilon]
    max_over_rounds: tuple[tuple[int, float], ...]
    distribution: Distribution | None
    central: HolderEpsilon | None
    mechanisms: tuple[MechanismRow, ...]
    accountants: Accountants
    versions: Mapping[str, str]
    fingerprints: Fingerprints
    refusals: tuple[RefusalRow, ...]
    adjacency: str
    trust_model: str
    releases: tuple[str, ...]
    """Every kind of release in the guarantee (current run), one sentence each."""
    limits: tuple[str, ...]
    verification: Verification | None
    audit: JsonDict | None

    def to_dict(self) -> JsonDict:
        """Return the report as plain dicts and lists, keys in order (the central ledger without "runs")."""
        out: JsonDict = _plain(self)
        if out["central"] is not None:
            del out["central"]["runs"]
        return out


def _plain(value: Any) -> Any:
    """Dataclasses as dicts (fields in order), tuples as lists, mappings as dicts, recursively."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def json_safe(value: object) -> object:
    """Non-finite floats as strings ("inf", "nan"): strict JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def assemble(files: RunFiles, replay: Replay, n_users: int | None, *, audit: JsonDict | None) -> PrivacyReport:
    """Assemble the run's report (not yet verified): the guarantee, how it composes, what it covers."""
    config = files.config
    p, fed = config.privacy, config.federation
    points, delta = replay.points, replay.delta
    per_holder = holder_epsilons(holders(files.clients, files.central), points, replay.current_run, delta)
    top = guarantee(per_holder)
    central = holder_epsilon(files.central, points, replay.current_run, delta) if files.central else None
    all_entries = [e for entries in [*files.clients.values(), files.central] for e in entries]
    runs = _runs(all_entries)
    dp = p.mode != "off"
    trained = bool(files.metrics)  # rounds ran (under central DP the sample sizes are not logged)
    eps: float | str = top.epsilon
    eps_rdp: float | str = top.epsilon_rdp
    if not dp or (not per_holder and trained):
        eps, eps_rdp = INF, INF  # off, or trained under DP without the ledgers here: nothing can be claimed
    finals = sorted(h.epsilon for h in per_holder.values())
    fedavg = is_central_dp(files.central)
    last_round = points[-1] if points else 0
    text = headline(
        config, eps, eps_rdp, delta, top.held_by, top.tied, len(per_holder), last_round, len(runs), fedavg=fedavg
    )
    manifest = files.manifest or {}
    return PrivacyReport(
        format=FORMAT,
        run_dir=str(files.run),
        run_name=config.run.name,
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        headline=text,
        guarantee=GuaranteeFacts(
            dp=dp and eps != INF,
            epsilon=eps,
            epsilon_rdp=eps_rdp,
            delta=delta,
            delta_source=replay.delta_source,
            unit=UNIT,
            accountant="pld",
            held_by=top.held_by,
            privacy_mode=p.mode,
            topology="central" if files.central and not files.clients and not fedavg else fed.topology,
            n_users=n_users,
            holders=len(per_holder),
            central_dp=fedavg,
            local_epsilon=local_epsilon(files.clients, delta) if fedavg else None,
            central_epsilon=central.epsilon if fedavg and central else None,
        ),
        composition=Composition(
            current_run=replay.current_run,
            rounds=last_round,
            replayed_rounds=tuple(points),
            n_runs=len(runs),
            runs=tuple(runs),
        ),
        per_client=per_holder,
        max_over_rounds=tuple(max_series((h.series for h in per_holder.values()), points)),
        distribution=(
            Distribution(holders=len(finals), min=finals[0], median=statistics.median(finals), max=finals[-1])
            if finals
            else None
        ),
        central=central,
        mechanisms=tuple(_mechanisms(all_entries)),
        accountants=ACCOUNTANTS,
        versions=_versions(),
        fingerprints=Fingerprints(
            catalog=manifest.get("catalog_fingerprint"),
            weights=manifest.get("weights_fingerprint"),
            ledgers_sha256=files.ledger_hashes,
            signing_keys=_signing_keys(files),
        ),
        refusals=tuple(_refusals(files.metrics)),
        adjacency=adjacency(config, delta),
        trust_model=trust_model(config, bool(files.central), bool(files.clients)),
        releases=tuple(releases(config, _rounds_by_kind(all_entries, replay.current_run, config))),
        limits=tuple(limits(config, bool(files.central), bool(files.clients), fedavg=fedavg)),
        verification=None,
        audit=audit,
    )


def _signing_keys(files: RunFiles) -> dict[str, str]:
    """Return the key(s) that signed each ledger file and the instruction log ("unsigned" for none)."""
    logs = {f"client-{cid}.jsonl": {e.key for e in es} for cid, es in files.clients.items()}
    if files.central:
        logs["central.jsonl"] = {e.key for e in files.central}
    if files.instructions:
        logs["instructions.jsonl"] = {r.key for r in files.instructions}
    return {name: ", ".join(sorted(k for k in keys if k)) or "unsigned" for name, keys in logs.items()}


def _rounds_by_kind(entries: list[LedgerEntry], current_run: str | None, config: StrataConfig) -> dict[str, list[int]]:
    """Return the rounds of the current run's entries, by mechanism (a Gaussian sum by the release its round names)."""
    out: dict[str, list[int]] = {}
    for e in entries:
        if e.run_id != current_run:
            continue
        kind = (release_kind(e.round, config) or "unplanned release") if e.mechanism == RELEASE else e.mechanism
        out.setdefault(kind, []).append(e.round)
    return out


def with_verification(report: PrivacyReport, checks: list[Check], tolerance: float, files: RunFiles) -> PrivacyReport:
    """Add the verification; a failed one says so in the headline (with the largest ε the run logged)."""
    passed = all(c.passed for c in checks)
    text = report.headline
    closed = [c for c in checks if c.name in FAIL_CLOSED and not c.passed]
    if closed and report.guarantee.privacy_mode != "off":
        # Fail closed: without every ledger, signed and chained, no ε can be stated.
        text = (
            "No guarantee can be stated (ε = ∞): " + "; ".join(f"{c.name} FAILED ({c.message})" for c in closed) + "."
        )
        report = replace(report, guarantee=replace(report.guarantee, dp=False, epsilon=INF, epsilon_rdp=INF))
    if not passed:
        text += " VERIFICATION FAILED: see the failed checks before relying on this figure."
        logged = max((float(m.get("epsilon", 0.0)) for m in files.metrics), default=0.0)
        eps = report.guarantee.epsilon
        if isinstance(eps, float) and logged > eps:
            text += f" The run itself logged ε up to {logged:.3f}."
    verification = Verification(tolerance=tolerance, rdp_factor=RDP_FACTOR, passed=passed, checks=tuple(checks))
    return replace(report, headline=text, verification=verification)


def _runs(entries: list[LedgerEntry]) -> list[RunRow]:
    """Every run in the ledgers, in order of first appearance: entries, clients, rounds."""
    found: dict[str, tuple[int, set[str], int, int]] = {}
    for e in entries:
        n, clients, first, last = found.get(e.run_id, (0, set(), e.round, e.round))
        clients.add(e.client)
        found[e.run_id] = (n + 1, clients, min(first, e.round), max(last, e.round))
    return [RunRow(rid, n, len(clients), first, last) for rid, (n, clients, first, last) in found.items()]


def _mechanisms(entries: list[LedgerEntry]) -> list[MechanismRow]:
    """Entries grouped by (mechanism, σ, q, steps, C), in that order."""
    table: dict[tuple[str, float, float, int, float], tuple[int, set[str]]] = {}
    for e in entries:
        key = (e.mechanism, e.noise_multiplier, e.sample_rate, e.steps, e.max_grad_norm)
        n, clients = table.get(key, (0, set()))
        clients.add(e.client)
        table[key] = (n + 1, clients)
    return [MechanismRow(m, s, q, k, c, n, len(clients)) for (m, s, q, k, c), (n, clients) in sorted(table.items())]


def _versions() -> dict[str, str]:
    """Python's and the accounting stack's versions."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _refusals(metrics: list[JsonDict]) -> list[RefusalRow]:
    """Every logged round's counts of trained, refused and failed clients."""
    rows = []
    for m in metrics:
        train = m.get("train") or {}
        rows.append(
            RefusalRow(
                round=int(m["round"]),
                clients=int(train.get("clients", 0) or 0),
                refused=int(train.get("refused", 0) or 0),
                failed=int(train.get("failed", 0) or 0),
                skipped=bool(m.get("skipped", False)),
            )
        )
    return rows
