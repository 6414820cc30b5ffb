"""Central DP (user-level DP-FedAvg): sampling, clipping, noise, ledger, budget, report."""

from __future__ import annotations

import json
from typing import Any

import dataclasses
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import DirectGrid, Nodes, reply_to
from flwr.app import ArrayRecord, ConfigRecord, Message

import client.trainer as trainer
from client.budget import ClientBudget
from client.rounds import train_round
from client.store import simulation_store
from conftest import make_config
from server.central_dp import (
    CentralDP,
    accounted_sample_rate,
    build_central_dp,
    expected_count,
)
from server.dp_strategy import CentralDPStrategy
from server.federation import build_federation, run_federation
from server.privacy_report import write_privacy_report
from server.server_optimizer import ServerOptimizer
from server.strategy import FedAvgStrategy
from shared.config import StrataConfig
import shared.training as training
from shared.model import StrataModel, build_model
from shared.privacy.accounting import default_delta, epsilon_of
from shared.privacy.ledger import Ledger, LedgerEntry
from shared.protocol import TrainIns, TrainRes
from shared.run_dir import RunDir
from shared.metrics import ORACLE_LABEL
from shared.training import update_norm
from simulation.oracle import OracleEvaluation
from simulation.simulate import simulate


def _central(*, z: float = 1.0, clip: float = 1.0, q: float = 0.5, n_users: int = 50) -> CentralDP:
    return CentralDP(
        clip=clip, noise_multiplier=z, fraction=q, accounted_rate=q, expected_users=q * n_users,
        ledger=Ledger(), delta=1e-4,
    )


def _strategy(central: CentralDP, q: float) -> CentralDPStrategy:
    inner = FedAvgStrategy(optimizer=ServerOptimizer("fedavg"), rng=np.random.default_rng(0), fraction_train=q)
    return CentralDPStrategy(inner, central)


def _reply(request: Message, update: dict[str, torch.Tensor]) -> Message:
    return reply_to(request, TrainRes(weights=update, epsilon=0.0).to_record())


def _train_ins(weights: dict[str, torch.Tensor], *, server_round: int = 1, run_id: str = "r") -> TrainIns:
    return TrainIns(arrays=ArrayRecord(OrderedDict(weights)), server_round=server_round, run_id=run_id)


def _budget(config: StrataConfig, ledger: Ledger) -> ClientBudget:
    return ClientBudget.from_config(config.privacy, ledger=ledger)


# ------------------------------------------------------------------------- sampling


def test_poisson_sampling_includes_each_node_with_probability_q() -> None:
    q, nodes, draws = 0.1, list(range(50)), 2000
    central = _central(q=q)
    counts = np.zeros(len(nodes))
    sizes = []
    for _ in range(draws):
        picked = central.sample(nodes)
        sizes.append(len(picked))
        counts[picked] += 1
    n = draws * len(nodes)
    # Total inclusions ~ Binomial(100000, 0.1): mean 10000, sd ≈ 94.9; 5 sd is a 1-in-3.5-million miss.
    assert abs(counts.sum() - n * q) <= 5 * math.sqrt(n * q * (1 - q))
    # Every node on its own ~ Binomial(2000, 0.1): mean 200, sd ≈ 13.4 (Bonferroni over 50 nodes at 5 sd).
    assert np.all(np.abs(counts - draws * q) <= 5 * math.sqrt(draws * q * (1 - q)))
    # Poisson, not fixed-size: the sample size varies, empty samples included (P = 0.9^50 ≈ 0.5%).
    assert len(set(sizes)) > 5 and min(sizes) == 0


def test_sampling_is_secret_not_replayed_from_the_seed() -> None:
    nodes = Nodes(range(64))
    picks = []
    for _ in range(2):
        s = _strategy(_central(q=0.5), 0.5)
        msgs = s.configure_train(1, ArrayRecord(OrderedDict(w=torch.zeros(1))), ConfigRecord({"run-id": "t"}), nodes)
        picks.append([m.metadata.dst_node_id for m in msgs])
    assert picks[0] != picks[1]  # same seed, different samples (equal with probability 2^-64)


