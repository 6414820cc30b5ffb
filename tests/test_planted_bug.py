"""The audit's planted accounting bug: devices train with σ / divisor while their ledgers record σ.

The switch exists so that an audit can be shown to catch a broken run (issue 10); it is set only
through the environment of the processes running the devices, never by the run config.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from flwr.app import ArrayRecord

from client.budget import ClientBudget
from client.planted_bug import ENV, noise_divisor, planted_bug
from client.rounds import train_round
from client.store import simulation_store
from shared.config import StrataConfig
from shared.model import build_model
from shared.privacy.ledger import Ledger
from shared.protocol import TrainIns
from client.trainer import parameters_of, train_locally
from simulation.audit import run_audit


def _train_once(config: StrataConfig, monkeypatch: pytest.MonkeyPatch) -> tuple[float, float]:
    """Train partition 0 for one round; return (σ the trainer used, σ the ledger recorded)."""
    used: list[float] = []
    real = train_locally

    def spy(*args: Any, **kwargs: Any) -> Any:
        used.append(kwargs["dp"].noise_multiplier)
        return real(*args, **kwargs)

    monkeypatch.setattr("client.rounds.train_locally", spy)
    store = simulation_store(config, 0)
    weights = parameters_of(build_model(store.n_items, config.model, store.features, 0))
    ledger = Ledger()
    budget = ClientBudget.from_config(config.privacy, ledger=ledger)
    reply = train_round(store, config, TrainIns(arrays=ArrayRecord(weights), server_round=1, run_id="r"), budget)
    assert reply.weights is not None
    (entry,) = ledger.entries
    return used[0], entry.noise_multiplier


def test_the_planted_bug_divides_the_trainers_sigma_and_not_the_ledgers(
    tiny_config: StrataConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config.replace({"privacy.mode": "local", "privacy.target-epsilon": 4.0, "privacy.delta": 1e-4})
    honest_used, honest_recorded = _train_once(config, monkeypatch)
    assert honest_used == honest_recorded > 0
    assert os.environ.get(ENV) is None
    with planted_bug(4.0):
        assert noise_divisor() == 4.0
        broken_used, broken_recorded = _train_once(config, monkeypatch)
    assert broken_recorded == honest_recorded  # the ledger (and so the verifier) sees nothing
    assert broken_used == pytest.approx(honest_recorded / 4)
    assert os.environ.get(ENV) is None and noise_divisor() == 1.0  # restored


def test_the_switch_refuses_nonsense(tiny_config: StrataConfig, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "half")
    with pytest.raises(ValueError, match="not a number"):
        noise_divisor()
    monkeypatch.setenv(ENV, "0.5")
    with pytest.raises(ValueError, match=">= 1"):
        noise_divisor()
    monkeypatch.delenv(ENV)
    with pytest.raises(ValueError, match=">= 1"), planted_bug(0.25):
        pass
    # Only devices' DP-SGD has a σ to divide: the central pipeline and privacy off are refused before training.
    with pytest.raises(ValueError, match="federated pipeline"):
        run_audit(tiny_config, canaries=10, out=tmp_path / "a", seed=0, planted_noise_divisor=4.0)
    local = tiny_config.replace({"privacy.mode": "local"})
    with pytest.raises(ValueError, match="federated pipeline"):
        run_audit(local, canaries=10, out=tmp_path / "b", seed=0, pipeline="central", planted_noise_divisor=4.0)
