"""Verification of a privacy report: every ε recomputed from the ledgers, each check in a sentence.

The checks: the ledgers parse; their entries are consistent (client names, round order, the
configured mechanism parameters, Poisson plans); PLD and RDP agree; the ε the run logged
(metrics and summary) equals the replay of the ledgers; every DP training reply has a ledger
entry; the model's and the catalog's fingerprints match the manifest (no artefact holds a hash
of the ratings).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from server.central_dp import accounted_sample_rate
from shared.privacy.accounting import PRV_EPS_ERROR, calibrate_noise_multiplier, prv_epsilon
from shared.privacy.plan import central_plan, device_plan
from shared.config import StrataConfig
from shared.privacy.guarantee import HolderEpsilon, epsilon_series, holders, is_central_dp, max_series
from shared.privacy.ledger import SERVER, LedgerEntry
from shared.privacy.release import (
    EVALUATION,
    RELEASE,
    planned_releases,
    evaluation_rounds,
    release_bound,
    release_kind,
    release_noise_multiplier,
)
from shared.run_dir import weights_fingerprint

from .checks import Check, failed, joined as _joined
from .provenance import check_instructions, check_ledgers_present, check_signatures
from .read import LAYOUT, DataFacts, Replay, RunFiles

RDP_FACTOR = 2.0
"""RDP may exceed PLD by at most this factor (plus `ABS_SLACK`) before verify calls it a
disagreement. Both are upper bounds on the true ε and PLD is the tighter one; across the
regimes Strata runs (q from 0.001 to 1, σ from 0.3 to 50, δ from 1e-6 to 0.01) RDP/PLD
measured 1.07 to 1.39. A larger gap means one accountant is broken."""
ABS_SLACK = 0.01
"""Absolute slack of the ε comparisons, for ε near 0 where ratios mean little."""
@dataclass(frozen=True)
class _Figure:
    """A figure the run logged per round (a metrics key, also in the summary) and its ledger replay.

    `label` names it in messages; `replay_label` follows "ledger replay (accountant)"; a
    `required` figure is logged on a sample of rounds (server/federation.py) and must be on the
    last line; a figure that is not required reads as 0 where it is missing.
    """

    key: str
    label: str
    replay_label: str
    replay: dict[int, float]
    required: bool


def verify(
    files: RunFiles,
    replay: Replay,
    data: DataFacts,
    tolerance: float,
    *,
    per_client: Mapping[str, HolderEpsilon],
    max_over_rounds: list[tuple[int, float]],
    central: HolderEpsilon | None,
    pinned: Mapping[str, str],
) -> list[Check]:
    """Every check, in order; `per_client`, `max_over_rounds` and `central` are the report's PLD figures,
    `pinned` the holders' public keys the auditor trusts (holder name → hex)."""
    return [
        _check_parse(files),
        check_ledgers_present(files),
        check_signatures(files, pinned),
        check_instructions(files, pinned, replay.current_run),
        _check_ledger_structure(files, replay.current_run),
        _check_accountants(files, replay, per_client, tolerance),
        _check_prv(files, replay, per_client),
        *_check_metrics(files, replay, tolerance, *_figures(files, replay, tolerance, max_over_rounds, central)),
        _check_entry_counts(files, replay.current_run),
        *_check_fingerprints(files, data),
    ]


def _close(a: float, b: float, tolerance: float) -> bool:
    return abs(a - b) <= tolerance * max(abs(a), abs(b)) + 1e-9


def _check_parse(files: RunFiles) -> Check:
    """Every ledger file parses."""
    bad = files.unreadable
    ok = f"{files.ledger_files} ledger file(s) in {files.run.ledger_dir} parse."
    return Check("ledgers parse", not bad, "; ".join(bad) if bad else ok)