def test_a_hub_includes_each_user_independently_with_probability_q(tiny_config: StrataConfig) -> None:
    q, draws = 0.2, 2000
    store = simulation_store(tiny_config, 0)
    ids = [u.user for u in store.users]
    counts = dict.fromkeys(ids, 0)
    sizes = []
    for _ in range(draws):
        kept = trainer.sample_users(store, q)  # the hub's own OS-seeded coins
        assert kept.client_id == store.client_id and kept.n_items == store.n_items
        sizes.append(kept.n_users)
        for u in kept.users:
            counts[u.user] += 1
    n = draws * len(ids)
    total = sum(counts.values())
    assert abs(total - n * q) <= 5 * math.sqrt(n * q * (1 - q))
    # Every user on their own ~ Binomial(2000, 0.2): sd ≈ 17.9 (5 sd, Bonferroni over the hub's users).
    assert all(abs(c - draws * q) <= 5 * math.sqrt(draws * q * (1 - q)) for c in counts.values())
    # Poisson, not fixed-size, and independent: the sample size has the binomial's variance, not 0.
    m = len(ids)
    assert 0.6 * m * q * (1 - q) <= float(np.var(sizes)) <= 1.4 * m * q * (1 - q)
    assert trainer.sample_users(store, 1.0) is store  # q = 1: everyone, no coins


def test_a_hubs_user_sample_is_secret_not_replayed_from_the_seed(tiny_config: StrataConfig) -> None:
    store = simulation_store(tiny_config, 0)
    picks = [[u.user for u in trainer.sample_users(store, 0.5).users] for _ in range(4)]
    assert len({tuple(p) for p in picks}) > 1  # same config and seed; equal 4 times with probability 2^-30


