"""The privacy report: the guarantee it states, and that --verify catches tampering."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from server.privacy_report import audit_result, write_privacy_report
from shared.config import StrataConfig, load_config
from shared.data.source import load_source
from shared.features import catalog_features
from shared.model import build_model
from shared.privacy.accounting import default_delta, epsilon_of
from shared.privacy.guarantee import entries_upto, epsilon_series, guarantee, holder_epsilons, holders
from shared.privacy.ledger import Ledger, LedgerEntry, LedgerError
from server.instruction_log import InstructionLog
from shared.privacy.signing import SigningKey
from shared.run_dir import RunDir

SIGMA = 4.0
RUN_ID = "run-b"
# Every client runs the public plan of the config: q = B / (N / hubs) = 4 / 10, ⌊1/q⌋ = 2 steps.
PLAN = (0.4, 2)
# client id -> the rounds it took part in (fraction-train < 1): their ε differ by participation.
PLANS = {"0": (1, 2, 3), "1": (1, 2), "2": (1,)}
ROUNDS = 3
N_USERS = 30


def _config(run_dir: Path, mode: str) -> StrataConfig:
    return load_config(
        None,
        [
            f"run.out={json.dumps(str(run_dir))}",
            'run.name="hand-made"',
            'data.source="synthetic"',
            f"data.synthetic-users={N_USERS}",
            "data.synthetic-items=24",
            "data.synthetic-categories=2",
            "data.synthetic-subs-per-category=2",
            "model.hidden-dim=8",
            "model.latent-dim=4",
            "model.rating-dim=2",
            f'privacy.mode="{mode}"',
            f"privacy.noise-multiplier={SIGMA}",
            f"privacy.population={N_USERS}",
            "train.batch-size=4",
            'federation.topology="hub"',
            "federation.num-hubs=3",
            f"federation.rounds={ROUNDS}",
            'federation.eval-release="none"',
        ],
    )


def _entries(cid: str, run_id: str = RUN_ID) -> list[LedgerEntry]:
    q, steps = PLAN
    return [
        LedgerEntry.dp_sgd(
            noise_multiplier=SIGMA, sample_rate=q, steps=steps, run_id=run_id, round=r, client=cid, max_grad_norm=1.0
        )
        for r in PLANS[cid]
    ]


def _make_run(tmp_path: Path, *, mode: str = "local", prior: bool = False) -> tuple[Path, dict[str, Any]]:
    """A run directory written by hand; returns it and the ε values computed independently."""
    run_dir = tmp_path / "run"
    config = _config(run_dir, mode)
    run = RunDir(run_dir)
    run.write_config(config)
    delta = default_delta(N_USERS)
    ledgers: dict[str, list[LedgerEntry]] = {}
    if mode == "local":
        (run_dir / "ledgers").mkdir()
        log = InstructionLog(run.instruction_log_path, SigningKey.load_or_create(run.signing_key_path("server")))
        for cid in PLANS:
            key = SigningKey.load_or_create(run.signing_key_path(f"client-{cid}"))
            signed = Ledger(path=run.client_ledger_path(cid), signer=key)
            for e in ([*_entries(cid, "run-a")] if prior and cid == "0" else []) + _entries(cid):
                signed.append(e)  # chained and signed by the client's key, as a device writes it
            ledgers[cid] = list(signed.entries)
        for r in range(1, ROUNDS + 1):  # the server's log of who trained in each round
            for cid, rounds in PLANS.items():
                if r in rounds:
                    pub = SigningKey.load(run.signing_key_path(f"client-{cid}")).public_hex()
                    log.append(
                        run_id=RUN_ID, server_round=r, kind="train", node=int(cid), device=pub, outcome="accepted"
                    )
    metrics = []
    for r in range(1, ROUNDS + 1):
        eps = max(
            (epsilon_of([e for e in es if e.run_id != RUN_ID or e.round <= r], delta) for es in ledgers.values()),
            default=0.0,
        )
        clients = float(sum(r in rounds for rounds in PLANS.values()))
        train = {"clients": clients, "failed": 0.0, "refused": 0.0, "users": 30.0, "train-loss": 1.0, "epsilon": eps}
        metrics.append({"round": r, "skipped": False, "train": train, "eval": {}, "epsilon": eps})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    data = load_source(config.data, config.run.seed)
    model = build_model(data.n_items, config.model, torch.from_numpy(catalog_features(data.catalog)), seed=0)
    weights = OrderedDict((k, v.detach().clone()) for k, v in model.named_parameters())
    run.write_model(weights, config, data.catalog, rounds=ROUNDS)
    (run_dir / "summary.json").write_text(json.dumps({"run_id": RUN_ID, "epsilon": metrics[-1]["epsilon"]}))
    finals = {f"client-{cid}": epsilon_of(es, delta) for cid, es in ledgers.items()}
    return run_dir, {"delta": delta, "finals": finals, "metrics": metrics}


def _failed(report: dict[str, Any]) -> set[str]:
    return {c["name"] for c in report["verification"]["checks"] if not c["passed"]}


def _with_sigma(line: str, sigma: float) -> str:
    return json.dumps({**json.loads(line), "noise_multiplier": sigma}, sort_keys=True)


def _rewrite_ledger(path: Path, edit: Callable[[list[str]], list[str]]) -> None:
    lines = path.read_text().splitlines()
    path.write_text("".join(line + "\n" for line in edit(lines)))


def test_consistent_run_verifies_and_states_the_max_over_clients(tmp_path: Path) -> None:
    run_dir, expected = _make_run(tmp_path)

    report, verified = write_privacy_report(run_dir, verify=True)

    assert verified, report["verification"]
    assert not _failed(report)
    g = report["guarantee"]
    assert g["epsilon"] == pytest.approx(max(expected["finals"].values()), rel=1e-9)
    assert g["delta"] == pytest.approx(expected["delta"])
    assert g["epsilon_rdp"] >= g["epsilon"]  # RDP is the looser upper bound
    assert g["held_by"] == max(expected["finals"], key=expected["finals"].get)
    finals = sorted(expected["finals"].values())
    assert report["distribution"]["min"] == pytest.approx(finals[0])
    assert report["distribution"]["median"] == pytest.approx(finals[1])
    assert [e for _, e in report["max_over_rounds"]] == pytest.approx([m["epsilon"] for m in expected["metrics"]])
    (mechanism,) = report["mechanisms"]  # one public plan for every client
    assert mechanism["entries"] == sum(len(rounds) for rounds in PLANS.values())
    assert report["composition"]["n_runs"] == 1
    assert "user" in report["headline"] and f"{g['epsilon']:.3f}" in report["headline"]
    saved = json.loads((run_dir / "privacy_report.json").read_text())
    assert saved["guarantee"]["epsilon"] == pytest.approx(g["epsilon"])


def test_epsilon_composes_across_runs_in_the_ledgers(tmp_path: Path) -> None:
    run_dir, expected = _make_run(tmp_path, prior=True)

    report, verified = write_privacy_report(run_dir, verify=True)

    assert verified, report["verification"]
    assert report["composition"]["n_runs"] == 2
    # Client 0 ran twice: its ε is the composition of both runs' entries.
    assert report["per_client"]["client-0"]["epsilon"] == pytest.approx(
        epsilon_of([*_entries("0", "run-a"), *_entries("0")], expected["delta"])
    )


def test_noise_multiplier_edited_upward_fails_verify(tmp_path: Path) -> None:
    run_dir, expected = _make_run(tmp_path)
    top = max(expected["finals"], key=expected["finals"].get)
    # Raising σ makes the replayed ε *smaller* than the one logged: still a mismatch.
    _rewrite_ledger(run_dir / "ledgers" / f"{top}.jsonl", lambda ls: [_with_sigma(ls[0], 8.0), *ls[1:]])

    report, verified = write_privacy_report(run_dir, verify=True)

    assert not verified
    assert {"metrics ε = ledger replay", "ledger entries consistent"} <= _failed(report)
    assert "FAILED" in report["headline"]


def test_noise_multiplier_edit_on_a_client_below_the_max_fails_verify(tmp_path: Path) -> None:
    run_dir, expected = _make_run(tmp_path)
    low = min(expected["finals"], key=expected["finals"].get)
    _rewrite_ledger(run_dir / "ledgers" / f"{low}.jsonl", lambda ls: [_with_sigma(ls[0], 5.0), *ls[1:]])

    report, verified = write_privacy_report(run_dir, verify=True)

    assert not verified
    assert "ledger entries consistent" in _failed(report)


@pytest.mark.parametrize("which", ["max", "min"])
def test_deleted_ledger_line_fails_verify(tmp_path: Path, which: str) -> None:
    run_dir, expected = _make_run(tmp_path)
    pick = max if which == "max" else min
    client = pick(expected["finals"], key=expected["finals"].get)
    _rewrite_ledger(run_dir / "ledgers" / f"{client}.jsonl", lambda ls: ls[1:])

    report, verified = write_privacy_report(run_dir, verify=True)

    assert not verified
    assert "a ledger entry for every DP training reply" in _failed(report)
    if which == "max":
        assert "metrics ε = ledger replay" in _failed(report)


def test_changed_metrics_epsilon_fails_verify(tmp_path: Path) -> None:
    run_dir, expected = _make_run(tmp_path)
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lines[1]["epsilon"] *= 0.8
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))

    report, verified = write_privacy_report(run_dir, verify=True)

    assert not verified
    assert _failed(report) == {"metrics ε = ledger replay"}
    failing = next(c for c in report["verification"]["checks"] if not c["passed"])
    assert "round 2" in failing["message"]


def test_changed_weights_fail_the_fingerprint_check(tmp_path: Path) -> None:
    run_dir, _ = _make_run(tmp_path)
    weights = torch.load(run_dir / "model" / "weights.pt")
    first = next(iter(weights))
    weights[first] = weights[first] + 1.0
    torch.save(weights, run_dir / "model" / "weights.pt")

    report, verified = write_privacy_report(run_dir, verify=True)

    assert not verified
    assert _failed(report) == {"weights fingerprint"}


def test_unparseable_ledger_is_named_with_file_and_line(tmp_path: Path) -> None:
    run_dir, _ = _make_run(tmp_path)
    path = run_dir / "ledgers" / "client-1.jsonl"
    _rewrite_ledger(path, lambda ls: [ls[0], "{not json", *ls[1:]])

    with pytest.raises(LedgerError, match=r"client-1\.jsonl, line 2"):
        write_privacy_report(run_dir, verify=False)
    report, verified = write_privacy_report(run_dir, verify=True)
    assert not verified
    parse = next(c for c in report["verification"]["checks"] if c["name"] == "ledgers parse")
    assert not parse["passed"] and "client-1.jsonl, line 2" in parse["message"]


def test_html_states_epsilon_delta_and_the_unit_and_is_self_contained(tmp_path: Path) -> None:
    run_dir, expected = _make_run(tmp_path)

    report, _ = write_privacy_report(run_dir, verify=True)

    page = (run_dir / "privacy_report.html").read_text()
    assert f"ε = {report['guarantee']['epsilon']:.3f}" in page
    assert f"δ = {expected['delta']:.3g}" in page
    assert "unit: one user" in page and "one user (all of their ratings)" in page
    assert page.count("<svg") >= 2  # ε over rounds and the distribution
    assert "What this does not cover" in page and "Not used in this run" in page
    for external in ("<script", "src=", "href=", "http://", "https://"):
        assert external not in page


def test_privacy_off_states_no_guarantee(tmp_path: Path) -> None:
    run_dir, _ = _make_run(tmp_path, mode="off")

    report, verified = write_privacy_report(run_dir, verify=True)

    assert verified, report["verification"]
    g = report["guarantee"]
    assert g["epsilon"] == "inf" and math.isinf(float(g["epsilon"])) and not g["dp"]
    assert "No differential-privacy guarantee" in report["headline"] and "ε = ∞" in report["headline"]
    assert json.loads((run_dir / "privacy_report.json").read_text())["guarantee"]["epsilon"] == "inf"
    page = (run_dir / "privacy_report.html").read_text()
    assert "No guarantee: ε = ∞" in page and "ε = 0.000, δ" not in page


def test_audit_result_is_included_when_present(tmp_path: Path) -> None:
    """A run trained by `strata audit` (out/run next to out/audit.json) shows the audit's bound."""
    run = tmp_path / "run"
    run.mkdir()
    assert audit_result(run) is None
    audit = {"run_dir": str(run), "m": 200, "r": 120, "correct": 118, "epsilon_lower_bound": 3.2,
             "confidence": 0.95, "reported_epsilon": None, "passed": None, "verdict": "DP off: ε ≥ 3.2", "canaries": []}
    (tmp_path / "audit.json").write_text(json.dumps(audit))
    got = audit_result(run)
    assert got is not None
    assert got["epsilon_lower_bound"] == 3.2 and got["m"] == 200 and "canaries" not in got
    other = tmp_path / "other"
    other.mkdir()
    assert audit_result(other) is None  # an audit of a different run is not attached


