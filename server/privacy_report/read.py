"""Reading a run for its privacy report: config, ledgers, metrics, manifest, summary, data facts.

Every path comes from `shared.run_dir.RunDir`; `LAYOUT` is the same layout relative to the
run directory, for the names the report prints.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from shared.config import StrataConfig
from shared.data.source import catalog_fingerprint, load_catalog
from shared.privacy.ledger import LedgerEntry, LedgerError, read_entries
from server.instruction_log import Instruction, read_instructions
from shared.run_dir import JsonDict, RunDir

LAYOUT = RunDir(Path())
"""The run directory's layout relative to it: `LAYOUT.central_ledger_path` prints as the ledger's name in the run."""
MAX_REPLAY_POINTS = 40
"""At most this many rounds are replayed per client (evenly spaced, the last always)."""
AUDIT_KEYS = (
    "status", "m", "canary_kind", "r", "guesses_per_side", "correct", "epsilon_lower_bound", "power_ceiling",
    "confidence", "delta", "reported_epsilon", "passed", "planted_noise_divisor", "verdict",
)
"""The fields of a canary audit's result the report shows."""


@dataclass(frozen=True)
class RunFiles:
    """What the report reads from a run directory.

    `ledger_hashes` maps each ledger file's name to its SHA-256; `unreadable` holds why a
    ledger did not parse (only when read leniently), out of `ledger_files` files.
    """

    run: RunDir
    config: StrataConfig
    clients: dict[str, list[LedgerEntry]]
    central: list[LedgerEntry]
    ledger_hashes: dict[str, str]
    ledger_files: int
    unreadable: tuple[str, ...]
    metrics: list[JsonDict]
    manifest: JsonDict | None
    summary: JsonDict | None
    instructions: list[Instruction] | None = None
    """The server's instruction log (None: there is none)."""


@dataclass(frozen=True)
class DataFacts:
    """The run's public catalog: its fingerprint, or why it could not be loaded (no count of users:
    N is the configured public population)."""

    catalog_fingerprint: str | None
    error: str | None


@dataclass(frozen=True)
class Replay:
    """How the ledgers are replayed: δ (and where it comes from), the current run, the rounds to replay."""

    delta: float
    delta_source: str
    current_run: str | None
    points: list[int]


def read_run(run: RunDir, *, strict: bool) -> RunFiles:
    """Read the run's config, ledgers, metrics, manifest and summary.

    With `strict` a ledger that does not parse is an error; without, it is left out and named
    in `unreadable`.
    """
    config = run.read_config()
    clients: dict[str, list[LedgerEntry]] = {}
    central: list[LedgerEntry] = []
    hashes: dict[str, str] = {}
    paths = run.client_ledger_paths()
    if run.central_ledger_path.exists():
        paths.append(run.central_ledger_path)
    unreadable: list[str] = []
    for path in paths:
        hashes[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            entries = read_entries(path)
        except LedgerError as exc:
            if strict:
                raise
            unreadable.append(str(exc))
            continue
        if path == run.central_ledger_path:
            central = entries
        else:
            clients[RunDir.client_id_of(path)] = entries
    instructions = None
    if run.instruction_log_path.exists():
        hashes[run.instruction_log_path.name] = hashlib.sha256(run.instruction_log_path.read_bytes()).hexdigest()
        try:
            instructions = read_instructions(run.instruction_log_path)
        except ValueError as exc:
            if strict:
                raise
            unreadable.append(str(exc))
    return RunFiles(
        run=run,
        config=config,
        clients=clients,
        central=central,
        ledger_hashes=hashes,
        ledger_files=len(paths),
        unreadable=tuple(unreadable),
        metrics=run.read_metrics(),
        manifest=run.read_manifest(),
        summary=run.read_summary(),
        instructions=instructions,
    )


def data_facts(config: StrataConfig) -> DataFacts:
    """Return the fingerprint of the run's public catalog, or why it could not be loaded."""
    try:
        catalog = load_catalog(config.data, config.run.seed)
    except (OSError, ValueError, RuntimeError) as exc:
        return DataFacts(None, str(exc))
    return DataFacts(catalog_fingerprint(catalog), None)


def current_run(files: RunFiles) -> str | None:
    """Name the run whose rounds the metrics log: the summary's run id, else the newest entry's."""
    if files.summary and files.summary.get("run_id"):
        return str(files.summary["run_id"])
    for entries in [*files.clients.values(), files.central]:
        if entries:
            return entries[-1].run_id
    return None


def rounds(files: RunFiles, current: str | None) -> list[int]:
    """Every round the metrics log or the current run's ledger entries name, in order."""
    found = {int(m["round"]) for m in files.metrics}
    for entries in [*files.clients.values(), files.central]:
        found |= {e.round for e in entries if e.run_id == current}
    return sorted(found)


def replay_points(all_rounds: list[int], logged: set[int] | None = None) -> list[int]:
    """Return the rounds to replay: where the metrics log a central ε (`logged`, so each logged
    figure is compared) plus the first and last; without such rounds at most `MAX_REPLAY_POINTS` of them,
    evenly spaced, the first and last always."""
    if logged and all_rounds:
        return sorted({all_rounds[0], all_rounds[-1], *(r for r in all_rounds if r in logged)})
    if len(all_rounds) <= MAX_REPLAY_POINTS:
        return all_rounds
    idx = {round(i * (len(all_rounds) - 1) / (MAX_REPLAY_POINTS - 1)) for i in range(MAX_REPLAY_POINTS)}
    return [all_rounds[i] for i in sorted(idx)]


def replay_plan(files: RunFiles, data: DataFacts) -> Replay:
    """δ (the config's, else 1/(100·N) for the public population N), the current run and the rounds to replay."""
    p = files.config.privacy
    if p.population <= 0:
        raise ValueError(
            f"cannot determine δ for {files.run}: its config has no privacy.population (the public number of users N "
            "that δ and the DP plan are defined by); the run was written by an older Strata: re-run it."
        )
    if p.delta:
        delta = p.delta
        delta_source = f"privacy.delta in the run's config (N = {p.population}: N·δ = {p.delta * p.population:.3g})"
    else:
        delta = p.resolved_delta
        delta_source = f"1 / (100 · N) with the public population N = {p.population} (privacy.population)"
    current = current_run(files)
    logged = {int(m["round"]) for m in files.metrics if "central_epsilon" in m}
    return Replay(delta, delta_source, current, replay_points(rounds(files, current), logged))


def audit_result(run: RunDir | Path) -> JsonDict | None:
    """Return the `strata audit` result for this run (its shown fields), if an audit trained the run."""
    audit = (run if isinstance(run, RunDir) else RunDir(Path(run))).read_audit()
    if audit is None:
        return None
    return {k: audit[k] for k in AUDIT_KEYS if k in audit}