def _check_ledger_structure(files: RunFiles, current_run: str | None) -> Check:
    """Entries name their file's client, rounds never go back within a run, and the
    mechanism parameters are the configured ones and self-consistent."""
    config = files.config
    p = config.privacy
    problems: list[str] = []
    sigmas: dict[str, set[float]] = {}
    central_name = "server" if is_central_dp(files.central) else "central"
    named = {
        **{str(LAYOUT.client_ledger_path(c)): (c, e) for c, e in files.clients.items()},
        str(LAYOUT.central_ledger_path): (central_name, files.central),
    }
    for fname, (cid, entries) in named.items():
        last: dict[str, int] = {}
        sigma = expected_noise_multiplier(config, cid, entries, current_run)
        for n, e in enumerate(entries, 1):
            where = f"{fname}, entry {n}"
            if e.client != cid:
                problems.append(f"{where}: names client {e.client!r}")
            if e.round < last.get(e.run_id, e.round):
                problems.append(f"{where}: round {e.round} after round {last[e.run_id]} of run {e.run_id}")
            last[e.run_id] = e.round
            if e.mechanism == "dp-fedavg":
                problems += _fedavg_entry_problems(e, where, config, current_run, sigma)
                continue
            if e.mechanism == RELEASE:
                problems += _release_entry_problems(e, where, config, current_run)
                continue
            if e.run_id != current_run:
                # An earlier run's config is not at hand: its steps must still be whole epochs of ⌊1/q⌋.
                if e.steps % max(1, int(1.0 / e.sample_rate)) != 0:
                    problems.append(f"{where}: {e.steps} steps are not whole epochs of ⌊1/q⌋ at q = {e.sample_rate:g}")
                continue
            # Recomputed from the public plan (config and public population), not trusted from the entry.
            q, steps = central_plan(config) if cid == "central" else device_plan(config)
            if not math.isclose(e.sample_rate, q, rel_tol=1e-9) or e.steps != steps:
                problems.append(
                    f"{where}: (q, steps) = ({e.sample_rate:g}, {e.steps}) but the public plan gives ({q:g}, {steps})"
                )
            sigmas.setdefault(fname, set()).add(e.noise_multiplier)
            if not math.isclose(e.noise_multiplier, sigma, rel_tol=1e-9):
                source = "calibrated from the public plan" if p.target_epsilon > 0 else "privacy.noise-multiplier"
                problems.append(f"{where}: σ = {e.noise_multiplier:.6g}, {source} gives {sigma:.6g}")
            if not math.isclose(e.max_grad_norm, p.max_grad_norm, rel_tol=1e-9):
                problems.append(f"{where}: C = {e.max_grad_norm:g}, config privacy.max-grad-norm = {p.max_grad_norm:g}")
    for fname, found in sigmas.items():
        if len(found) > 1:  # calibration fixes one σ per client and run
            problems.append(f"{fname}: run {current_run} uses several σ ({', '.join(f'{x:g}' for x in sorted(found))})")
    n = sum(len(e) for _, e in named.values())
    ok_msg = (
        f"{n} entries: clients match file names, rounds are in order, C matches the config, (q, steps) and σ "
        "are recomputed from the public plan"
    )
    if p.target_epsilon > 0 or p.central_target_epsilon > 0:
        ok_msg += " (σ by the same calibration to the target ε, earlier runs and planned releases included)"
    if not problems:
        return Check("ledger entries consistent", True, ok_msg + ".")
    return failed("ledger entries consistent", problems)


def expected_noise_multiplier(
    config: StrataConfig, holder: str, entries: list[LedgerEntry], current_run: str | None
) -> float:
    """Return the σ (z for the server) the holder must use in the current run: the configured one, or the
    calibration it runs to the target ε — recomputed here from the public plan, the entries of earlier runs
    before this run's first entry, and this run's planned releases."""
    p, fed = config.privacy, config.federation
    server = holder == SERVER
    target = p.central_target_epsilon if server else p.target_epsilon
    if target <= 0:
        return p.central_noise_multiplier if server else p.noise_multiplier
    first = next((k for k, e in enumerate(entries) if e.run_id == current_run), len(entries))
    earlier = [e for e in entries[:first] if e.run_id != current_run]
    run_id = current_run or ""
    if server:
        rate, steps = accounted_sample_rate(config), fed.rounds
        planned = planned_releases(config, run_id=run_id, holder=SERVER, server=True)
    elif holder == "central":
        rate, per_epoch = central_plan(config)
        steps, planned = per_epoch * config.train.epochs, []
        # The central trainer calibrates after its popularity release: every entry before its first step counts.
        start = next((k for k, e in enumerate(entries) if e.run_id == current_run and e.mechanism == "dp-sgd"), 0)
        earlier = list(entries[:start])
    else:
        rate, per_round = device_plan(config)
        steps = per_round * fed.rounds
        planned = planned_releases(config, run_id=run_id, holder=holder, server=False)
    try:
        return calibrate_noise_multiplier(
            target_epsilon=target, delta=p.resolved_delta, population=p.population, sample_rate=rate, steps=steps,
            accountant=p.accountant, prior=[*earlier, *planned],
        )
    except ValueError:
        return math.nan  # no σ fits: every entry of this run is then a mismatch


