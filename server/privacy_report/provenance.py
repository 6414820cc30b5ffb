"""Provenance checks of a run's privacy evidence: the ledgers are there, every entry is signed by its
holder's pinned key and chained, and the server's signed instruction log matches the ledgers both ways.

A failure of any of them leaves no guarantee to state (`FAIL_CLOSED`: the report's ε becomes ∞).
"""

from __future__ import annotations

from collections.abc import Mapping

from server.instruction_log import SPENT
from shared.config import StrataConfig
from shared.privacy.ledger import SERVER, LedgerEntry
from shared.privacy.signing import chain_problems
from shared.privacy.release import EVALUATION, evaluation_rounds, noise_holder, release_kind
from shared.run_dir import client_key_name

from .checks import Check, failed
from .read import LAYOUT, RunFiles

SIGNATURES = "ledgers signed and chained"
PRESENT = "ledgers present"
INSTRUCTIONS = "instruction log matched"
FAIL_CLOSED = (PRESENT, SIGNATURES, INSTRUCTIONS)
"""Checks whose failure leaves no guarantee to state: the report's ε becomes ∞."""


def check_ledgers_present(files: RunFiles) -> Check:
    """Under DP, a run that trained has its ledgers: without them nothing can be claimed (ε = ∞)."""
    if files.config.privacy.mode == "off":
        return Check(PRESENT, True, "privacy.mode is 'off': no ledgers are expected.")
    missing = []
    central_reference = bool(files.central) and holder_of_central(files) == "central"
    if files.config.privacy.local_dp and not files.clients and not central_reference:
        missing.append(f"no client ledger in {LAYOUT.ledger_dir}/ (privacy.mode = {files.config.privacy.mode!r})")
    if files.config.privacy.central_dp and not files.central:
        missing.append(f"no server ledger {LAYOUT.central_ledger_path}")
    if not files.metrics:
        missing.append(f"{LAYOUT.metrics_path} is missing or empty")
    if missing:
        return Check(PRESENT, False, "; ".join(missing) + ": ε = ∞.")
    server = "present" if files.central else "not used"
    return Check(PRESENT, True, f"{len(files.clients)} client ledger(s), server ledger {server}.")


def holder_of_central(files: RunFiles) -> str:
    """Return the key holder of `ledgers/central.jsonl`: the server under DP-FedAvg, else the central trainer."""
    return SERVER if any(e.client == SERVER for e in files.central) else "central"


def check_signatures(files: RunFiles, pinned: Mapping[str, str]) -> Check:
    """Every entry is signed by its holder's pinned key and chained to the one before it."""
    problems: list[str] = []
    for cid, entries in files.clients.items():
        holder = client_key_name(cid)
        problems += chain_problems(entries, str(LAYOUT.client_ledger_path(cid)), pinned.get(holder))
    if files.central:
        problems += chain_problems(files.central, str(LAYOUT.central_ledger_path), pinned.get(holder_of_central(files)))
    n = sum(len(e) for e in files.clients.values()) + len(files.central)
    if problems:
        return failed(SIGNATURES, problems)
    return Check(SIGNATURES, True, f"{n} entries, each signed by its holder's pinned key, chained to the one before.")


def entry_kind(e: LedgerEntry, config: StrataConfig) -> str:
    """Return the instruction kind an entry answers: train for DP-SGD, else the release its round names."""
    if e.mechanism == "dp-sgd":
        return "train"
    kind = release_kind(e.round, config)
    return {EVALUATION: "evaluate"}.get(kind or "", kind or "unplanned")


