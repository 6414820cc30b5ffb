"""End to end: the real ServerApp and ClientApp on Flower's simulation engine.

What a reply may carry is held to `shared.protocol.REPLY_SCHEMAS` in test_protocol.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from shared.config import StrataConfig
from shared.privacy.accounting import default_delta, epsilon_of
from shared.privacy.ledger import Ledger
from shared.run_dir import RunDir
from simulation.simulate import simulate


def test_two_rounds_four_clients_with_local_dp(tiny_config: StrataConfig) -> None:
    # z = 0.5 on each hub's evaluation sum: the noisy count of 40 users stays positive (std 2.4).
    cfg = tiny_config.replace(
        {"privacy.mode": "local", "privacy.noise-multiplier": 1.0, "privacy.eval-noise-multiplier": 0.5}
    )
    summary = simulate(cfg)
    run = RunDir.of(cfg.run_dir)
    paths = (
        run.config_path, run.metrics_path, run.summary_path, run.checkpoint_path, run.weights_path, run.manifest_path
    )
    for path in paths:
        assert path.exists(), path
    lines = run.read_metrics()
    assert [x["round"] for x in lines] == [1, 2]
    for line in lines:
        train = line["train"]  # no count of users or examples, no loss
        assert set(train) == {"clients", "failed", "refused", "epsilon"} and train["clients"] == 4
        oracle = line["oracle"]  # the runner's own evaluation, every round (eval-every 1), labelled
        assert 0 < oracle["ndcg@100"] <= 1 and math.isfinite(oracle["rmse"])
        assert oracle["label"] == "simulation oracle — not a release"
    # The clients' DP evaluation release after the last round: noisy means with their noise std
    # (each of the 4 hubs adds z · √6 to its sum), and a ledger entry in every client's ledger.
    assert lines[0]["eval"] == {}
    release = lines[-1]["eval"]
    assert release["noise-std"] == pytest.approx(cfg.privacy.eval_noise_multiplier * math.sqrt(6) * 2)
    assert math.isfinite(release["ndcg@100"]) and release["ndcg@100-std"] > 0 and release["clients"] == 4
    # ε in metrics.jsonl after each round equals a fresh accountant replaying the client ledgers.
    ledgers = [Ledger.open(p) for p in run.client_ledger_paths()]
    assert len(ledgers) == 4
    for lg in ledgers:
        assert [(e.mechanism, e.round) for e in lg.entries] == [("dp-sgd", 1), ("dp-sgd", 2), ("gaussian-sum", 2)]
    delta = default_delta(cfg.data.synthetic_users)
    for line in lines:
        replay = max(epsilon_of([e for e in lg.entries if e.round <= line["round"]], delta) for lg in ledgers)
        assert line["epsilon"] == pytest.approx(replay, rel=1e-9)
    assert summary["epsilon"] == pytest.approx(lines[-1]["epsilon"])
    manifest = run.read_manifest()
    assert manifest is not None
    assert len(manifest["item_index"]) == cfg.data.synthetic_items
    assert manifest["weights_fingerprint"] == summary["weights_fingerprint"]


def test_killed_run_resumes_to_the_same_model(tiny_config: StrataConfig, tmp_path: Path) -> None:
    """Rounds 1..2 in one go equal round 1, a stop, then resuming to round 2 (all clients train).

    Without DP: DP noise and sampling come from secret OS-seeded generators on purpose, so
    a DP run is never reproducible from its (public) seed.
    """
    base = tiny_config
    straight = simulate(base.replace({"run.out": str(tmp_path / "straight")}))
    interrupted = base.replace({"run.out": str(tmp_path / "resumed"), "federation.rounds": 1})
    simulate(interrupted)
    resumed = simulate(interrupted.replace({"federation.rounds": 2}))
    # Equal up to the order in which replies arrive (float summation order).
    a = RunDir.of(tmp_path / "straight").load_weights()
    b = RunDir.of(tmp_path / "resumed").load_weights()
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    assert resumed["run_id"] != straight["run_id"]
    assert [x["round"] for x in RunDir.of(tmp_path / "resumed").read_metrics()] == [1, 2]


def test_resuming_a_different_experiment_is_refused(tiny_config: StrataConfig, tmp_path: Path) -> None:
    cfg = tiny_config.replace({"run.out": str(tmp_path / "r"), "federation.rounds": 1})
    simulate(cfg)
    with pytest.raises(Exception, match="different experiment"):
        simulate(cfg.replace({"model.hidden-dim": 32}))
