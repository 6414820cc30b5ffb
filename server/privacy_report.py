"""The DP budget report of a run: JSON for programs, one self-contained HTML page for auditors.

DESIGN.md §4 "Budget report". The guarantee is user-level (ε, δ)-DP: every user holds the
ε of the ledger of the client that holds them (one user per client in `device`, the hub's
users in `hub`), so the headline is the maximum over the clients' ledgers, composed over
rounds and runs with dp-accounting's PLD accountant (RDP alongside as a cross-check; never
GDP). `verify=True` recomputes every ε from the ledgers and lists each check it made.

`ledgers/central.jsonl` is either a central reference run's DP-SGD ledger or, in a
federated run with central DP, the server's DP-FedAvg ledger (`dp-fedavg` entries, one per
round): then every user's ε composes their client's ledger (if local DP is on too) with
the server's, metrics.jsonl's "epsilon" is the local maximum and "central_epsilon" the
server's, and the report states both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from server.html_parts import CSS as _CSS
from server.html_parts import escape as _e
from server.html_parts import histogram as _histogram
from server.html_parts import line_chart as _line_chart
from server.html_parts import table as _table
from shared.config import StrataConfig
from shared.privacy.accounting import PLD_DISCRETIZATION, default_delta, epsilon_of
from shared.privacy.ledger import LedgerEntry, LedgerError, read_entries
from shared.privacy.release import KINDS, RELEASE, release_bound, release_round

from .export import read_run_config, weights_fingerprint

log = logging.getLogger(__name__)

RDP_FACTOR = 2.0
"""RDP may exceed PLD by at most this factor (plus `ABS_SLACK`) before verify calls it a
disagreement. Both are upper bounds on the true ε and PLD is the tighter one; across the
regimes Strata runs (q from 0.001 to 1, σ from 0.3 to 50, δ from 1e-6 to 0.01) RDP/PLD
measured 1.07 to 1.39. A larger gap means one accountant is broken."""
ABS_SLACK = 0.01
"""Absolute slack of the ε comparisons, for ε near 0 where ratios mean little."""
MAX_REPLAY_POINTS = 40
"""At most this many rounds are replayed per client (evenly spaced, the last always)."""
PACKAGES = ("dp-accounting", "opacus", "flwr", "torch", "numpy", "scipy")
INF = "inf"
"""How an infinite ε is written in the JSON (strict JSON has no infinity; float("inf") reads it)."""


@dataclass(frozen=True)
class Check:
    """One verification step and its outcome, in a sentence."""

    name: str
    passed: bool
    message: str


@dataclass(frozen=True)
class _RunFiles:
    """What the report reads from a run directory."""

    config: StrataConfig
    clients: dict[str, list[LedgerEntry]]
    central: list[LedgerEntry]
    ledger_hashes: dict[str, str]
    metrics: list[dict]
    manifest: dict | None
    summary: dict | None


def write_privacy_report(run_dir: Path, *, verify: bool, tolerance: float = 0.05) -> tuple[dict, bool]:
    """Write `privacy_report.json` and `privacy_report.html` into `run_dir`.

    Returns the report and whether it is verified (always True when `verify` is False).
    Without `verify` a ledger that does not parse is an error; with it, a failed check.
    """
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}.")
    run_dir = Path(run_dir)
    checks: list[Check] = []
    files = _read_run(run_dir, checks, strict=not verify)
    config = files.config
    n_users, data_fp, data_error = _data_facts(config)
    if config.privacy.delta:
        delta, delta_source = config.privacy.delta, "privacy.delta in the run's config"
    elif n_users is None:
        raise ValueError(
            f"cannot determine δ for {run_dir}: privacy.delta is 0 (meaning 1/N_users^1.1) and the data source "
            f"{config.data.source!r} could not be loaded ({data_error}); make the data available or set privacy.delta."
        )
    else:
        delta, delta_source = default_delta(n_users), f"1 / N_users^1.1 with N_users = {n_users}"

    current_run = _current_run(files)
    rounds = _rounds(files, current_run)
    points = _replay_points(rounds)
    log.info(
        "replaying %d ledger(s) at %d round(s) with the PLD accountant (δ = %.3g)",
        len(files.clients) + bool(files.central), len(points), delta,
    )
    with _quiet_absl():
        report = _build(run_dir, files, delta, delta_source, n_users, current_run, points)
        report["audit"] = _audit_result(run_dir)
        verified = True
        if verify:
            checks += _verify(run_dir, files, report, delta, current_run, points, data_fp, data_error, tolerance)
            verified = all(c.passed for c in checks)
            report["verification"] = {
                "tolerance": tolerance,
                "rdp_factor": RDP_FACTOR,
                "passed": verified,
                "checks": [asdict(c) for c in checks],
            }
            for c in checks:
                if not c.passed:
                    log.error("privacy-report verify: %s FAILED: %s", c.name, c.message)
            log.info("privacy-report verify: %d of %d checks passed", sum(c.passed for c in checks), len(checks))
            if not verified:
                report["headline"] += " VERIFICATION FAILED: see the failed checks before relying on this figure."
                logged = max((float(m.get("epsilon", 0.0)) for m in files.metrics), default=0.0)
                if isinstance(report["guarantee"]["epsilon"], float) and logged > report["guarantee"]["epsilon"]:
                    report["headline"] += f" The run itself logged ε up to {logged:.3f}."
    (run_dir / "privacy_report.json").write_text(json.dumps(_json_safe(report), indent=1, allow_nan=False), encoding="utf-8")
    (run_dir / "privacy_report.html").write_text(render_html(report), encoding="utf-8")
    log.info("wrote %s and %s", run_dir / "privacy_report.json", run_dir / "privacy_report.html")
    return report, verified


def _audit_result(run_dir: Path) -> dict | None:
    """The `strata audit` result for this run, if the run was trained by an audit (out/audit.json)."""
    path = run_dir.parent / "audit.json"
    if not path.is_file():
        return None
    audit = json.loads(path.read_text())
    if Path(audit.get("run_dir", "")).resolve() != run_dir.resolve():
        return None
    keep = ("m", "r", "guesses_per_side", "correct", "epsilon_lower_bound", "confidence", "reported_epsilon", "passed", "verdict")
    return {k: audit[k] for k in keep if k in audit}


def _json_safe(value: object) -> object:
    """Non-finite floats as strings ("inf", "nan"): strict JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------------------- reading