def test_an_unsampled_round_sends_a_zero_sum(tiny_config: StrataConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config.replace({"privacy.mode": "central", "privacy.user-sample-rate": 0.5})
    store = simulation_store(cfg, 0)
    weights = trainer.parameters_of(build_model(store.n_items, cfg.model, store.features, 0))
    monkeypatch.setattr(trainer, "sample_users", lambda store, rate: dataclasses.replace(store, users=[]))
    result = train_round(store, cfg, _train_ins(weights), _budget(cfg, Ledger()))
    assert result.weights is not None and set(result.weights) == set(weights)
    assert all(not v.any() for v in result.weights.values())  # a reply like any other, nobody in it


# ---------------------------------------------------------------------------- noise


@pytest.mark.parametrize("with_clients", [False, True])
def test_noise_on_the_mean_has_std_z_s_over_q_n(with_clients: bool) -> None:
    z, clip, q, n_users, size = 2.0, 0.5, 0.2, 50, 40_000
    central = _central(z=z, clip=clip, q=q, n_users=n_users)
    strategy = _strategy(central, q)
    current = OrderedDict(w=torch.zeros(size))
    nodes = Nodes(list(range(n_users)) if with_clients else [])  # no nodes: an empty sample
    msgs = list(strategy.configure_train(1, ArrayRecord(current), ConfigRecord({"run-id": "r1"}), nodes))
    replies = [_reply(m, {"w": torch.zeros(size)}) for m in msgs]  # zero updates in
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None, "a central-DP round always releases"
    out32 = arrays.to_torch_state_dict()["w"]
    assert out32.dtype == torch.float32  # noise is drawn in float64, the model stays float32
    out = out32.double()
    expected = z * clip / (q * n_users)  # 0.1
    assert central.noise_std == pytest.approx(expected)
    # Sample std of 40000 normals: relative sd ≈ 1/sqrt(2·40000) = 0.35%; 3% is > 8 sd.
    assert out.std().item() == pytest.approx(expected, rel=0.03)
    assert abs(out.mean().item()) < 5 * expected / math.sqrt(size)
    # The release is in the ledger even with nobody sampled.
    (entry,) = central.ledger.entries
    assert (entry.mechanism, entry.round, entry.run_id, entry.client) == ("dp-fedavg", 1, "r1", "server")
    assert (entry.noise_multiplier, entry.sample_rate, entry.steps, entry.max_grad_norm) == (z, q, 1, clip)
    assert central.epsilon() == pytest.approx(epsilon_of([entry], 1e-4))
    assert "clients" not in metrics  # the secret sample's size is not logged


def test_noise_differs_run_to_run() -> None:
    a = _central().noisy_mean(OrderedDict(w=torch.zeros(100)))["w"]
    b = _central().noisy_mean(OrderedDict(w=torch.zeros(100)))["w"]
    assert not torch.equal(a, b)


def test_server_rejects_a_sum_above_the_public_users_bound_times_clip() -> None:
    central = CentralDP(
        clip=1.0, noise_multiplier=0.1, fraction=1.0, accounted_rate=1.0, expected_users=2.0,
        max_users_per_client=2, ledger=Ledger(), delta=1e-4,
    )
    strategy = _strategy(central, 1.0)
    current = ArrayRecord(OrderedDict(w=torch.zeros(2)))
    msgs = list(strategy.configure_train(1, current, ConfigRecord({"run-id": "r"}), Nodes([1, 2])))
    ok, too_big = torch.tensor([1.2, 1.6]), torch.tensor([3.0, 4.0])  # norms 2 and 5; the public bound is 2 users
    arrays, metrics = strategy.aggregate_train(1, [_reply(msgs[0], {"w": ok}), _reply(msgs[1], {"w": too_big})])
    assert arrays is not None and metrics is not None
    # Nothing about the secret sample is in the round's metrics: only ε.
    assert set(metrics.keys()) == {"epsilon"}
    assert strategy.rejected and "users-per-client bound 2" in strategy.rejected[0]
    # fedavg: new = 0 + (ok + noise) / (q·N = 2), noise std on the mean 0.05; with the
    # rejected sum it would be (ok + too_big) / 2 = [2.1, 2.8].
    assert torch.allclose(arrays.to_torch_state_dict()["w"], ok / 2, atol=0.35)


# ------------------------------------------------------------------------- clipping


def test_each_user_update_is_clipped_and_the_sum_is_bounded(
    tiny_config: StrataConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = 0.05
    # Two local epochs: each user trains a model copy of their own (the one-at-a-time path).
    cfg = tiny_config.replace(
        {"privacy.mode": "central", "privacy.update-clip": clip, "train.local-lr": 50.0, "train.local-epochs": 2}
    )
    store = simulation_store(cfg, 0)
    assert store.n_users > 1
    weights = trainer.parameters_of(build_model(store.n_items, cfg.model, store.features, 0))
    seen: list[tuple[float, float]] = []
    original = trainer.clip_update

    def spy(update: trainer.Weights, *, max_norm: float) -> tuple[trainer.Weights, float]:
        out, before = original(update, max_norm=max_norm)
        seen.append((before, update_norm(out)))
        return out, before

    monkeypatch.setattr(trainer, "clip_update", spy)
    result = train_round(store, cfg, _train_ins(weights), _budget(cfg, Ledger()))
    assert result.weights is not None
    assert len(seen) == store.n_users  # one model copy and one clip per user
    assert any(before > clip for before, _ in seen), "the test should force clipping"
    for before, after in seen:
        assert after <= clip * (1 + 1e-5)
        if before <= clip:
            assert after == pytest.approx(before)
    total = update_norm(result.weights)
    assert 0 < total <= store.n_users * clip * (1 + 1e-5)
    assert set(result.weights) == set(weights)


@pytest.mark.parametrize("clip", [0.05, 1e6])
def test_batched_clipped_step_sum_equals_the_per_user_loop(
    tiny_config: StrataConfig, monkeypatch: pytest.MonkeyPatch, clip: float
) -> None:
    """One local SGD step per user: the one-pass Opacus path gives the loop's Σ clip_S(update_u)."""
    cfg = tiny_config.replace(
        {"privacy.mode": "central", "privacy.update-clip": clip, "train.local-lr": 50.0, "model.dropout": 0.0}
    )
    store = simulation_store(cfg, 0)
    weights = trainer.parameters_of(build_model(store.n_items, cfg.model, store.features, 0))
    # The VAE's reparameterisation noise is the only randomness left: take it out of both paths.
    monkeypatch.setattr(torch, "randn_like", torch.zeros_like)
    loop = trainer._clipped_update_sum(store, cfg, weights, server_round=1, dp=None)
    batched = trainer.train_locally(store, cfg, weights, server_round=1, dp=None)
    assert (batched.sample_rate, batched.steps) == (1.0, 0)  # it took the one-pass path (no DP-SGD steps)
    assert batched.examples == loop.examples == store.n_train_ratings  # every user's ratings, in both
    for k, v in loop.weights.items():
        torch.testing.assert_close(batched.weights[k], v, rtol=1e-4, atol=1e-5)
    if clip < 1:
        assert update_norm(batched.weights) <= store.n_users * clip * (1 + 1e-5)


@pytest.mark.parametrize("clip", [0.05, 1e6])
def test_one_user_clipped_step_equals_the_batched_pass(
    tiny_config: StrataConfig, monkeypatch: pytest.MonkeyPatch, clip: float
) -> None:
    """A one-user device (the `device` topology) takes a plain step and clips it: the batched pass's update."""
    cfg = tiny_config.replace(
        {
            "federation.topology": "device",
            "privacy.mode": "central",
            "privacy.update-clip": clip,
            "train.local-lr": 50.0,
            "model.dropout": 0.0,
        }
    )
    store = simulation_store(cfg, 3)
    assert store.n_users == 1
    weights = trainer.parameters_of(build_model(store.n_items, cfg.model, store.features, 0))
    monkeypatch.setattr(torch, "randn_like", torch.zeros_like)
    one = trainer.train_locally(store, cfg, weights, server_round=1, dp=None)
    batched = trainer._clipped_step_sum(store, cfg, weights, server_round=1)
    assert one.examples == batched.examples == store.n_train_ratings
    for k, v in batched.weights.items():
        torch.testing.assert_close(one.weights[k], v, rtol=1e-4, atol=1e-5)
    assert update_norm(one.weights) <= clip * (1 + 1e-6)


@pytest.mark.parametrize("topology", ["hub", "device"])
def test_a_diverged_user_update_contributes_zero(
    tiny_config: StrataConfig, monkeypatch: pytest.MonkeyPatch, topology: str
) -> None:
    """A user whose local training ends in NaN adds 0 (a point of the S-ball): the reply stays finite
    and within its bound instead of carrying NaN, a value no mechanism produced."""
    clip = 0.05
    cfg = tiny_config.replace(
        {
            "federation.topology": topology,
            "privacy.mode": "central",
            "privacy.update-clip": clip,
            "train.local-lr": 50.0,
            "train.local-epochs": 2 if topology == "hub" else 1,  # the per-user loop; the one-user step
        }
    )
    store = simulation_store(cfg, 3 if topology == "device" else 0)
    weights = trainer.parameters_of(build_model(store.n_items, cfg.model, store.features, 0))
    calls: list[int] = []
    original = training.train_users

    def diverge_second(model: StrataModel, *args: Any, **kwargs: Any) -> Any:
        stats = original(model, *args, **kwargs)
        calls.append(1)
        if len(calls) == (2 if topology == "hub" else 1):
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))
        return stats

    monkeypatch.setattr(trainer, "train_users", diverge_second)
    out = trainer.train_locally(store, cfg, weights, server_round=1, dp=None)
    assert len(calls) == store.n_users
    assert all(bool(torch.isfinite(v).all()) for v in out.weights.values())
    total = update_norm(out.weights)
    if topology == "device":
        assert total == 0.0  # its only user diverged: nothing but zeros leaves the device
    else:
        assert 0 < total <= (store.n_users - 1) * clip * (1 + 1e-5)