def _fedavg_entry_problems(
    e: LedgerEntry, where: str, config: StrataConfig, current_run: str | None, z: float
) -> list[str]:
    """Check a DP-FedAvg entry: one step per round; in this run (q, S) are the configured ones and z the
    configured or recomputed one."""
    p = config.privacy
    out = []
    if e.steps != 1:
        out.append(f"{where}: a dp-fedavg round has {e.steps} steps, expected 1")
    if e.run_id != current_run:
        return out
    if not math.isclose(e.noise_multiplier, z, rel_tol=1e-9):
        source = "calibrated from the public plan" if p.central_target_epsilon > 0 else "central-noise-multiplier"
        out.append(f"{where}: z = {e.noise_multiplier:.6g}, {source} gives {z:.6g}")
    allowed = accounted_sample_rate(config)
    if not math.isclose(e.sample_rate, allowed, rel_tol=1e-9):
        out.append(f"{where}: q = {e.sample_rate:g}, the configured sampling allows q = {allowed:g}")
    if not math.isclose(e.max_grad_norm, p.update_clip, rel_tol=1e-9):
        out.append(f"{where}: S = {e.max_grad_norm:g}, config privacy.update-clip = {p.update_clip:g}")
    return out


def _release_entry_problems(e: LedgerEntry, where: str, config: StrataConfig, current_run: str | None) -> list[str]:
    """Check a DP release: in this run, its round names a configured release (0: popularity prior,
    an evaluation round, rounds + 1: census), and its z and bound are that release's."""
    if e.run_id != current_run:
        return []
    kind = release_kind(e.round, config)
    if kind is None:
        census = config.federation.rounds + 1
        planned = ", ".join(map(str, evaluation_rounds(config))) or "none"
        return [f"{where}: a release in round {e.round}, expected 0 (popularity), {planned} (evaluation) or {census}"]
    out = []
    z = release_noise_multiplier(kind, config.privacy)
    if not math.isclose(e.noise_multiplier, z, rel_tol=1e-9):
        key = "eval-noise-multiplier" if kind == EVALUATION else "release-noise-multiplier"
        out.append(f"{where}: {kind} release z = {e.noise_multiplier:g}, config privacy.{key} = {z:g}")
    if not math.isclose(e.max_grad_norm, bound := release_bound(kind), rel_tol=1e-9):
        out.append(f"{where}: {kind} release bound {e.max_grad_norm:g}, expected {bound:g}")
    return out


def _check_accountants(
    files: RunFiles, replay: Replay, per_client: Mapping[str, HolderEpsilon], tolerance: float
) -> Check:
    """PLD and RDP are both upper bounds, PLD the tighter: PLD ≤ RDP·(1+tol) + slack and
    RDP ≤ RDP_FACTOR·PLD + slack, at every replayed round of every holder."""
    worst, bad = 1.0, []
    for name, entries in holders(files.clients, files.central).items():
        pld_series = per_client[name].series
        rdp_series = epsilon_series(entries, replay.points, replay.current_run, replay.delta, "rdp")
        for (r, pld), (_, rdp) in zip(pld_series, rdp_series, strict=True):
            if pld > ABS_SLACK:
                worst = max(worst, rdp / pld)
            if pld > rdp * (1 + tolerance) + ABS_SLACK:
                bad.append(
                    f"{name} round {r}: PLD ε = {pld:.4f} exceeds RDP ε = {rdp:.4f} by more than {tolerance:.0%}"
                )
            if rdp > RDP_FACTOR * pld + ABS_SLACK:
                bad.append(f"{name} round {r}: RDP ε = {rdp:.4f} is more than {RDP_FACTOR:g}× PLD ε = {pld:.4f}")
    msg = _joined(bad) if bad else (
        f"PLD ≤ RDP·(1+{tolerance:g}) and RDP ≤ {RDP_FACTOR:g}·PLD at every replayed round of every client "
        f"(largest RDP/PLD = {worst:.3f})."
    )
    return Check("PLD and RDP agree", not bad, msg)


