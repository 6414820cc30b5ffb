"""The mechanism a device runs depends on public quantities only (issue 9, items 3, 5 and 7).

- δ and N: δ = 1/(100·N) for the configured public population N; δ ≥ 1/N is refused in the
  config, the budget and the calibration.
- Adjacency (add/remove one user): a hub with one more user runs the same (q, steps, σ).
- Worst-case calibration: σ is calibrated for a device that takes part in every round.
- Caps: a one-shot release over a device's max-epsilon is refused; a finished run is never
  resumed into new releases.
"""

from __future__ import annotations

import pytest
from flwr.app import ArrayRecord

from client.budget import ClientBudget
from client.release import contribute
from client.rounds import noise_multiplier_for, train_round
from client.store import DeviceStore, simulation_store
from client.trainer import local_plan, parameters_of
from shared.config import StrataConfig
from shared.model import build_model
from shared.privacy.accounting import calibrate_noise_multiplier, default_delta, epsilon_of
from shared.privacy.ledger import Ledger, LedgerEntry
from shared.protocol import ReleaseIns, TrainIns
from shared.run_dir import RunDir
from simulation.simulate import simulate


def _local(config: StrataConfig, **privacy: object) -> StrataConfig:
    overrides = {f"privacy.{k.replace('_', '-')}": v for k, v in privacy.items()}
    return config.replace({"privacy.mode": "local", **overrides})


def _budget(config: StrataConfig, ledger: Ledger | None = None) -> ClientBudget:
    return ClientBudget.from_config(config.privacy, ledger=ledger if ledger is not None else Ledger())


def test_default_delta_is_one_over_a_hundred_n() -> None:
    assert default_delta(943) == pytest.approx(1 / 94_300)
    assert 943 * default_delta(943) == pytest.approx(0.01)


@pytest.mark.parametrize("delta", [1 / 40, 0.05, 0.47])
def test_delta_at_or_above_one_over_n_is_refused_everywhere(tiny_config: StrataConfig, delta: float) -> None:
    with pytest.raises(ValueError, match="1/N"):
        tiny_config.replace({"privacy.delta": delta})  # the config (N = 40)
    with pytest.raises(ValueError, match="1/N"):
        ClientBudget(ledger=Ledger(), delta=delta, population=40)
    with pytest.raises(ValueError, match="1/N"):
        calibrate_noise_multiplier(target_epsilon=4.0, delta=delta, population=40, sample_rate=0.1, steps=10)


def test_delta_needs_a_public_population(tiny_config: StrataConfig) -> None:
    unset = tiny_config.replace({"privacy.population": 0})
    with pytest.raises(ValueError, match="privacy.population"):
        _ = unset.privacy.resolved_delta
    assert tiny_config.privacy.resolved_delta == pytest.approx(1 / (100 * 40))


def _with_extra_user(store: DeviceStore, donor: DeviceStore) -> DeviceStore:
    """The adjacent device: the same users and one more (all of that user's ratings)."""
    return DeviceStore(store.client_id, [*store.users, donor.users[0]], store.n_items, store.features)


def test_adding_a_user_changes_neither_q_nor_steps_nor_sigma(tiny_config: StrataConfig) -> None:
    """Under add/remove-one-user adjacency the device's mechanism must be the same on D and D + u:
    (q, steps, σ) from the public plan, never from the private count."""
    cfg = _local(tiny_config, target_epsilon=3.0)
    hub, other = simulation_store(cfg, 0), simulation_store(cfg, 1)
    bigger = _with_extra_user(hub, other)
    assert bigger.n_users == hub.n_users + 1
    weights = parameters_of(build_model(hub.n_items, cfg.model, hub.features, 0))
    ins = TrainIns(arrays=ArrayRecord(weights), server_round=1, run_id="r")
    entries = []
    for store in (hub, bigger):
        ledger = Ledger()
        reply = train_round(store, cfg, ins, _budget(cfg, ledger))
        assert reply.weights is not None
        (entry,) = ledger.entries
        entries.append((entry.noise_multiplier, entry.sample_rate, entry.steps))
    assert entries[0] == entries[1]
    # q = B / (N / hubs) = 8 / 10 and ⌊1/q⌋ steps: public quantities only.
    q, steps = local_plan(cfg)
    assert q == pytest.approx(0.8) and steps == 1
    assert entries[0][1:] == (q, steps)


def test_sigma_is_calibrated_for_a_device_in_every_round(tiny_config: StrataConfig) -> None:
    """With fraction-train < 1 a device may still be drawn every round: the target must hold then."""
    cfg = _local(tiny_config, target_epsilon=3.0).replace({"federation.fraction-train": 0.5, "federation.rounds": 4})
    store = simulation_store(cfg, 0)
    sigma = noise_multiplier_for(cfg, store, _budget(cfg), "r")
    q, steps = local_plan(cfg)
    every_round = [
        LedgerEntry.dp_sgd(
            noise_multiplier=sigma, sample_rate=q, steps=steps, max_grad_norm=1.0, run_id="r", round=r, client="0"
        )
        for r in range(1, 5)
    ]
    assert epsilon_of(every_round, cfg.privacy.resolved_delta) <= 3.0 * 1.001


def test_a_release_over_max_epsilon_is_refused_and_not_recorded(tiny_config: StrataConfig) -> None:
    cfg = _local(tiny_config, noise_multiplier=1.0, release_noise_multiplier=0.5, max_epsilon=1.0)
    store = simulation_store(cfg, 0)
    ledger = Ledger()
    reply = contribute(store, cfg, ReleaseIns(kind="popularity", server_round=0, run_id="r"), _budget(cfg, ledger))
    assert reply.refused and reply.total is None
    assert len(ledger) == 0
    assert "release" not in reply.to_record()  # nothing but the refusal leaves the device


def test_a_finished_run_is_not_resumed_into_new_releases(tiny_config: StrataConfig) -> None:
    """`make demo` twice: the second call shows the finished run and spends nothing."""
    cfg = _local(tiny_config, noise_multiplier=1.0).replace({"federation.census": True, "federation.rounds": 1})
    first = simulate(cfg)
    run = RunDir.of(cfg.run_dir)
    before = {p.name: p.read_text() for p in run.client_ledger_paths()}
    second = simulate(cfg)
    assert second["already_finished"] and second["run_id"] == first["run_id"]
    assert {p.name: p.read_text() for p in run.client_ledger_paths()} == before  # no census released again


def test_a_hub_plan_does_not_depend_on_its_size(tiny_config: StrataConfig) -> None:
    """The plan of a hub does not depend on how many users it holds: a hub with 1 user and one
    with 30 run the same number of steps at the same rate."""
    cfg = _local(tiny_config, noise_multiplier=1.0)
    store = simulation_store(cfg, 0)
    small = DeviceStore(store.client_id, store.users[:1], store.n_items, store.features)
    weights = parameters_of(build_model(store.n_items, cfg.model, store.features, 0))
    ins = TrainIns(arrays=ArrayRecord(weights), server_round=1, run_id="r")
    plans = set()
    for s in (small, store):
        ledger = Ledger()
        train_round(s, cfg, ins, _budget(cfg, ledger))
        plans.add((ledger.entries[0].sample_rate, ledger.entries[0].steps))
    assert len(plans) == 1