def _read_run(run_dir: Path, checks: list[Check], *, strict: bool) -> _RunFiles:
    config = read_run_config(run_dir)
    ledger_dir = run_dir / "ledgers"
    clients: dict[str, list[LedgerEntry]] = {}
    central: list[LedgerEntry] = []
    hashes: dict[str, str] = {}
    paths = sorted(ledger_dir.glob("client-*.jsonl"), key=_client_sort_key)
    if (ledger_dir / "central.jsonl").exists():
        paths.append(ledger_dir / "central.jsonl")
    unreadable = []
    for path in paths:
        hashes[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            entries = read_entries(path)
        except LedgerError as exc:
            if strict:
                raise
            unreadable.append(str(exc))
            continue
        if path.name == "central.jsonl":
            central = entries
        else:
            clients[path.stem.removeprefix("client-")] = entries
    if not strict:
        checks.append(
            Check(
                "ledgers parse",
                not unreadable,
                "; ".join(unreadable) if unreadable else f"{len(paths)} ledger file(s) in {ledger_dir} parse.",
            )
        )
    metrics_path = run_dir / "metrics.jsonl"
    metrics: list[dict] = []
    if metrics_path.exists():
        for n, line in enumerate(metrics_path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                int(row["round"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{metrics_path}, line {n}: not a metrics line with a 'round': {exc}") from None
            metrics.append(row)
    manifest_path = run_dir / "model" / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return _RunFiles(config, clients, central, hashes, metrics, manifest, summary)


def _client_sort_key(path: Path) -> tuple[int, int | str]:
    cid = path.stem.removeprefix("client-")
    return (0, int(cid)) if cid.isdigit() else (1, cid)


def _data_facts(config: StrataConfig) -> tuple[int | None, str | None, str | None]:
    """(N_users, data fingerprint, why the data could not be loaded)."""
    from shared.data.source import fingerprint, load_source

    try:
        data = load_source(config.data, config.run.seed)
    except (OSError, ValueError, RuntimeError) as exc:
        return None, None, str(exc)
    return int(data.n_users), fingerprint(data), None


def _current_run(files: _RunFiles) -> str | None:
    """The run whose rounds metrics.jsonl logs: summary.json's run id, else the newest entry's."""
    if files.summary and files.summary.get("run_id"):
        return str(files.summary["run_id"])
    for entries in [*files.clients.values(), files.central]:
        if entries:
            return entries[-1].run_id
    return None


def _rounds(files: _RunFiles, current_run: str | None) -> list[int]:
    rounds = {int(m["round"]) for m in files.metrics}
    for entries in [*files.clients.values(), files.central]:
        rounds |= {e.round for e in entries if e.run_id == current_run}
    return sorted(rounds)


def _replay_points(rounds: list[int]) -> list[int]:
    if len(rounds) <= MAX_REPLAY_POINTS:
        return rounds
    idx = {round(i * (len(rounds) - 1) / (MAX_REPLAY_POINTS - 1)) for i in range(MAX_REPLAY_POINTS)}
    return [rounds[i] for i in sorted(idx)]


@contextmanager
def _quiet_absl() -> Iterator[None]:
    """dp-accounting's RDP logs a warning per excluded order; they are noise in a report."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# -------------------------------------------------------------------------- replaying


def _upto(entries: Sequence[LedgerEntry], rnd: int, current_run: str | None) -> list[LedgerEntry]:
    """The entries spent by the end of round `rnd` of the current run (earlier runs in full)."""
    return [e for e in entries if e.run_id != current_run or e.round <= rnd]


def _series(
    entries: Sequence[LedgerEntry], points: list[int], current_run: str | None, delta: float, accountant: str
) -> list[tuple[int, float]]:
    return [(r, epsilon_of(_upto(entries, r, current_run), delta, accountant)) for r in points]


def _is_fedavg(files: _RunFiles) -> bool:
    """Whether central.jsonl is the server's DP-FedAvg ledger (not a central training run's)."""
    return any(e.mechanism == "dp-fedavg" for e in files.central)


def _holders(files: _RunFiles) -> dict[str, list[LedgerEntry]]:
    """Who holds users, with everything spent on those users: each client's ledger composed
    with the central one (a user's data feeds both); the central ledger alone without clients."""
    if files.clients:
        return {f"client-{cid}": [*entries, *files.central] for cid, entries in files.clients.items()}
    return {"central": list(files.central)} if files.central else {}


def _fmt_eps(eps: float | str) -> str:
    return "∞" if eps == INF or (isinstance(eps, float) and math.isinf(eps)) else f"{float(eps):.3f}"


def _fmt_delta(delta: float) -> str:
    return f"{delta:.3g}"


def _build(
    run_dir: Path,
    files: _RunFiles,
    delta: float,
    delta_source: str,
    n_users: int | None,
    current_run: str | None,
    points: list[int],
) -> dict:
    config = files.config
    p, fed = config.privacy, config.federation
    holders = _holders(files)
    per_holder: dict[str, dict] = {}
    for name, entries in holders.items():
        series = _series(entries, points, current_run, delta, "pld")
        per_holder[name] = {
            "epsilon": epsilon_of(entries, delta, "pld"),
            "epsilon_rdp": epsilon_of(entries, delta, "rdp"),
            "entries": len(entries),
            "runs": sorted({e.run_id for e in entries}),
            "series": [[r, e] for r, e in series],
        }
    max_series = [[r, max((h["series"][i][1] for h in per_holder.values()), default=0.0)] for i, r in enumerate(points)]
    central = None
    if files.central:
        central = {
            "epsilon": epsilon_of(files.central, delta, "pld"),
            "epsilon_rdp": epsilon_of(files.central, delta, "rdp"),
            "entries": len(files.central),
            "series": [[r, e] for r, e in _series(files.central, points, current_run, delta, "pld")],
        }
    all_entries = [e for entries in [*files.clients.values(), files.central] for e in entries]
    runs = _runs(all_entries)
    dp = p.mode != "off"
    trained = any(float((m.get("train") or {}).get("clients", 0) or 0) > 0 for m in files.metrics)
    holder = max(per_holder, key=lambda k: per_holder[k]["epsilon"]) if per_holder else None
    if not dp:
        eps: float | str = INF
        eps_rdp: float | str = INF
    elif not per_holder and trained:
        eps, eps_rdp = INF, INF  # trained under DP, but the ledgers are not here: nothing can be claimed
    else:
        eps = per_holder[holder]["epsilon"] if holder else 0.0
        eps_rdp = max((h["epsilon_rdp"] for h in per_holder.values()), default=0.0)
    finals = sorted(h["epsilon"] for h in per_holder.values())
    tied = sum(1 for h in per_holder.values() if holder and math.isclose(h["epsilon"], per_holder[holder]["epsilon"]))
    fedavg = _is_fedavg(files)
    headline = _headline(
        config, eps, eps_rdp, delta, holder, tied, len(holders), points[-1] if points else 0, len(runs), fedavg=fedavg
    )
    local_eps = max((epsilon_of(entries, delta, "pld") for entries in files.clients.values()), default=0.0)
    return {
        "format": "strata-privacy-report/1",
        "run_dir": str(run_dir),
        "run_name": config.run.name,
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "headline": headline,
        "guarantee": {
            "dp": dp and eps != INF,
            "epsilon": eps,
            "epsilon_rdp": eps_rdp,
            "delta": delta,
            "delta_source": delta_source,
            "unit": "one user (all of their ratings)",
            "accountant": "pld",
            "held_by": holder,
            "privacy_mode": p.mode,
            "topology": "central" if files.central and not files.clients and not fedavg else fed.topology,
            "n_users": n_users,
            "holders": len(holders),
            "central_dp": fedavg,
            "local_epsilon": local_eps if fedavg else None,
            "central_epsilon": central["epsilon"] if fedavg and central else None,
        },
        "composition": {
            "current_run": current_run,
            "rounds": points[-1] if points else 0,
            "replayed_rounds": points,
            "n_runs": len(runs),
            "runs": runs,
        },
        "per_client": per_holder,
        "max_over_rounds": max_series,
        "distribution": (
            {"holders": len(finals), "min": finals[0], "median": statistics.median(finals), "max": finals[-1]}
            if finals
            else None
        ),
        "central": central,
        "mechanisms": _mechanisms(all_entries),
        "accountants": {
            "headline": f"PLD: dp_accounting.pld.PLDAccountant (pessimistic, value discretisation {PLD_DISCRETIZATION})",
            "cross_check": "RDP: dp_accounting.rdp.RdpAccountant (default orders)",
            "event": "SelfComposed(PoissonSampled(q, Gaussian(σ)), steps) per (σ, q), composed over all entries",
            "never": "GDP (it under-estimates ε at small sample rates)",
        },
        "versions": _versions(),
        "fingerprints": {
            "data": (files.manifest or {}).get("data_fingerprint"),
            "weights": (files.manifest or {}).get("weights_fingerprint"),
            "ledgers_sha256": files.ledger_hashes,
        },
        "refusals": _refusals(files.metrics),
        "limits": _limits(config, bool(files.central), bool(files.clients), fedavg=fedavg),
        "verification": None,
    }


def _headline(
    config: StrataConfig,
    eps: float | str,
    eps_rdp: float | str,
    delta: float,
    holder: str | None,
    tied: int,
    n_holders: int,
    rounds: int,
    n_runs: int,
    *,
    fedavg: bool = False,
) -> str:
    if config.privacy.mode == "off":
        return (
            "No differential-privacy guarantee: privacy.mode is 'off', so users' data was used without DP noise "
            "and no user holds any (ε, δ) guarantee (ε = ∞)."
        )
    if eps == INF:
        return (
            "No guarantee can be stated from this run directory (ε = ∞): clients trained under DP, but their "
            "ledgers are not in ledgers/. Copy the devices' ledgers there and re-run the report."
        )
    if not holder:
        return (
            f"Every user holds (ε = {_fmt_eps(eps)}, δ = {_fmt_delta(delta)}) user-level DP: the ledgers record no "
            "DP release of users' data."
        )
    if holder == "central" and fedavg:
        who = "the server's DP-FedAvg ledger (clients ran no local DP)"
    elif holder == "central":
        who = "the central trainer's ledger"
    elif fedavg:
        at = f"all {tied} tie" if tied == n_holders and tied > 1 else (f"{tied} clients tie" if tied > 1 else f"{holder}")
        who = (
            f"the largest over the ledgers of {_plural(n_holders, 'client')} ({at}), each composed with the "
            "server's DP-FedAvg ledger"
        )
    else:
        at = f"all {tied} tie" if tied == n_holders and tied > 1 else (f"{tied} clients tie" if tied > 1 else f"{holder}")
        who = f"the largest over the ledgers of {_plural(n_holders, 'client')} ({at})"
    return (
        f"Every user holds user-level (ε = {_fmt_eps(eps)}, δ = {_fmt_delta(delta)}) differential privacy: the privacy "
        f"unit is one user (all of their ratings); ε is {who}, computed with the PLD accountant over "
        f"{_plural(rounds, 'round')} and {_plural(n_runs, 'run')} (RDP cross-check: ε = {_fmt_eps(eps_rdp)})."
    )


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _runs(entries: list[LedgerEntry]) -> list[dict]:
    runs: dict[str, dict] = {}
    for e in entries:
        r = runs.setdefault(
            e.run_id, {"run_id": e.run_id, "entries": 0, "clients": set(), "first_round": e.round, "last_round": e.round}
        )
        r["entries"] += 1
        r["clients"].add(e.client)
        r["first_round"], r["last_round"] = min(r["first_round"], e.round), max(r["last_round"], e.round)
    return [{**r, "clients": len(r["clients"])} for r in runs.values()]


def _mechanisms(entries: list[LedgerEntry]) -> list[dict]:
    table: dict[tuple, dict] = {}
    for e in entries:
        key = (e.mechanism, e.noise_multiplier, e.sample_rate, e.steps, e.max_grad_norm)
        row = table.setdefault(key, {"entries": 0, "clients": set()})
        row["entries"] += 1
        row["clients"].add(e.client)
    return [
        {
            "mechanism": m,
            "noise_multiplier": s,
            "sample_rate": q,
            "steps_per_round": n,
            "max_grad_norm": c,
            "entries": row["entries"],
            "clients": len(row["clients"]),
        }
        for (m, s, q, n, c), row in sorted(table.items())
    ]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _refusals(metrics: list[dict]) -> list[dict]:
    rows = []
    for m in metrics:
        train = m.get("train") or {}
        rows.append(
            {
                "round": int(m["round"]),
                "clients": int(train.get("clients", 0) or 0),
                "refused": int(train.get("refused", 0) or 0),
                "failed": int(train.get("failed", 0) or 0),
                "skipped": bool(m.get("skipped", False)),
            }
        )
    return rows


def _limits(config: StrataConfig, has_central: bool, has_clients: bool, *, fedavg: bool = False) -> list[str]:
    p = config.privacy
    out = [
        "The guarantee is user-level: it bounds what anyone can learn about whether one user (all of their "
        "ratings together) took part. A single rating is covered by the same ε; a group of k users (a household "
        "sharing accounts) only by roughly k·ε.",
        "The public catalog (item ids, titles, categories, catalog features and any text embedding of them) is "
        "treated as public and has no guarantee.",
        "Only the DP-SGD releases recorded in the ledgers are covered. Federated-evaluation replies (sums of NDCG, "
        "recall, squared and absolute errors, counts of users and ratings), training-loss and user/example counts "
        "in training replies are released without noise and are not covered.",
        (
            "Central DP (DP-FedAvg) trusts the server: it sees every sampled client's sum of clipped updates before "
            "adding noise, so the central ε protects users against whoever sees the model, not against the server. "
            "Its Poisson sampling and noise come from OS-seeded generators. Amplification by the server's sampling is "
            "claimed only in the device topology (one user per client); in a hub the ledger records sample rate 1."
            if fedavg
            else "Central DP (server-side noise, DP-FedAvg) was not used in this run: the guarantee comes from each "
            "client's local DP-SGD alone; the server's client sampling is fixed-size and no amplification by it is "
            "claimed."
        ),
        "The sample rate q = 1/⌈n/batch-size⌉ in each ledger entry reveals roughly how many users a client holds; "
        "client sizes are not protected.",
        "DP noise and Poisson sampling come from torch Mersenne-Twister generators seeded from the operating "
        "system's secret randomness on every call (not from run.seed), so they cannot be regenerated from the run's "
        "files; this is not a cryptographically secure generator, and Opacus' secure_mode (the defence against "
        "floating-point attacks on the Gaussian sampler) is off.",
        "Side channels are not covered: timing, message sizes, which clients answered, refusals and failures.",
        "Tuning hyper-parameters on the same users (several runs, keeping the best) spends budget too; it is only "
        "counted when those runs share this run's ledger directory. Runs elsewhere on the same users add to ε.",
        "In the hub topology the hub itself sees its users' raw data; DP protects users against everyone who sees "
        "the hub's updates or the model, not against the hub.",
    ]
    if p.mode == "off":
        out.insert(0, "privacy.mode is 'off': the run has no differential-privacy guarantee at all (ε = ∞).")
    if has_central and not has_clients:
        out.insert(0, "This is a central reference run: one trainer saw every user's raw data; its DP-SGD ledger "
                   "bounds only what the released model reveals.")
    return out


# -------------------------------------------------------------------------- verifying


def _verify(
    run_dir: Path,
    files: _RunFiles,
    report: dict,
    delta: float,
    current_run: str | None,
    points: list[int],
    data_fp: str | None,
    data_error: str | None,
    tolerance: float,
) -> list[Check]:
    checks = [
        _check_ledger_structure(files, current_run),
        _check_accountants(report, files, delta, current_run, points, tolerance),
        *_check_metrics(files, report, delta, current_run, points, tolerance),
        _check_entry_counts(files, current_run),
        *_check_fingerprints(run_dir, files.manifest, data_fp, data_error),
    ]
    return checks


def _close(a: float, b: float, tolerance: float) -> bool:
    return abs(a - b) <= tolerance * max(abs(a), abs(b)) + 1e-9


def _check_ledger_structure(files: _RunFiles, current_run: str | None) -> Check:
    """Entries name their file's client, rounds never go back within a run, and the
    mechanism parameters are the configured ones and self-consistent."""
    config = files.config
    p = config.privacy
    problems: list[str] = []
    sigmas: dict[str, set[float]] = {}
    central_name = "server" if _is_fedavg(files) else "central"
    named = {**{f"client-{c}.jsonl": (c, e) for c, e in files.clients.items()}, "central.jsonl": (central_name, files.central)}
    for fname, (cid, entries) in named.items():
        last: dict[str, int] = {}
        for n, e in enumerate(entries, 1):
            where = f"ledgers/{fname}, entry {n}"
            if e.client != cid:
                problems.append(f"{where}: names client {e.client!r}")
            if e.round < last.get(e.run_id, e.round):
                problems.append(f"{where}: round {e.round} after round {last[e.run_id]} of run {e.run_id}")
            last[e.run_id] = e.round
            if e.mechanism == "dp-fedavg":
                problems += _fedavg_entry_problems(e, where, config, current_run)
                continue
            if e.mechanism == RELEASE:
                problems += _release_entry_problems(e, where, config, current_run)
                continue
            k = round(1 / e.sample_rate)
            epochs = 1 if cid == "central" else config.train.local_epochs
            # Earlier runs may have had other local epochs: only a whole number of epochs is required.
            steps_ok = e.steps == epochs * k if e.run_id == current_run else e.steps % k == 0
            if abs(1 / e.sample_rate - k) > 1e-6 * k or not steps_ok:
                problems.append(
                    f"{where}: q = {e.sample_rate:g} with {e.steps} steps is not a Poisson plan "
                    f"(q = 1/k with {epochs}·k steps per round)"
                )
            if e.run_id != current_run:
                continue
            sigmas.setdefault(fname, set()).add(e.noise_multiplier)
            if p.target_epsilon <= 0 and not math.isclose(e.noise_multiplier, p.noise_multiplier, rel_tol=1e-9):
                problems.append(f"{where}: σ = {e.noise_multiplier:g}, config privacy.noise-multiplier = {p.noise_multiplier:g}")
            if not math.isclose(e.max_grad_norm, p.max_grad_norm, rel_tol=1e-9):
                problems.append(f"{where}: C = {e.max_grad_norm:g}, config privacy.max-grad-norm = {p.max_grad_norm:g}")
    for fname, found in sigmas.items():
        if len(found) > 1:  # calibration fixes one σ per client and run
            problems.append(f"ledgers/{fname}: run {current_run} uses several σ ({', '.join(f'{x:g}' for x in sorted(found))})")
    n = sum(len(e) for _, e in named.values())
    ok_msg = f"{n} entries: clients match file names, rounds are in order, (σ, C) match the config, q and steps form Poisson plans"
    if p.target_epsilon > 0:
        ok_msg += " (σ calibrated to target-epsilon: one σ per client in this run, not compared with the config)"
    if not problems:
        return Check("ledger entries consistent", True, ok_msg + ".")
    more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
    return Check("ledger entries consistent", False, "; ".join(problems[:10]) + more)


def _fedavg_entry_problems(e: LedgerEntry, where: str, config: StrataConfig, current_run: str | None) -> list[str]:
    """A DP-FedAvg entry: one step per round; in this run (z, q, S) are the configured ones."""
    from .central_dp import accounted_sample_rate

    p = config.privacy
    out = []
    if e.steps != 1:
        out.append(f"{where}: a dp-fedavg round has {e.steps} steps, expected 1")
    if e.run_id != current_run:
        return out
    if p.central_target_epsilon <= 0 and not math.isclose(e.noise_multiplier, p.central_noise_multiplier, rel_tol=1e-9):
        out.append(f"{where}: z = {e.noise_multiplier:g}, config privacy.central-noise-multiplier = {p.central_noise_multiplier:g}")
    if not math.isclose(e.sample_rate, accounted_sample_rate(config), rel_tol=1e-9):
        out.append(f"{where}: q = {e.sample_rate:g}, the configured sampling allows q = {accounted_sample_rate(config):g}")
    if not math.isclose(e.max_grad_norm, p.update_clip, rel_tol=1e-9):
        out.append(f"{where}: S = {e.max_grad_norm:g}, config privacy.update-clip = {p.update_clip:g}")
    return out


def _release_entry_problems(e: LedgerEntry, where: str, config: StrataConfig, current_run: str | None) -> list[str]:
    """A one-shot release: in this run, z is the configured one and the bound is that of the
    release its round names (0: popularity prior, rounds + 1: census)."""
    if e.run_id != current_run:
        return []
    out = []
    z = config.privacy.release_noise_multiplier
    if not math.isclose(e.noise_multiplier, z, rel_tol=1e-9):
        out.append(f"{where}: release z = {e.noise_multiplier:g}, config privacy.release-noise-multiplier = {z:g}")
    kinds = {release_round(k, config): k for k in KINDS}
    if e.round not in kinds:
        out.append(f"{where}: a release in round {e.round}, expected round 0 (popularity) or {config.federation.rounds + 1} (census)")
    elif not math.isclose(e.max_grad_norm, release_bound(kinds[e.round]), rel_tol=1e-9):
        out.append(f"{where}: {kinds[e.round]} release bound {e.max_grad_norm:g}, expected {release_bound(kinds[e.round]):g}")
    return out


def _check_accountants(
    report: dict, files: _RunFiles, delta: float, current_run: str | None, points: list[int], tolerance: float
) -> Check:
    """PLD and RDP are both upper bounds, PLD the tighter: PLD ≤ RDP·(1+tol) + slack and
    RDP ≤ RDP_FACTOR·PLD + slack, at every replayed round of every holder."""
    worst, bad = 1.0, []
    for name, entries in _holders(files).items():
        pld_series = report["per_client"][name]["series"]
        rdp_series = _series(entries, points, current_run, delta, "rdp")
        for (r, pld), (_, rdp) in zip(pld_series, rdp_series, strict=True):
            if pld > ABS_SLACK:
                worst = max(worst, rdp / pld)
            if pld > rdp * (1 + tolerance) + ABS_SLACK:
                bad.append(f"{name} round {r}: PLD ε = {pld:.4f} exceeds RDP ε = {rdp:.4f} by more than {tolerance:.0%}")
            if rdp > RDP_FACTOR * pld + ABS_SLACK:
                bad.append(f"{name} round {r}: RDP ε = {rdp:.4f} is more than {RDP_FACTOR:g}× PLD ε = {pld:.4f}")
    msg = "; ".join(bad[:10]) if bad else (
        f"PLD ≤ RDP·(1+{tolerance:g}) and RDP ≤ {RDP_FACTOR:g}·PLD at every replayed round of every client "
        f"(largest RDP/PLD = {worst:.3f})."
    )
    return Check("PLD and RDP agree", not bad, msg)


def _check_metrics(
    files: _RunFiles, report: dict, delta: float, current_run: str | None, points: list[int], tolerance: float
) -> list[Check]:
    """metrics.jsonl's ε after round R (max over clients, by the run's accountant) equals the
    replay of every ledger up to R; summary.json's ε equals the last one."""
    accountant = files.config.privacy.accountant
    if _is_fedavg(files):
        return _check_fedavg_metrics(files, report, delta, current_run, points, tolerance)
    holders = {**_holders(files), **({"central": files.central} if files.central else {})}
    if accountant == "pld":
        replay = {r: e for r, e in report["max_over_rounds"]}
        if files.central:
            replay = {r: max(e, c) for (r, e), (_, c) in zip(report["max_over_rounds"], report["central"]["series"], strict=True)}
    else:
        series = [_series(entries, points, current_run, delta, accountant) for entries in holders.values()]
        replay = {r: max((s[i][1] for s in series), default=0.0) for i, r in enumerate(points)}
    if not files.metrics:
        return [Check("metrics ε = ledger replay", False, "metrics.jsonl is missing or empty: nothing to compare the ledgers with.")]
    bad, compared, prev = [], 0, 0.0
    for m in files.metrics:
        r, logged = int(m["round"]), float(m.get("epsilon", 0.0))
        if logged < prev - 1e-12:
            bad.append(f"round {r}: logged ε = {logged:.4f} decreased from {prev:.4f}")
        prev = logged
        if r not in replay:
            continue
        compared += 1
        if not _close(logged, replay[r], tolerance):
            bad.append(f"round {r}: metrics.jsonl ε = {logged:.4f}, ledger replay ({accountant}) ε = {replay[r]:.4f}")
    if files.config.privacy.mode == "off" and not bad:
        bad_note = " (privacy is off: a logged 0 means nothing was accounted, not ε = 0; the guarantee is ε = ∞)"
    else:
        bad_note = ""
    checks = [
        Check(
            "metrics ε = ledger replay",
            not bad,
            "; ".join(bad[:10]) if bad else (
                f"at {compared} round(s) the logged ε equals the {accountant.upper()} replay of the ledgers "
                f"within {tolerance:.0%}; logged ε never decreases{bad_note}."
            ),
        )
    ]
    if files.summary is not None and "epsilon" in files.summary and points:
        logged, final = float(files.summary["epsilon"]), replay[points[-1]]
        checks.append(
            Check(
                "summary ε = ledger replay",
                _close(logged, final, tolerance),
                f"summary.json ε = {logged:.4f}, ledger replay after round {points[-1]} ε = {final:.4f}.",
            )
        )
    return checks


def _check_fedavg_metrics(
    files: _RunFiles, report: dict, delta: float, current_run: str | None, points: list[int], tolerance: float
) -> list[Check]:
    """With the server's DP-FedAvg ledger: metrics' "epsilon" (the max over the clients' own
    ledgers) and "central_epsilon" (the server's ledger) each equal their replay after every
    round, and summary.json's figures equal the last ones."""
    accountant = files.config.privacy.accountant
    client_series = [_series(entries, points, current_run, delta, accountant) for entries in files.clients.values()]
    local = {r: max((s[i][1] for s in client_series), default=0.0) for i, r in enumerate(points)}
    central = dict(_series(files.central, points, current_run, delta, accountant))
    if not files.metrics:
        return [Check("metrics ε = ledger replay", False, "metrics.jsonl is missing or empty: nothing to compare the ledgers with.")]
    bad, compared = [], 0
    for key, replay in (("epsilon", local), ("central_epsilon", central)):
        prev = 0.0
        for m in files.metrics:
            r = int(m["round"])
            if key not in m:
                bad.append(f"round {r}: metrics.jsonl has no {key!r}")
                continue
            logged = float(m[key])
            if logged < prev - 1e-12:
                bad.append(f"round {r}: logged {key} = {logged:.4f} decreased from {prev:.4f}")
            prev = logged
            if r in replay:
                compared += 1
                if not _close(logged, replay[r], tolerance):
                    bad.append(f"round {r}: metrics.jsonl {key} = {logged:.4f}, ledger replay ({accountant}) = {replay[r]:.4f}")
    checks = [
        Check(
            "metrics ε = ledger replay",
            not bad,
            "; ".join(bad[:10]) if bad else (
                f"{compared} logged figures (local ε = max over the client ledgers, central ε = the server's DP-FedAvg "
                f"ledger) equal the {accountant.upper()} replay within {tolerance:.0%}; neither ever decreases."
            ),
        )
    ]
    if files.summary is not None and points:
        for key, replay in (("epsilon", local), ("central_epsilon", central)):
            if key in files.summary:
                logged, final = float(files.summary[key]), replay[points[-1]]
                checks.append(
                    Check(
                        f"summary {key} = ledger replay",
                        _close(logged, final, tolerance),
                        f"summary.json {key} = {logged:.4f}, ledger replay after round {points[-1]} = {final:.4f}.",
                    )
                )
    return checks


def _check_entry_counts(files: _RunFiles, current_run: str | None) -> Check:
    """Under DP, every client whose update was accepted in round R wrote an entry for R
    (a deleted entry shows up here even when it does not change the maximum ε)."""
    name = "a ledger entry for every DP training reply"
    if files.config.privacy.mode == "off":
        return Check(name, True, "privacy.mode is 'off': no entries are expected.")
    bad = []
    if _is_fedavg(files):
        rounds = [e.round for e in files.central if e.run_id == current_run]
        for m in files.metrics:
            if rounds.count(int(m["round"])) < 1:
                bad.append(f"round {int(m['round'])}: no dp-fedavg entry in ledgers/central.jsonl")
        if files.config.privacy.local_dp:
            bad += _client_entry_shortfalls(files, current_run)
    elif files.central or not files.clients and not any("clients" in (m.get("train") or {}) for m in files.metrics):
        rounds = [e.round for e in files.central if e.run_id == current_run]
        for m in files.metrics:
            r = int(m["round"])
            if rounds.count(r) < 1:
                bad.append(f"epoch {r}: no entry in ledgers/central.jsonl")
    else:
        bad += _client_entry_shortfalls(files, current_run)
    msg = "; ".join(bad[:10]) if bad else (
        f"every round of metrics.jsonl has at least as many ledger entries as DP training replies (run {current_run})."
    )
    return Check(name, not bad, msg)


def _client_entry_shortfalls(files: _RunFiles, current_run: str | None) -> list[str]:
    written: dict[int, int] = {}
    for entries in files.clients.values():
        for e in entries:
            if e.run_id == current_run:
                written[e.round] = written.get(e.round, 0) + 1
    bad = []
    for m in files.metrics:
        r, trained = int(m["round"]), int((m.get("train") or {}).get("clients", 0) or 0)
        if written.get(r, 0) < trained:
            bad.append(f"round {r}: {trained} client(s) trained but only {written.get(r, 0)} ledger entries")
    return bad


def _check_fingerprints(run_dir: Path, manifest: dict | None, data_fp: str | None, data_error: str | None) -> list[Check]:
    import torch

    if manifest is None:
        return [Check("model fingerprints", False, f"{run_dir / 'model' / 'manifest.json'} does not exist: the run has not finished.")]
    path = run_dir / "model" / "weights.pt"
    if not path.exists():
        weights_check = Check("weights fingerprint", False, f"{path} does not exist.")
    else:
        actual = weights_fingerprint(torch.load(path, weights_only=True))
        weights_check = Check(
            "weights fingerprint",
            actual == manifest.get("weights_fingerprint"),
            f"sha256 of {path} = {actual[:16]}…, manifest says {str(manifest.get('weights_fingerprint'))[:16]}…",
        )
    if data_fp is None:
        data_check = Check("data fingerprint", False, f"the data source could not be loaded to recompute it: {data_error}")
    else:
        data_check = Check(
            "data fingerprint",
            data_fp == manifest.get("data_fingerprint"),
            f"recomputed {data_fp[:16]}…, manifest says {str(manifest.get('data_fingerprint'))[:16]}…",
        )
    return [weights_check, data_check]


# ------------------------------------------------------------------------------- HTML

def _shown_clients(per: dict[str, dict], limit: int = 6) -> list[str]:
    """All clients when few; else the ones at the minimum, quartiles, median and maximum of ε."""
    names = sorted(per, key=lambda k: per[k]["epsilon"])
    picks = set(names) if len(names) <= limit else {names[round(f * (len(names) - 1))] for f in (0, 0.25, 0.5, 0.75, 1.0)}
    return [n for n in per if n in picks]  # in client order


def render_html(report: dict) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, no scripts)."""
    g, comp = report["guarantee"], report["composition"]
    ver = report.get("verification")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Privacy report — {_e(report['run_name'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Differential-privacy report — run “{_e(report['run_name'])}”</h1>",
        f"<p class='muted'>{_e(report['run_dir'])} · generated {_e(report['generated_at'])}</p>",
    ]
    if ver is None:
        status = "<span class='status na'>not verified</span> (run <code>strata privacy-report RUN --verify</code>)"
    elif ver["passed"]:
        status = f"<span class='status ok'>verified</span> all {len(ver['checks'])} checks passed (tolerance {ver['tolerance']:.0%})"
    else:
        failed = sum(not c["passed"] for c in ver["checks"])
        status = f"<span class='status fail'>VERIFICATION FAILED</span> {failed} of {len(ver['checks'])} checks failed — see below"
    if g["dp"]:
        big = f"ε = {_fmt_eps(g['epsilon'])}, δ = {_fmt_delta(g['delta'])} · unit: one user"
    else:
        big = "No guarantee: ε = ∞"
    failed_box = not g["dp"] or (ver is not None and not ver["passed"])
    parts += [
        f"<div class='guarantee{' none' if failed_box else ''}'>",
        "<h2 style='margin-top:0;border:0'>The guarantee every user holds</h2>",
        f"<p class='big'>{_e(big)}</p>",
        f"<p>{_e(report['headline'])}</p>",
        f"<p>Privacy unit: <b>{_e(g['unit'])}</b>. δ: {_e(g['delta_source'])}. "
        f"Privacy mode: <code>{_e(g['privacy_mode'])}</code>, topology: <code>{_e(g['topology'])}</code>"
        + (f", {g['n_users']} users" if g["n_users"] is not None else "")
        + f".</p><p>Verification: {status}</p></div>",
        "<h2 id='how-it-was-computed'>How it was computed</h2>",
        (
            "<p><b>privacy.mode was 'off'</b>: clients trained without clipping or noise, so no accountant applies "
            "and ε is infinite. When DP is on, Strata accounts as follows.</p>"
            if g["privacy_mode"] == "off"
            else ""
        ),
        "<p>Every client keeps an append-only privacy ledger: one entry per DP release, i.e. a round of local "
        "DP-SGD with noise multiplier σ, Poisson sample rate q, a number of steps and clipping norm C. Each entry is "
        "the composition of <i>steps</i> Poisson-subsampled Gaussian mechanisms. A client's ε is the composition of "
        "all entries in its ledger — over every round <i>and every run</i> that used the same ledger directory — "
        f"computed with the privacy-loss-distribution (PLD) accountant of Google's dp-accounting; RDP is computed "
        f"alongside as a conservative cross-check; GDP is never used. A user's data is only ever used by the client "
        f"that holds them, so every user's ε is bounded by that client's; the guarantee every user holds is the "
        f"largest over clients. Rounds in this run: {_e(comp['rounds'])}; runs composed in the ledgers: "
        f"{_e(comp['n_runs'])}.</p>"
        "<p>One-shot releases are ledger entries too (<code>gaussian-sum</code>, q = 1, one step): the item "
        "popularity that initialises the model (round 0) and the interest census (the round after the last). Each "
        "user contributes one vector of L2 norm at most C (popularity: their positives scaled to norm 1; census: "
        "their top-3 interests, norm √3) and the sum gets N(0, z²C²) per coordinate — added by each client over its "
        "own users under local DP, by the server under central DP — so it is the Gaussian mechanism with noise "
        "multiplier z, composed with everything else.</p>",
        "<h2 id='epsilon-per-client-over-rounds'>ε per client over rounds</h2>",
    ]
    per = report["per_client"]
    central_only = g["topology"] == "central"
    fedavg_only = bool(g.get("central_dp")) and set(per) <= {"central"}
    if g.get("central_dp"):
        parts.append(
            "<p>The server ran user-level <b>DP-FedAvg</b> (McMahan et al. 2018): each client clips every user's "
            "update to norm S and sends the sum; the server adds N(0, z²S²) per coordinate to the sum over the clients "
            "it sampled (each independently with probability q), divides by the public expected count q·N and records "
            "one <code>dp-fedavg</code> entry per round in <code>ledgers/central.jsonl</code>. "
            + (
                f"Local ε (max over the client ledgers) = {_e(_fmt_eps(g['local_epsilon']))}; central ε = "
                f"{_e(_fmt_eps(g['central_epsilon']))}; every user's guarantee composes both."
                if g.get("central_epsilon") is not None and not fedavg_only
                else f"Central ε = {_e(_fmt_eps(g['central_epsilon'] or 0.0))}."
            )
            + "</p>"
        )
    if fedavg_only:
        parts.append(
            "<p>No client ledgers: clients ran no local DP (privacy.mode = central). Every user holds the server's "
            "DP-FedAvg ε; see <i>Central ε over rounds</i> below.</p>"
        )
    elif central_only:
        parts.append(
            "<p>No client ledgers: this is a central run, in which one trainer holds every user. "
            "See <i>Central ε over rounds</i> below.</p>"
        )
    elif per and report["max_over_rounds"]:
        shown = _shown_clients(per)
        lines = [(name, [(r, e) for r, e in per[name]["series"]], False) for name in shown]
        lines.append((f"max over all {_plural(len(per), 'client')}", [(r, e) for r, e in report["max_over_rounds"]], True))
        parts.append(_line_chart(lines, x_label="round", y_label="ε (PLD)"))
        if len({tuple(e for _, e in per[n]["series"]) for n in per}) == 1 and len(per) > 1:
            parts.append(
                f"<p class='muted'>All {len(per)} clients have the same ε at every round: their lines lie under the maximum.</p>"
            )
        if len(per) > len(shown):
            parts.append(
                f"<p class='muted'>Showing {len(shown)} of {len(per)} clients (min, quartiles, max of final ε) "
                "and the maximum over all.</p>"
            )
        if len(comp["replayed_rounds"]) < comp["rounds"]:
            parts.append(f"<p class='muted'>Ledgers replayed at {len(comp['replayed_rounds'])} evenly spaced rounds.</p>")
    else:
        parts.append("<p>No ledger records a DP release: there is nothing to plot.</p>")
    parts.append("<h2 id='distribution-of-per-user-guarantees'>Distribution of per-user guarantees</h2>")
    dist = report["distribution"]
    if fedavg_only:
        parts.append(f"<p>Every user holds the server's DP-FedAvg ε = {_e(_fmt_eps(g['epsilon']))}.</p>")
    elif central_only:
        parts.append(f"<p>Every user holds the central ε = {_e(_fmt_eps(g['epsilon']))}.</p>")
    elif dist:
        parts.append(
            f"<p>Every user holds the ε of the client holding them (in the <code>device</code> topology one user per "
            f"client; in <code>hub</code>, all of a hub's users). Over {_plural(dist['holders'], 'client')}: min ε = "
            f"{dist['min']:.3f}, median ε = {dist['median']:.3f}, max ε = {dist['max']:.3f}.</p>"
        )
        parts.append(_histogram([h["epsilon"] for h in per.values()], x_label="final ε of the client (PLD)"))
    else:
        parts.append("<p>No client ledgers.</p>")
    parts.append("<h2 id='central-epsilon-over-rounds'>Central ε over rounds</h2>")
    central = report["central"]
    if central:
        parts.append(
            f"<p>Central ledger: {central['entries']} entries, ε = {central['epsilon']:.3f} "
            f"(RDP {central['epsilon_rdp']:.3f}).</p>"
        )
        series = [("central", [(r, e) for r, e in central["series"]], True)]
        parts.append(_line_chart(series, x_label="round / epoch", y_label="ε (PLD)"))
    else:
        parts.append("<p>Not used in this run: no central DP mechanism (no <code>ledgers/central.jsonl</code>).</p>")
    if ver is not None:
        parts.append("<h2 id='verification'>Verification</h2>")
        parts.append(
            f"<p>Every ε recomputed from the ledgers. Tolerance {ver['tolerance']:.0%} relative; PLD ≤ RDP·(1+tolerance) "
            f"and RDP ≤ {ver['rdp_factor']:g}·PLD (both are upper bounds, PLD the tighter).</p>"
        )
        rows = [(c["name"], "pass" if c["passed"] else "FAIL", c["message"]) for c in ver["checks"]]
        parts.append(_table(["check", "result", "detail"], rows))
    parts.append("<h2 id='empirical-audit'>Empirical audit</h2>")
    audit = report.get("audit")
    if audit:
        parts.append(f"<p>{_e(audit.get('verdict', ''))}</p>")
        parts.append(_table(["field", "value"], [[k, v] for k, v in audit.items() if k != "verdict"]))
    else:
        parts.append(
            "<p>No canary audit was run for this run (<code>strata audit</code> trains its own run with canaries "
            "and bounds ε from below).</p>"
        )
    parts.append("<h2 id='mechanisms'>Mechanisms</h2>")
    if report["mechanisms"]:
        parts.append(
            _table(
                ["mechanism", "σ (noise multiplier)", "q (sample rate)", "steps / round", "C (clip norm)", "entries", "clients"],
                [
                    (m["mechanism"], f"{m['noise_multiplier']:.4g}", f"{m['sample_rate']:.4g}", m["steps_per_round"],
                     f"{m['max_grad_norm']:g}", m["entries"], m["clients"])
                    for m in report["mechanisms"]
                ],
                numeric=(1, 2, 3, 4, 5, 6),
            )
        )
    else:
        parts.append("<p>None recorded.</p>")
    parts.append("<h2 id='runs-in-the-ledgers'>Runs in the ledgers</h2>")
    if comp["runs"]:
        parts.append(
            _table(
                ["run id", "entries", "clients", "rounds", "this run"],
                [
                    (r["run_id"], r["entries"], r["clients"], f"{r['first_round']}–{r['last_round']}",
                     "yes" if r["run_id"] == comp["current_run"] else "")
                    for r in comp["runs"]
                ],
                numeric=(1, 2),
            )
        )
        if comp["n_runs"] > 1:
            parts.append("<p>ε composes over all these runs: they used the same users' data.</p>")
    else:
        parts.append("<p>None.</p>")
    parts.append("<h2 id='refusals-and-failures'>Refusals and failures</h2>")
    rows = [r for r in report["refusals"] if r["refused"] or r["failed"] or r["skipped"]]
    total = sum(r["refused"] for r in report["refusals"])
    if rows:
        parts.append(f"<p>{total} refusal(s) in total (a client refuses a round that would exceed privacy.max-epsilon).</p>")
        table = [(r["round"], r["clients"], r["refused"], r["failed"], "yes" if r["skipped"] else "") for r in rows]
        parts.append(_table(["round", "clients trained", "refused", "failed", "skipped"], table, numeric=(0, 1, 2, 3)))
    else:
        parts.append(f"<p>No client refused or failed in any of the {len(report['refusals'])} logged round(s).</p>")
    acc = report["accountants"]
    parts.append("<h2 id='accountants-and-versions'>Accountants and versions</h2>")
    roles = [("headline", acc["headline"]), ("cross-check", acc["cross_check"]),
             ("event per ledger entry", acc["event"]), ("never used", acc["never"])]
    parts.append(_table(["role", "accountant"], roles))
    parts.append(_table(["package", "version"], list(report["versions"].items())))
    fp = report["fingerprints"]
    parts.append("<h2 id='fingerprints'>Fingerprints</h2>")
    parts.append(
        _table(
            ["what", "sha256"],
            [("data (ratings and item index)", fp["data"] or "absent"), ("model weights", fp["weights"] or "absent")]
            + [(f"ledgers/{k}", v) for k, v in fp["ledgers_sha256"].items()],
            mono=(1,),
        )
    )
    parts.append("<h2 id='what-this-does-not-cover'>What this does not cover</h2><ul>")
    parts += [f"<li>{_e(item)}</li>" for item in report["limits"]]
    parts.append("</ul></body></html>")
    return "\n".join(parts)
