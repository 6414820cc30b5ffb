"""Federated evaluation is a DP release; the simulation oracle is the runner's own, and labelled.

Runs the real round loop over the real ClientApp in-process (`fakes.DirectGrid`).
"""

from __future__ import annotations

import pytest
from fakes import DirectGrid

from server.federation import run_federation
from server.privacy_report import write_privacy_report
from shared.config import StrataConfig
from shared.metrics import ORACLE_LABEL
from shared.privacy.ledger import Ledger
from shared.run_dir import RunDir
from simulation.oracle import OracleEvaluation


def test_a_server_without_an_oracle_refuses_oracle_evaluation(tiny_config: StrataConfig) -> None:
    with pytest.raises(ValueError, match="federation.oracle-eval"):
        run_federation(DirectGrid(tiny_config), tiny_config)


def test_without_noise_the_evaluation_release_equals_the_oracle(tiny_config: StrataConfig) -> None:
    """Privacy off: the clients' sums are exact, so the release's ranking figures are the oracle's."""
    cfg = tiny_config.replace({"federation.eval-release": "every"})
    run_federation(DirectGrid(cfg), cfg, oracle=OracleEvaluation(cfg))
    for line in RunDir.of(cfg.run_dir).read_metrics():
        release, oracle = line["eval"], line["oracle"]
        assert release["noise-std"] == 0.0 and release["clients"] == 4
        assert release["ndcg@100"] == pytest.approx(oracle["ndcg@100"], rel=1e-6)  # float32 scores
        assert release["recall@20"] == pytest.approx(oracle["recall@20"], rel=1e-6)  # float32 scores
        assert oracle["label"] == ORACLE_LABEL


def test_evaluation_releases_are_in_the_guarantee_and_the_report_says_so(tiny_config: StrataConfig) -> None:
    cfg = tiny_config.replace(
        {"privacy.mode": "local", "privacy.target-epsilon": 4.0, "federation.eval-release": "every"}
    )
    summary = run_federation(DirectGrid(cfg), cfg, oracle=OracleEvaluation(cfg))
    run = RunDir.of(cfg.run_dir)
    for path in run.client_ledger_paths():
        kinds = [(e.mechanism, e.round) for e in Ledger.open(path).entries]
        assert kinds == [("dp-sgd", 1), ("gaussian-sum", 1), ("dp-sgd", 2), ("gaussian-sum", 2)]
    assert summary["epsilon"] == pytest.approx(4.0, rel=0.02)  # σ calibrated with both evaluations counted
    assert summary["final_eval"]["noise-std"] > 0 and summary["final_oracle"]["label"] == ORACLE_LABEL
    report, verified = write_privacy_report(run, verify=True)
    assert verified, [c for c in report["verification"]["checks"] if not c["passed"]]
    assert report["adjacency"].startswith("Adjacency: add or remove one user")
    assert report["trust_model"].startswith("Trust model: nobody outside the device")
    assert any(r.startswith("the federated evaluation") and "2 rounds (1–2)" in r for r in report["releases"])
    assert any(r.startswith("DP-SGD training") for r in report["releases"])
    assert report["limits"][0].startswith("Timing and participation")