def test_local_plus_central_writes_one_dp_sgd_entry_per_round(tiny_config: StrataConfig) -> None:
    cfg = tiny_config.replace({"privacy.mode": "local+central", "privacy.noise-multiplier": 1.0})
    store = simulation_store(cfg, 1)
    weights = trainer.parameters_of(build_model(store.n_items, cfg.model, store.features, 0))
    ledger = Ledger()
    result = train_round(store, cfg, _train_ins(weights), _budget(cfg, ledger))
    assert result.weights is not None
    (entry,) = ledger.entries
    # Each user trains their own copy alone: q = 1, one step per local epoch (parallel composition).
    assert (entry.mechanism, entry.sample_rate, entry.steps) == ("dp-sgd", 1.0, cfg.train.local_epochs)
    assert result.epsilon == pytest.approx(epsilon_of([entry], cfg.privacy.resolved_delta))
    assert update_norm(result.weights) <= store.n_users * cfg.privacy.update_clip * (1 + 1e-5)


# --------------------------------------------------------------------- config, build


def test_config_fields_and_validation(tmp_path: Path) -> None:
    cfg = make_config(privacy={"mode": "local+central", "update_clip": 0.5, "central_noise_multiplier": 1.2})
    assert cfg.privacy.local_dp and cfg.privacy.central_dp and cfg.privacy.update_clip == 0.5
    assert not make_config(privacy={"mode": "local"}).privacy.central_dp
    with pytest.raises(ValueError, match="update-clip"):
        make_config(privacy={"mode": "central", "update_clip": 0})
    with pytest.raises(ValueError, match="needs noise"):
        make_config(privacy={"mode": "central", "central_noise_multiplier": 0})
    # Central privacy always gets the server's DP-FedAvg mechanism around the strategy; without it, none.
    run = RunDir.of(tmp_path / "run")
    central = build_federation(make_config(privacy={"mode": "central", "population": 50}), run=run, run_id="r")
    assert isinstance(central.strategy, CentralDPStrategy) and central.central is central.strategy.mechanism
    plain = build_federation(make_config(privacy={"mode": "local", "population": 50}), run=run, run_id="r")
    assert isinstance(plain.strategy, FedAvgStrategy) and plain.central is None