def test_guarantee_composes_each_client_with_the_central_ledger() -> None:
    delta = default_delta(N_USERS)
    clients = {cid: _entries(cid) for cid in PLANS}
    server = [
        LedgerEntry.dp_fedavg(noise_multiplier=2.0, sample_rate=1.0, clip=1.0, run_id=RUN_ID, round=r) for r in (1, 2)
    ]
    held = holders(clients, server)
    assert list(held) == ["client-0", "client-1", "client-2"]
    assert all(es[-2:] == server for es in held.values())
    assert holders({}, server) == {"central": server} and holders({}, []) == {}
    prior = _entries("0", "run-a")
    assert entries_upto([*prior, *_entries("0")], 1, RUN_ID) == [*prior, _entries("0")[0]]
    series = epsilon_series(held["client-0"], [1, 2, 3], RUN_ID, delta)
    assert [r for r, _ in series] == [1, 2, 3] and series[0][1] < series[1][1] < series[2][1]

    per = holder_epsilons(held, [1, 2, 3], RUN_ID, delta)
    top = guarantee(per)
    assert top.held_by is not None and per[top.held_by].epsilon == top.epsilon == max(h.epsilon for h in per.values())
    assert top.epsilon_rdp >= top.epsilon and top.holders == 3 and top.tied >= 1
    assert guarantee({}).held_by is None and guarantee({}).epsilon == 0.0


def test_audit_is_attached_to_the_report(tmp_path: Path) -> None:
    run_dir, _ = _make_run(tmp_path)
    (tmp_path / "audit.json").write_text(json.dumps({"run_dir": str(run_dir), "m": 10, "verdict": "ok"}))

    report, _ = write_privacy_report(run_dir, verify=False)

    assert report["audit"] == {"m": 10, "verdict": "ok"}
    assert "Empirical audit" in (run_dir / "privacy_report.html").read_text()