def check_instructions(files: RunFiles, pinned: Mapping[str, str], current_run: str | None) -> Check:
    """Check that the server's signed instruction log and the devices' ledgers match both ways and that it
    holds every configured instruction: each accepted (or rejected) instruction has its entry in the ledger of the
    key the reply named, each entry of this run has its instruction."""
    config = files.config
    p, fed = config.privacy, config.federation
    if p.mode == "off":
        return Check(INSTRUCTIONS, True, "privacy.mode is 'off': no entries to match.")
    if not files.clients and files.central and holder_of_central(files) == "central":
        return Check(INSTRUCTIONS, True, "a central reference run: one trainer, no instructions to match.")
    if files.instructions is None:
        return Check(INSTRUCTIONS, False, f"no instruction log {LAYOUT.instruction_log_path}: ε = ∞.")
    where = str(LAYOUT.instruction_log_path)
    records = files.instructions
    problems = chain_problems(records, where, pinned.get(SERVER), noun="record", holder="the server")
    mine = [(n, r) for n, r in enumerate(records, 1) if r.run_id == current_run]
    local_noise = noise_holder(p.mode) == "client"
    by_key: dict[str, tuple[str, set[tuple[str, int]]]] = {}
    for cid, entries in files.clients.items():
        for e in entries:
            if e.run_id == current_run:
                _, found = by_key.setdefault(e.key, (cid, set()))
                found.add((entry_kind(e, config), e.round))
    logged = {(r.device, r.kind, r.round) for _, r in mine if r.outcome in SPENT}
    for n, r in mine:
        if r.outcome not in SPENT or (r.kind != "train" and not local_noise) or (r.kind == "train" and not p.local_dp):
            continue
        cid, found = by_key.get(r.device, ("?", set()))
        if (r.kind, r.round) not in found:
            out = f"{where}, record {n}: node {r.node} ({r.outcome} {r.kind}, round {r.round}, key {r.device[:12]}…)"
            problems.append(f"{out} has no entry in {'a ledger' if cid == '?' else f'client-{cid}.jsonl'}")
    trains_logged = not p.central_dp
    for cid, entries in files.clients.items():
        for k, e in enumerate(entries, 1):
            kind = entry_kind(e, config)
            if e.run_id != current_run or (kind == "train" and not trains_logged):
                continue
            if (e.key, kind, e.round) not in logged:
                problems.append(
                    f"{LAYOUT.client_ledger_path(cid)}, entry {k}: {kind} round {e.round} has no instruction in {where}"
                )
    rounds_run = sorted({int(m["round"]) for m in files.metrics})
    wanted = [("train", r) for r in rounds_run if trains_logged]
    wanted += [("evaluate", r) for r in evaluation_rounds(config) if r in rounds_run]
    if config.model.popularity_prior:
        wanted.append(("popularity", 0))
    if fed.census and files.summary is not None:
        wanted.append(("census", fed.rounds + 1))
    have = {(r.kind, r.round) for _, r in mine}
    problems += [f"{where}: no {kind} instruction for round {rnd}" for kind, rnd in wanted if (kind, rnd) not in have]
    problems += _server_entry_shortfalls(files, current_run, rounds_run)
    if problems:
        return failed(INSTRUCTIONS, problems)
    return Check(
        INSTRUCTIONS,
        True,
        f"{len(mine)} instructions of run {current_run}, each with its entry; every entry with its instruction; "
        f"every configured instruction present ({len(wanted)}).",
    )


def _server_entry_shortfalls(files: RunFiles, current_run: str | None, rounds_run: list[int]) -> list[str]:
    """Name every release the server must have recorded in its own ledger and did not: a dp-fedavg entry
    per round under central DP, and each configured release it noised (popularity, evaluation, census)."""
    config = files.config
    p, fed = config.privacy, config.federation
    found = {
        ("dp-fedavg" if e.mechanism == "dp-fedavg" else entry_kind(e, config), e.round)
        for e in files.central
        if e.run_id == current_run and e.client == SERVER
    }
    wanted = [("dp-fedavg", r) for r in rounds_run] if p.central_dp else []
    if noise_holder(p.mode) == "server":
        wanted += [("evaluate", r) for r in evaluation_rounds(config) if r in rounds_run]
        if config.model.popularity_prior:
            wanted.append(("popularity", 0))
        if fed.census and files.summary is not None:
            wanted.append(("census", fed.rounds + 1))
    path = LAYOUT.central_ledger_path
    return [f"{path}: no {kind} entry for round {rnd}" for kind, rnd in wanted if (kind, rnd) not in found]
