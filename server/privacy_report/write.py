"""Building and writing the privacy report of a run: read, assemble, verify, render.

`verify=True` recomputes every ε from the ledgers and lists each check it made; a ledger
that does not parse is then a failed check (without `verify`, an error).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.run_dir import JsonDict, RunDir, pinned_keys

from .assemble import PrivacyReport, assemble, json_safe, with_verification
from .html import render_html
from .read import audit_result, data_facts, read_run, replay_plan
from .verify import verify as verify_checks

log = logging.getLogger(__name__)


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


def build_privacy_report(
    run_dir: Path | RunDir, *, verify: bool, tolerance: float = 0.0, keys: Path | None = None
) -> tuple[PrivacyReport, bool]:
    """Build the privacy report of `run_dir` (nothing written); return it and whether it is verified.

    `keys` is the folder of public keys the auditor pins (`<holder>.pem.pub`); default the run's own
    `keys/` (a simulation's).
    """
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}.")
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    files = read_run(run, strict=not verify)
    data = data_facts(files.config)
    replay = replay_plan(files, data)
    log.info(
        "replaying %d ledger(s) at %d round(s) with the PLD accountant (δ = %.3g)",
        len(files.clients) + bool(files.central), len(replay.points), replay.delta,
    )
    with _quiet_absl():
        report = assemble(files, replay, files.config.privacy.population or None, audit=audit_result(run))
        if not verify:
            return report, True
        checks = verify_checks(
            files,
            replay,
            data,
            tolerance,
            per_client=report.per_client,
            max_over_rounds=list(report.max_over_rounds),
            central=report.central,
            pinned=pinned_keys(keys if keys is not None else run.keys_dir),
        )
    for c in checks:
        if not c.passed:
            log.error("privacy-report verify: %s FAILED: %s", c.name, c.message)
    log.info("privacy-report verify: %d of %d checks passed", sum(c.passed for c in checks), len(checks))
    report = with_verification(report, checks, tolerance, files)
    assert report.verification is not None
    return report, report.verification.passed


def write_privacy_report(
    run_dir: Path | RunDir, *, verify: bool, tolerance: float = 0.0, keys: Path | None = None
) -> tuple[JsonDict, bool]:
    """Write the run's privacy report, JSON and HTML, into `run_dir`.

    Returns the report as `PrivacyReport.to_dict()` and whether it is verified (always True
    when `verify` is False). Without `verify` a ledger that does not parse is an error; with it,
    a failed check.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    report, verified = build_privacy_report(run, verify=verify, tolerance=tolerance, keys=keys)
    data = report.to_dict()
    safe = json_safe(data)
    assert isinstance(safe, dict)
    run.write_privacy_report(safe, render_html(data))
    log.info("wrote %s and %s", run.privacy_report_json, run.privacy_report_html)
    return data, verified