def test_hub_sampling_is_not_counted_as_amplification() -> None:
    hub = make_config(privacy={"mode": "central"}, federation={"fraction_train": 0.5, "topology": "hub"})
    device = hub.replace({"federation.topology": "device"})
    assert accounted_sample_rate(hub) == 1.0 and accounted_sample_rate(device) == 0.5


def test_per_user_sampling_is_the_accounted_rate() -> None:
    hub = make_config(
        privacy={"mode": "central", "user_sample_rate": 0.2, "population": 1000},
        federation={"fraction_train": 0.5, "topology": "hub"},
    )
    # The server's choice of hubs is shared by a hub's users: only the per-user coin is claimed.
    assert accounted_sample_rate(hub) == 0.2
    assert expected_count(hub) == pytest.approx(0.5 * 0.2 * 1000)
    device = hub.replace({"federation.topology": "device"})  # both coins are the user's own
    assert accounted_sample_rate(device) == pytest.approx(0.1) and expected_count(device) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="user-sample-rate must be in"):
        make_config(privacy={"mode": "central", "user_sample_rate": 0.0})
    with pytest.raises(ValueError, match="central DP's per-user sampling"):
        make_config(privacy={"mode": "local", "user_sample_rate": 0.5})
    with pytest.raises(ValueError, match="accounted rate"):  # claiming less than the coins give
        CentralDP(clip=1, noise_multiplier=1, fraction=0.5, user_rate=0.4, accounted_rate=0.1,
                  expected_users=10, ledger=Ledger(), delta=1e-4)


def test_calibration_spends_the_central_target_over_the_planned_rounds(tmp_path: Path) -> None:
    cfg = make_config(
        privacy={"mode": "central", "central_target_epsilon": 3.0, "population": 1000},
        federation={"topology": "device", "fraction_train": 0.1, "rounds": 50},
    )
    central = build_central_dp(cfg, run_id="r", ledger_path=RunDir.of(tmp_path).central_ledger_path)
    assert central.expected_users == pytest.approx(100.0)
    entries = [central.entry(server_round=r, run_id="r") for r in range(1, 51)]
    assert 2.9 <= epsilon_of(entries, default_delta(1000)) <= 3.0


# ------------------------------------------------------------------ run and report


def test_budget_stops_the_run_early_and_exports_the_model(tiny_config: StrataConfig) -> None:
    cfg = tiny_config.replace(
        {"privacy.mode": "central", "privacy.central-noise-multiplier": 1.0, "federation.rounds": 5}
    )
    delta = default_delta(cfg.data.synthetic_users)
    entry = LedgerEntry.dp_fedavg(noise_multiplier=1.0, sample_rate=1.0, run_id="r", round=1, clip=1.0)
    one = epsilon_of([entry] * 2, delta)
    cfg = cfg.replace({"privacy.central-max-epsilon": one * 1.01})  # room for 2 of the 5 rounds
    summary = run_federation(DirectGrid(cfg), cfg, oracle=OracleEvaluation(cfg))
    assert summary["rounds"] == 2 and "central budget" in summary["stopped_early"]
    assert summary["central_epsilon"] <= cfg.privacy.central_max_epsilon
    run = RunDir.of(cfg.run_dir)
    assert [x["round"] for x in run.read_metrics()] == [1, 2]
    assert run.weights_path.exists()
    report, verified = write_privacy_report(run, verify=True)
    assert verified, [c for c in report["verification"]["checks"] if not c["passed"]]