def _check_prv(files: RunFiles, replay: Replay, per_client: Mapping[str, HolderEpsilon]) -> Check:
    """Check each holder's final ε by a second method, PRV (Gopi et al. 2021): within PRV's stated error
    bound of the PLD figure (twice it, for the PLD discretisation on the other side)."""
    name = "PLD and PRV agree"
    allowed = 2 * PRV_EPS_ERROR + ABS_SLACK
    bad, worst = [], 0.0
    for holder, entries in holders(files.clients, files.central).items():
        pld = per_client[holder].epsilon
        prv = prv_epsilon(entries, replay.delta)
        worst = max(worst, abs(prv - pld))
        if abs(prv - pld) > allowed:
            bad.append(f"{holder}: PRV ε = {prv:.4f}, PLD ε = {pld:.4f} (|Δ| > {allowed:g})")
    if bad:
        return Check(name, False, _joined(bad))
    return Check(name, True, f"final ε of every holder: |PRV − PLD| ≤ {worst:.4f} (allowed {allowed:g}).")


def _figures(
    files: RunFiles,
    replay: Replay,
    tolerance: float,
    max_over_rounds: list[tuple[int, float]],
    central: HolderEpsilon | None,
) -> tuple[list[_Figure], Callable[[int], str]]:
    """Pair the figures the run logged per round with their ledger replay; give the message when all match.

    With the server's DP-FedAvg ledger: "epsilon" (the max over the clients' own ledgers) and
    "central_epsilon" (the server's ledger, logged on a sample of rounds and the last), both
    required. Else "epsilon": the max over every holder and the central ledger.
    """
    accountant = files.config.privacy.accountant
    points, run, delta = replay.points, replay.current_run, replay.delta

    def by_accountant(ledgers: list[list[LedgerEntry]]) -> dict[int, float]:
        return dict(max_series((epsilon_series(es, points, run, delta, accountant) for es in ledgers), points))

    if is_central_dp(files.central):
        local = by_accountant(list(files.clients.values()))
        server = dict(epsilon_series(files.central, points, run, delta, accountant))
        figures = [_Figure(key, key, "", rep, True) for key, rep in (("epsilon", local), ("central_epsilon", server))]

        def fedavg_ok(compared: int) -> str:
            return (
                f"{compared} logged figures (local ε = max over the client ledgers, central ε = the server's DP-FedAvg "
                f"ledger) equal the {accountant.upper()} replay within {tolerance:.0%}; neither ever decreases."
            )

        return figures, fedavg_ok
    if accountant == "pld":
        replayed = dict(max_over_rounds)
        if central is not None:
            replayed = {r: max(e, c) for (r, e), (_, c) in zip(max_over_rounds, central.series, strict=True)}
    else:
        held = {**holders(files.clients, files.central), **({"central": files.central} if files.central else {})}
        replayed = by_accountant(list(held.values()))
    off_note = (
        " (privacy is off: a logged 0 means nothing was accounted, not ε = 0; the guarantee is ε = ∞)"
        if files.config.privacy.mode == "off"
        else ""
    )

    def ok(compared: int) -> str:
        return (
            f"at {compared} round(s) the logged ε equals the {accountant.upper()} replay of the ledgers "
            f"within {tolerance:.0%}; logged ε never decreases{off_note}."
        )

    return [_Figure("epsilon", "ε", " ε", replayed, False)], ok


def _check_metrics(
    files: RunFiles, replay: Replay, tolerance: float, figures: list[_Figure], ok: Callable[[int], str]
) -> list[Check]:
    """Each logged figure after round R equals its ledger replay up to R and never decreases;
    the summary's figure equals the replay after the last round."""
    if not files.metrics:
        missing = f"{LAYOUT.metrics_path} is missing or empty: nothing to compare the ledgers with."
        return [Check("metrics ε = ledger replay", False, missing)]
    accountant = files.config.privacy.accountant
    bad, compared = [], 0
    last = int(files.metrics[-1]["round"])
    for fig in figures:
        prev = 0.0
        for m in files.metrics:
            r = int(m["round"])
            if fig.required and fig.key not in m:
                if r == last:
                    bad.append(f"round {r}: the last line of {LAYOUT.metrics_path} has no {fig.key!r}")
                continue
            logged = float(m.get(fig.key, 0.0))
            if logged < prev - 1e-12:
                bad.append(f"round {r}: logged {fig.label} = {logged:.4f} decreased from {prev:.4f}")
            prev = logged
            if r not in fig.replay:
                continue
            compared += 1
            if not _close(logged, fig.replay[r], tolerance):
                bad.append(
                    f"round {r}: {LAYOUT.metrics_path} {fig.label} = {logged:.4f}, "
                    f"ledger replay ({accountant}){fig.replay_label} = {fig.replay[r]:.4f}"
                )
    checks = [Check("metrics ε = ledger replay", not bad, _joined(bad) if bad else ok(compared))]
    points = replay.points
    if files.summary is not None and points:
        for fig in figures:
            if fig.key in files.summary:
                logged, final = float(files.summary[fig.key]), fig.replay[points[-1]]
                checks.append(
                    Check(
                        f"summary {fig.label} = ledger replay",
                        _close(logged, final, tolerance),
                        f"{LAYOUT.summary_path} {fig.label} = {logged:.4f}, "
                        f"ledger replay after round {points[-1]}{fig.replay_label} = {final:.4f}.",
                    )
                )
    return checks


