"""Signed, hash-chained ledgers: an honest run verifies; each forgery fails, naming the check.

The honest run is the real round loop over the real ClientApp in-process (`fakes.DirectGrid`),
local DP in 4 hubs, 2 rounds, final evaluation release. Each forgery edits a copy of its run
directory as a party without the devices' private keys could.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TINY_DATA, TINY_MODEL, make_config, set_task_identity
from fakes import DirectGrid

from server.federation import run_federation
from server.privacy_report import write_privacy_report
from shared.config import StrataConfig
from shared.privacy.ledger import Ledger, LedgerEntry
from shared.privacy.signing import SigningKey, chain_problems, digest
from shared.run_dir import JsonDict, RunDir
from simulation.oracle import OracleEvaluation


def _honest(out: Path, **federation: object) -> RunDir:
    """An honest run into `out`: local DP in 4 hubs, 2 rounds, with `federation` settings on top."""
    set_task_identity()  # a module-scoped fixture runs before the autouse one
    cfg = make_config(
        out=out,
        data=TINY_DATA,
        model=TINY_MODEL,
        train={"batch_size": 8},
        privacy={"population": 40, "mode": "local", "noise_multiplier": 1.0},
        federation={"topology": "hub", "num_hubs": 4, "rounds": 2, **federation},
    )
    run_federation(DirectGrid(cfg), cfg, oracle=OracleEvaluation(cfg))
    return RunDir.of(cfg.run_dir)


@pytest.fixture(scope="module")
def honest_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    return _honest(tmp_path_factory.mktemp("honest") / "run")


def _copy(run: RunDir, tmp_path: Path) -> RunDir:
    target = tmp_path / "forged"
    shutil.copytree(run.path, target)
    return RunDir.of(target)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _failed(run: RunDir) -> tuple[dict[str, str], JsonDict]:
    report, verified = write_privacy_report(run, verify=True)
    assert not verified
    return {c["name"]: c["message"] for c in report["verification"]["checks"] if not c["passed"]}, report


def test_an_honest_run_verifies_with_signed_chained_ledgers(honest_run: RunDir) -> None:
    report, verified = write_privacy_report(honest_run, verify=True)
    assert verified, [c for c in report["verification"]["checks"] if not c["passed"]]
    checks = {c["name"]: c["message"] for c in report["verification"]["checks"]}
    assert "each signed by its holder's pinned key" in checks["ledgers signed and chained"]
    for path in honest_run.client_ledger_paths():
        entries = Ledger.open(path).entries
        assert all(e.signature and e.key for e in entries) and entries[0].prev == ""
        assert [e.prev for e in entries[1:]] == [digest(e.to_json()) for e in entries[:-1]]
    assert not any(p.suffix == ".pem" for p in honest_run.ledger_dir.iterdir())  # private keys stay in keys/


def _edit_entry(n: int, **changes: object) -> Callable[[RunDir], str]:
    """Rewrite fields of entry n of client 0's ledger (without the device's key: the signature stays)."""

    def forge(run: RunDir) -> str:
        path = run.client_ledger_path("0")
        lines = _lines(path)
        entry = json.loads(lines[n])
        entry.update(changes)
        lines[n] = json.dumps(entry, sort_keys=True)
        _write(path, lines)
        return f"{path.name}, entry {n + 1}"

    return forge


def _delete_middle(run: RunDir) -> str:
    path = run.client_ledger_path("1")
    lines = _lines(path)
    del lines[1]
    _write(path, lines)
    return f"{path.name}, entry 2"


def _reorder(run: RunDir) -> str:
    path = run.client_ledger_path("2")
    lines = _lines(path)
    lines[0], lines[1] = lines[1], lines[0]
    _write(path, lines)
    return f"{path.name}, entry 1"


def _copy_from_another_device(run: RunDir) -> str:
    path, other = run.client_ledger_path("3"), run.client_ledger_path("0")
    lines = _lines(path)
    lines[0] = _lines(other)[0].replace('"client": "0"', '"client": "3"')
    _write(path, lines)
    return f"{path.name}, entry 1"


def _swap_key(run: RunDir) -> str:
    """Re-sign client 0's whole ledger, with σ doubled, under a fresh key (the forger's own)."""
    path = run.client_ledger_path("0")
    forged = Ledger(signer=SigningKey.generate())
    for e in Ledger.open(path).entries:
        forged.append(LedgerEntry.from_dict({**json.loads(e.to_json()), "noise_multiplier": 2 * e.noise_multiplier}))
    _write(path, forged.to_lines())
    return f"{path.name}, entry 1"


def _ledger_of_another_run(run: RunDir) -> str:
    """Client 1's ledger replaced by one another run (with its own device key) wrote."""
    path = run.client_ledger_path("1")
    stranger = Ledger(signer=SigningKey.generate())
    for e in Ledger.open(path).entries:
        stranger.append(LedgerEntry.from_dict({**json.loads(e.to_json()), "run_id": "another-run"}))
    _write(path, stranger.to_lines())
    return f"{path.name}, entry 1"


