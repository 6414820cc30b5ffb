"""The device's own policy bounds what the server may ask (issue 9, item 4).

A server controls the run config under `flwr run`; these tests play that server and ask for
no DP, too little noise, too large a clip or too weak a δ: the device refuses and sends no
weights. The run config can only tighten the policy's cap.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from flwr.app import ArrayRecord

from client.budget import ClientBudget
from client.policy import PERMISSIVE, STRICT, effective_max_epsilon, policy_for, policy_from_file, refusal
from client.release import contribute, evaluate
from client.rounds import train_round
from client.store import simulation_store
from client.trainer import parameters_of
from shared.config import DevicePolicyConfig, StrataConfig
from shared.model import build_model
from shared.privacy.ledger import Ledger
from shared.protocol import EvaluateIns, ReleaseIns, TrainIns

POLICY = DevicePolicyConfig(
    apply=True, trust="none", max_epsilon=8.0, max_delta=1e-3, max_clip=1.0, min_noise_multiplier=0.8
)


def _ask(config: StrataConfig, policy: DevicePolicyConfig = POLICY) -> tuple[bool, Ledger]:
    """Send one TrainIns under `config` to partition 0; whether weights came back, and its ledger."""
    store = simulation_store(config, 0)
    weights = parameters_of(build_model(store.n_items, config.model, store.features, 0))
    ledger = Ledger()
    budget = ClientBudget.from_config(config.privacy, ledger=ledger, max_epsilon=effective_max_epsilon(policy, config))
    ins = TrainIns(arrays=ArrayRecord(weights), server_round=1, run_id="r")
    reply = train_round(store, config, ins, budget, policy)
    return reply.weights is not None, ledger


def _local(config: StrataConfig, **overrides: object) -> StrataConfig:
    return config.replace({"privacy.mode": "local", "privacy.noise-multiplier": 1.0, **overrides})


def test_a_request_inside_the_policy_is_served(tiny_config: StrataConfig) -> None:
    served, ledger = _ask(_local(tiny_config))
    assert served and len(ledger) == 1


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"privacy.mode": "off"}, "asks for no DP"),
        ({"privacy.mode": "central", "privacy.central-noise-multiplier": 1.0}, "trusts no aggregator"),
        ({"privacy.noise-multiplier": 0.3}, "below this device's min-noise-multiplier"),
        ({"privacy.max-grad-norm": 50.0}, "above this device's max-clip"),
        ({"privacy.delta": 0.02}, "above this device's max-delta"),
    ],
)
def test_a_request_outside_the_policy_is_refused_without_weights(
    tiny_config: StrataConfig, caplog: pytest.LogCaptureFixture, overrides: dict[str, object], why: str
) -> None:
    cfg = _local(tiny_config, **overrides)
    with caplog.at_level("WARNING"):
        served, ledger = _ask(cfg)
    assert not served
    assert len(ledger) == 0  # nothing was trained, nothing spent
    assert why in caplog.text
    assert why in refusal(POLICY, cfg, noise_multiplier=cfg.privacy.noise_multiplier)


def test_the_run_config_can_only_tighten_the_cap(tiny_config: StrataConfig) -> None:
    assert effective_max_epsilon(POLICY, _local(tiny_config, **{"privacy.max-epsilon": 100.0})) == 8.0
    assert effective_max_epsilon(POLICY, _local(tiny_config, **{"privacy.max-epsilon": 2.0})) == 2.0
    assert effective_max_epsilon(POLICY, _local(tiny_config)) == 8.0


def test_the_cap_of_the_policy_refuses_a_round(tiny_config: StrataConfig) -> None:
    tight = DevicePolicyConfig(apply=True, trust="none", max_epsilon=0.01, max_delta=1e-3, min_noise_multiplier=0.5)
    served, ledger = _ask(_local(tiny_config), tight)
    assert not served and len(ledger) == 0


STRICT_BUT_LOOSE_DELTA = DevicePolicyConfig(apply=True, max_delta=1e-3)
"""The strict defaults with a δ cap the 40-user test population can meet."""


def test_releases_and_evaluation_follow_the_policy(tiny_config: StrataConfig) -> None:
    cfg = _local(tiny_config)
    store = simulation_store(cfg, 0)
    only_census = DevicePolicyConfig(
        apply=True, trust="none", max_delta=1e-3, min_noise_multiplier=0.5, allowed_releases="census"
    )
    ledger = Ledger()
    budget = ClientBudget.from_config(cfg.privacy, ledger=ledger)
    reply = contribute(store, cfg, ReleaseIns(kind="popularity", server_round=0, run_id="r"), budget, only_census)
    assert reply.refused and len(ledger) == 0
    weights = parameters_of(build_model(store.n_items, cfg.model, store.features, 0))
    ins = EvaluateIns(arrays=ArrayRecord(weights), server_round=1, run_id="r")
    refused = evaluate(store, cfg, ins, budget, only_census)
    assert refused.refused and "evaluation release is not among" in refused.reason and len(ledger) == 0
    low_z = cfg.replace({"privacy.eval-noise-multiplier": 0.1})
    assert "min-noise-multiplier" in evaluate(store, low_z, ins, budget, STRICT_BUT_LOOSE_DELTA).reason
    served = evaluate(store, cfg, ins, budget, PERMISSIVE)
    # Under local privacy the evaluation is a release like any other: noised here, one ledger entry.
    assert not served.refused and [(e.mechanism, e.round) for e in ledger.entries] == [("gaussian-sum", 1)]


def test_which_policy_a_device_holds(tiny_config: StrataConfig, tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[device-policy]\ntrust = "aggregator"\nmax-epsilon = 4.0\nmax-delta = 1e-4\n', encoding="utf-8")
    assert policy_for(tiny_config, {"privacy-policy": str(path), "data-path": "x.csv"}).trust == "aggregator"
    assert policy_for(tiny_config, {"data-path": "x.csv"}) == STRICT  # a real device without a policy file
    assert policy_for(tiny_config, {"partition-id": 0}) == PERMISSIVE  # simulation, no [device-policy]
    applied = tiny_config.replace({"device-policy.apply": True, "device-policy.trust": "aggregator"})
    assert policy_for(applied, {"partition-id": 0}).trust == "aggregator"
    # A server's run config cannot loosen a real device's policy: it never reads [device-policy] there.
    assert policy_for(applied, {"data-path": "x.csv"}) == STRICT
    assert math.isinf(PERMISSIVE.max_epsilon)


def test_a_bad_policy_file_names_itself(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("max-epsilon = 4.0\nsurprise = 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.toml"):
        policy_from_file(path)
    with pytest.raises(FileNotFoundError, match="privacy-policy"):
        policy_from_file(tmp_path / "missing.toml")