def _check_entry_counts(files: RunFiles, current_run: str | None) -> Check:
    """Under DP, every client whose update was accepted in round R wrote an entry for R
    (a deleted entry shows up here even when it does not change the maximum ε)."""
    name = "a ledger entry for every DP training reply"
    if files.config.privacy.mode == "off":
        return Check(name, True, "privacy.mode is 'off': no entries are expected.")
    bad = []
    central_rounds = [e.round for e in files.central if e.run_id == current_run]
    if is_central_dp(files.central):
        for m in files.metrics:
            if central_rounds.count(int(m["round"])) < 1:
                bad.append(f"round {int(m['round'])}: no dp-fedavg entry in {LAYOUT.central_ledger_path}")
        if files.config.privacy.local_dp:
            bad += _client_entry_shortfalls(files, current_run)
    elif files.central or not files.clients and not any("clients" in (m.get("train") or {}) for m in files.metrics):
        for m in files.metrics:
            r = int(m["round"])
            if central_rounds.count(r) < 1:
                bad.append(f"epoch {r}: no entry in {LAYOUT.central_ledger_path}")
    else:
        bad += _client_entry_shortfalls(files, current_run)
    msg = _joined(bad) if bad else (
        f"every round of {LAYOUT.metrics_path} has at least as many ledger entries as DP training replies "
        f"(run {current_run})."
    )
    return Check(name, not bad, msg)


def _client_entry_shortfalls(files: RunFiles, current_run: str | None) -> list[str]:
    """Name the rounds in which fewer clients wrote a ledger entry than trained."""
    written: dict[int, int] = {}
    for entries in files.clients.values():
        for e in entries:
            if e.run_id == current_run and e.mechanism == "dp-sgd":
                written[e.round] = written.get(e.round, 0) + 1
    bad = []
    for m in files.metrics:
        r, trained = int(m["round"]), int((m.get("train") or {}).get("clients", 0) or 0)
        if written.get(r, 0) < trained:
            bad.append(f"round {r}: {trained} client(s) trained but only {written.get(r, 0)} ledger entries")
    return bad


def _check_fingerprints(files: RunFiles, data: DataFacts) -> list[Check]:
    """Check that the weights and the catalog, recomputed, match the manifest's fingerprints."""
    run, manifest = files.run, files.manifest
    if manifest is None:
        return [Check("model fingerprints", False, f"{run.manifest_path} does not exist: the run has not finished.")]
    path = run.weights_path
    if not path.exists():
        weights_check = Check("weights fingerprint", False, f"{path} does not exist.")
    else:
        actual = weights_fingerprint(torch.load(path, weights_only=True))
        weights_check = Check(
            "weights fingerprint",
            actual == manifest.get("weights_fingerprint"),
            f"sha256 of {path} = {actual[:16]}…, manifest says {str(manifest.get('weights_fingerprint'))[:16]}…",
        )
    recorded = manifest.get("catalog_fingerprint")
    if data.catalog_fingerprint is None:
        why = f"the data source could not be loaded to recompute it: {data.error}"
        catalog_check = Check("catalog fingerprint", False, why)
    elif recorded is None:
        why = f"{run.manifest_path} has no catalog_fingerprint (written before manifests fingerprinted the catalog)."
        catalog_check = Check("catalog fingerprint", False, why)
    else:
        catalog_check = Check(
            "catalog fingerprint",
            data.catalog_fingerprint == recorded,
            f"recomputed {data.catalog_fingerprint[:16]}…, manifest says {str(recorded)[:16]}…",
        )
    return [weights_check, catalog_check]