@pytest.mark.parametrize(("mode", "user_rate"), [("central", 1.0), ("local+central", 1.0), ("central", 0.5)])
def test_simulation_in_central_mode_verifies(tiny_config: StrataConfig, mode: str, user_rate: float) -> None:
    cfg = tiny_config.replace(
        {"privacy.mode": mode, "privacy.update-clip": 0.5, "privacy.central-noise-multiplier": 0.8,
         "privacy.user-sample-rate": user_rate}
    )
    summary = simulate(cfg)
    run = RunDir.of(cfg.run_dir)
    lines = run.read_metrics()
    assert [x["round"] for x in lines] == [1, 2]
    central = Ledger.open(run.central_ledger_path)
    # Under `central` the server adds the noise of the final evaluation release (and records it);
    # under `local+central` each client does.
    evaluation = [("gaussian-sum", 2, "server")] if mode == "central" else []
    assert [(e.mechanism, e.round, e.client) for e in central.entries] == [
        ("dp-fedavg", 1, "server"),
        ("dp-fedavg", 2, "server"),
        *evaluation,
    ]
    delta = default_delta(cfg.data.synthetic_users)
    assert {e.sample_rate for e in central.entries if e.mechanism == "dp-fedavg"} == {user_rate}
    for line in lines:
        assert set(line["train"]) == {"epsilon"} and "sampled" not in line, line
        assert 0 < line["oracle"]["ndcg@100"] <= 1 and line["oracle"]["label"] == ORACLE_LABEL, line
        replay = epsilon_of([e for e in central.entries if e.round <= line["round"]], delta)
        assert line["central_epsilon"] == pytest.approx(replay, rel=1e-9)
    clients = [Ledger.open(p) for p in run.client_ledger_paths()]
    if mode == "central":
        assert not clients and lines[-1]["epsilon"] == 0.0
    else:
        assert len(clients) == 4
        assert lines[-1]["epsilon"] == pytest.approx(max(epsilon_of(c.entries, delta) for c in clients), rel=1e-9)
    assert summary["central_epsilon"] == pytest.approx(lines[-1]["central_epsilon"])
    report, verified = write_privacy_report(run, verify=True)
    assert verified, [c for c in report["verification"]["checks"] if not c["passed"]]
    assert report["guarantee"]["central_epsilon"] == pytest.approx(lines[-1]["central_epsilon"], rel=0.05)
    assert report["guarantee"]["epsilon"] >= report["guarantee"]["central_epsilon"] - 1e-9
    assert any(m["mechanism"] == "dp-fedavg" for m in report["mechanisms"])
    assert "DP-FedAvg" in run.privacy_report_html.read_text()
    if mode == "central" and user_rate == 1.0:
        _check_sampled_metrics(run, lines)


def _check_sampled_metrics(run: RunDir, lines: list[dict[str, Any]]) -> None:
    """The metrics log the central ε on a sample of rounds: a line without it verifies, the last
    line must have it, and a wrong logged figure is caught on whichever round it is."""

    def verified_with(edited: list[dict[str, Any]]) -> tuple[bool, str]:
        run.metrics_path.write_text("".join(json.dumps(x) + "\n" for x in edited))
        report, ok = write_privacy_report(run, verify=True)
        return ok, " ".join(c["message"] for c in report["verification"]["checks"] if not c["passed"])

    first, last = lines
    try:
        assert verified_with([{k: v for k, v in first.items() if k != "central_epsilon"}, last])[0]
        ok, why = verified_with([first, {k: v for k, v in last.items() if k != "central_epsilon"}])
        assert not ok and "the last line" in why, why
        ok, why = verified_with([{**first, "central_epsilon": first["central_epsilon"] * 0.8}, last])
        assert not ok and "round 1" in why, why
    finally:
        verified_with(lines)


def test_central_epsilon_is_logged_on_a_sample_of_rounds(tiny_config: StrataConfig) -> None:
    from server.federation import EPSILON_POINTS, _epsilon_due

    cfg = tiny_config.replace({"federation.rounds": 200, "federation.eval-every": 50})
    due = [r for r in range(1, 201) if _epsilon_due(r, cfg)]
    assert due == list(range(10, 201, 10)) and len(due) == EPSILON_POINTS  # eval rounds 50, 100 … are among them
    odd = tiny_config.replace({"federation.rounds": 45, "federation.eval-every": 7})
    due = [r for r in range(1, 46) if _epsilon_due(r, odd)]
    assert due[-1] == 45 and {7, 14, 42} <= set(due) and len(due) <= 45 // 2 + 45 // 7 + 1
    assert all(_epsilon_due(r, tiny_config) for r in range(1, tiny_config.federation.rounds + 1))