FORGERIES: dict[str, Callable[[RunDir], str]] = {
    "sigma-rewritten": _edit_entry(0, noise_multiplier=9.0),
    "q-and-steps-rewritten": _edit_entry(0, sample_rate=0.05, steps=1),
    "deleted-entry": _delete_middle,
    "reordered-entries": _reorder,
    "entry-from-another-device": _copy_from_another_device,
    "swapped-key": _swap_key,
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_each_forgery_fails_the_signature_check_naming_the_entry(honest_run: RunDir, tmp_path: Path, name: str) -> None:
    run = _copy(honest_run, tmp_path)
    where = FORGERIES[name](run)
    failed, report = _failed(run)
    assert "ledgers signed and chained" in failed, failed
    assert where in failed["ledgers signed and chained"]
    assert report["guarantee"]["epsilon"] == "inf" and report["headline"].startswith("No guarantee")


def test_a_ledger_from_another_run_fails(honest_run: RunDir, tmp_path: Path) -> None:
    run = _copy(honest_run, tmp_path)
    where = _ledger_of_another_run(run)
    failed, _ = _failed(run)
    assert where in failed["ledgers signed and chained"]


def test_missing_ledgers_fail_closed_with_epsilon_infinite(honest_run: RunDir, tmp_path: Path) -> None:
    run = _copy(honest_run, tmp_path)
    shutil.rmtree(run.ledger_dir)
    failed, report = _failed(run)
    assert "no client ledger" in failed["ledgers present"]
    assert report["guarantee"]["epsilon"] == "inf" and not report["guarantee"]["dp"]


def test_without_pinned_keys_nothing_verifies(honest_run: RunDir, tmp_path: Path) -> None:
    run = _copy(honest_run, tmp_path)
    report, verified = write_privacy_report(run, verify=True, keys=tmp_path / "no-keys")
    assert not verified
    failed = {c["name"]: c["message"] for c in report["verification"]["checks"] if not c["passed"]}
    assert "no pinned public key" in failed["ledgers signed and chained"]


def test_chain_problems_by_hand() -> None:
    key = SigningKey.generate()
    ledger = Ledger(signer=key)
    for r in (1, 2, 3):
        ledger.append(
            LedgerEntry.dp_sgd(noise_multiplier=1.0, sample_rate=0.1, steps=10, max_grad_norm=1.0, run_id="r",
                               round=r, client="0")
        )
    entries = list(ledger.entries)
    assert chain_problems(entries, "L", key.public_hex()) == []
    assert chain_problems(entries, "L", SigningKey.generate().public_hex())[0].startswith("L, entry 1: signed by key")
    assert chain_problems([entries[0], entries[2]], "L", key.public_hex()) == [
        "L, entry 2: chain broken (prev does not match entry 1)"
    ]
    unsigned = Ledger()
    unsigned.append(entries[0])
    assert "unsigned" in chain_problems(list(unsigned.entries), "L", key.public_hex())[0]


# ------------------------------------------------------------------ the instruction log


def _drop_last_round(run: RunDir) -> str:
    """The consistent forgery: round 2 removed from every ledger, metrics.jsonl and summary.json (the
    chains stay intact: only trailing entries go)."""
    for path in run.client_ledger_paths():
        _write(path, [line for line in _lines(path) if json.loads(line)["round"] < 2])
    _write(run.metrics_path, [line for line in _lines(run.metrics_path) if json.loads(line)["round"] < 2])
    summary = json.loads(run.summary_path.read_text())
    summary["rounds"] = 1
    run.summary_path.write_text(json.dumps(summary))
    return "(accepted train, round 2"


def _drop_census(run: RunDir) -> str:
    for path in run.client_ledger_paths():
        _write(path, [line for line in _lines(path) if json.loads(line)["round"] != 3])
    return "(accepted census, round 3"


def _drop_instruction(run: RunDir) -> str:
    path = run.instruction_log_path
    lines = _lines(path)
    del lines[2]
    _write(path, lines)
    return "instructions.jsonl, record 3: chain broken"


@pytest.fixture(scope="module")
def census_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    return _honest(tmp_path_factory.mktemp("census") / "run", census=True)


@pytest.mark.parametrize("forge", [_drop_last_round, _drop_census, _drop_instruction])
def test_the_instruction_log_catches_what_the_chains_cannot(
    census_run: RunDir, tmp_path: Path, forge: Callable[[RunDir], str]
) -> None:
    assert write_privacy_report(census_run, verify=True)[1]  # the honest run with its census verifies
    run = _copy(census_run, tmp_path)
    where = forge(run)
    failed, report = _failed(run)
    assert "instruction log matched" in failed, failed
    assert where in failed["instruction log matched"]
    assert report["guarantee"]["epsilon"] == "inf"


def test_a_central_release_deleted_from_the_servers_ledger_fails(tiny_config: StrataConfig, tmp_path: Path) -> None:
    cfg = tiny_config.replace(
        {"privacy.mode": "central", "privacy.central-noise-multiplier": 1.0, "model.popularity-prior": True}
    )
    run_federation(DirectGrid(cfg), cfg, oracle=OracleEvaluation(cfg))
    run = RunDir.of(cfg.run_dir)
    assert write_privacy_report(run, verify=True)[1]
    path = run.central_ledger_path
    _write(path, _lines(path)[1:])  # the popularity entry (round 0, the first) removed
    failed, _ = _failed(run)
    assert "no popularity entry for round 0" in failed["instruction log matched"]
