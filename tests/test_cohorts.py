"""Cohort mode (simulation): a few Flower nodes run many virtual devices in turn, with every
device's privacy semantics unchanged.

The same small federation (40 one-user devices, every device sampled every round) runs on
Flower's engine with one node per device and with 3 cohort nodes: the devices' ledgers hold the
same releases (mechanism, round, σ, q, steps, clip), the rounds count the same devices, and
without DP the final model is the same. Refusals and rejections inside a cohort are counted per
device, and a real device refuses a cohort instruction.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict
from fakes import deliver

from client.client_app import build_client_app
from client.cohort import ChangeSum
from shared.config import StrataConfig
from shared.model import build_model
from shared.privacy.ledger import Ledger
from shared.protocol import CohortRes, TrainIns, cohort_ins
from shared.run_dir import RunDir
from shared.update_check import InvalidUpdate, change_within_bound, check_change_norm
from simulation.simulate import simulate

DEVICE_FEDERATION = {
    "federation.topology": "device",
    "federation.fraction-train": 1.0,
    "federation.fraction-evaluate": 1.0,
    "train.batch-size": 1,
}


def _ledgers(run: RunDir) -> dict[str, list[tuple[object, ...]]]:
    """Each device's releases, without what differs by construction (run id, signatures, chain)."""
    return {
        path.name: [
            (e.mechanism, e.round, e.noise_multiplier, e.sample_rate, e.steps, e.max_grad_norm, e.client)
            for e in Ledger.open(path).entries
        ]
        for path in run.client_ledger_paths()
    }


def _runs(config: StrataConfig, tmp_path: Path) -> tuple[RunDir, RunDir]:
    one = config.replace({"run.out": str(tmp_path / "per-device")})
    cohorts = config.replace({"run.out": str(tmp_path / "cohorts"), "federation.cohorts": 3})
    simulate(one)
    summary = simulate(cohorts)
    assert summary["clients"] == 40
    return RunDir.of(one.run_dir), RunDir.of(cohorts.run_dir)


def test_cohorts_keep_every_devices_ledger_and_count(tiny_config: StrataConfig, tmp_path: Path) -> None:
    config = tiny_config.replace(
        {
            **DEVICE_FEDERATION,
            "privacy.mode": "local",
            "privacy.target-epsilon": 4.0,
            "federation.eval-release": "final",
            "privacy.eval-noise-multiplier": 2.0,
        }
    )
    per_device, cohorts = _runs(config, tmp_path)
    ledgers = _ledgers(per_device)
    assert len(ledgers) == 40
    assert _ledgers(cohorts) == ledgers  # same releases, same σ calibrated from the same public plan
    expected = [("dp-sgd", 1), ("dp-sgd", 2), ("gaussian-sum", 2)]
    assert all([e[:2] for e in entries] == expected for entries in ledgers.values())
    for a, b in zip(per_device.read_metrics(), cohorts.read_metrics(), strict=True):
        assert a["train"]["clients"] == b["train"]["clients"] == 40
        assert a["epsilon"] == pytest.approx(b["epsilon"], rel=1e-12)
    last, reference = cohorts.read_metrics()[-1]["eval"], per_device.read_metrics()[-1]["eval"]
    assert last["clients"] == 40 and last["noise-std"] == pytest.approx(reference["noise-std"])


def test_cohorts_without_dp_train_the_same_model(tiny_config: StrataConfig, tmp_path: Path) -> None:
    config = tiny_config.replace({**DEVICE_FEDERATION, "federation.eval-release": "none"})
    per_device, cohorts = _runs(config, tmp_path)
    a, b = per_device.load_weights(), cohorts.load_weights()
    assert set(a) == set(b)
    for k in a:  # the same updates, summed in another order (changes in float32, weights in float64)
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_a_compact_transport_trains_the_same_model_on_one_node_per_device_and_in_cohorts(
    tiny_config: StrataConfig, tmp_path: Path
) -> None:
    # Each device's int8 change, rounded with its own seeded coins, decoded by the server (one node
    # per device) or by its cohort node: the same sums. And close to the float32 run's model.
    config = tiny_config.replace(
        {**DEVICE_FEDERATION, "federation.eval-release": "none", "federation.transport": "int8"}
    )
    per_device, cohorts = _runs(config, tmp_path)
    a, b = per_device.load_weights(), cohorts.load_weights()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    plain = tiny_config.replace(
        {**DEVICE_FEDERATION, "federation.eval-release": "none", "run.out": str(tmp_path / "f32")}
    )
    simulate(plain)
    c = RunDir.of(plain.run_dir).load_weights()
    drift = max(float((a[k] - c[k]).abs().max()) for k in a)
    assert 0 < drift < 0.05, drift  # rounded, not the same bits; but the same training


def test_a_cohort_counts_refusals_per_device_and_a_real_device_refuses_cohorts(
    tiny_config: StrataConfig, tmp_path: Path
) -> None:
    # Each device's own policy allows δ ≤ 1e-5, below the run's 1/(100·40): every one refuses, and says why.
    config = tiny_config.replace(
        {**DEVICE_FEDERATION, "privacy.mode": "local", "privacy.target-epsilon": 4.0, "device-policy.apply": True}
    )
    model = build_model(config.data.synthetic_items, config.model, None, seed=0)
    arrays = ArrayRecord({k: v.detach().clone() for k, v in model.named_parameters()})
    content = cohort_ins(TrainIns(arrays=arrays, server_round=1, run_id="r").to_record(), (0, 1, 2))
    app = build_client_app(config)
    context = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    reply = app(deliver(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=5)), context)
    assert not reply.has_error(), reply.error
    res = CohortRes.from_record(reply.content)
    assert [o.device for o in res.outcomes] == [0, 1, 2]
    assert all(o.outcome == "refused" and "max-delta" in o.reason for o in res.outcomes)
    assert res.changes is None and res.accepted == 0

    real = Context(run_id=1, node_id=6, node_config={"data-path": "x.csv"}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match="simulation only"):  # Flower turns it into an error reply
        app(deliver(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=6)), real)


def test_a_devices_model_owns_its_weights(tiny_config: StrataConfig) -> None:
    """`model_for` copies the received weights once: training the device's model changes neither
    them (shared by every device of a cohort) nor the process's template."""
    from client.store import simulation_store
    from client.trainer import _template, model_for, train_locally

    store = simulation_store(tiny_config, 0)
    other = build_model(store.n_items, tiny_config.model, None, seed=7)
    received = {k: v.detach().clone() for k, v in other.named_parameters()}
    kept = {k: v.clone() for k, v in received.items()}
    template = {k: v.detach().clone() for k, v in _template(store, tiny_config).named_parameters()}
    model = model_for(store, tiny_config, received)
    assert all(torch.equal(p, received[k]) for k, p in model.named_parameters())
    assert all(p.data_ptr() != received[k].data_ptr() for k, p in model.named_parameters())
    outcome = train_locally(store, tiny_config, received, server_round=1, dp=None)
    assert any(not torch.equal(outcome.weights[k], kept[k]) for k in kept)  # it trained
    assert all(torch.equal(received[k], kept[k]) for k in kept)
    assert all(torch.equal(p, template[k]) for k, p in _template(store, tiny_config).named_parameters())
    with pytest.raises(ValueError, match="has shape"):
        model_for(store, tiny_config, {**received, "enc_out.bias": torch.zeros(3)})


def test_cohort_sum_of_changes_screens_exactly_and_keeps_unchanged_coordinates_zero() -> None:
    gen = torch.Generator().manual_seed(0)
    current = OrderedDict(w=torch.randn(1000, 300, generator=gen), b=torch.randn(300, generator=gen))
    summed = ChangeSum(current, max_update_norm=1.0)
    accepted = []
    for scale in (0.3, 0.999999, 1.000001, 0.5):  # norms around the bound: the exact float64 decision
        step = torch.zeros(1000, 300)
        step[:10] = torch.randn(10, 300, generator=gen)
        step *= scale / torch.linalg.vector_norm(step.double()).item()
        weights = OrderedDict(w=current["w"] + step, b=current["b"].clone())
        try:
            check_change_norm(weights, current, 1.0)
            exact = True
        except InvalidUpdate:
            exact = False
        try:
            summed.add(weights)
            accepted.append(weights)
            assert exact, scale
        except InvalidUpdate:
            assert not exact, scale
    assert len(accepted) in (2, 3)  # 0.3 and 0.5 certainly; 0.999999 by the exact check's rounding
    assert summed.total is not None
    expected = sum((a["w"].double() - current["w"].double() for a in accepted), torch.zeros(1000, 300).double())
    torch.testing.assert_close(summed.total["w"].double(), expected, rtol=0, atol=1e-6)
    assert torch.count_nonzero(summed.total["w"][10:]) == 0 and torch.count_nonzero(summed.total["b"]) == 0
    # The float32 proof never claims a norm within its rounding of the bound, or a NaN.
    assert not change_within_bound({"w": torch.full((4,), 0.5)}, 1.0)  # norm exactly 1: decide exactly
    assert change_within_bound({"w": torch.full((4,), 0.49)}, 1.0)
    assert not change_within_bound({"w": torch.tensor([float("nan")])}, 1.0)


@pytest.mark.parametrize("bound", [1.0, 0.0])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_cohort_rejects_non_finite_weights_with_or_without_a_norm_bound(bound: float, bad: float) -> None:
    # With a bound, finiteness is proven by the change's float32 norm (not checked apart); a NaN or
    # ±Inf fails that proof and is then named. Without one, the values are checked directly.
    current = OrderedDict(w=torch.zeros(50, 20), b=torch.zeros(20))
    summed = ChangeSum(current, max_update_norm=bound)
    weights = OrderedDict(w=current["w"].clone(), b=current["b"].clone())
    weights["w"][3, 4] = bad
    with pytest.raises(InvalidUpdate, match="NaN or infinite"):
        summed.add(weights)
    assert summed.total is None  # nothing was added
    fine = OrderedDict(w=current["w"] + 0.001, b=current["b"].clone())
    summed.add(fine)
    assert summed.total is not None and torch.allclose(summed.total["w"], torch.full((50, 20), 0.001))


def test_central_dp_in_cohorts_samples_devices_and_sums_their_clipped_updates(
    tiny_config: StrataConfig, tmp_path: Path
) -> None:
    # Noise 1e-5 · S on the sum (RDP accounts it; a PLD of such a step would not fit in memory):
    # the two runs' models must agree as the non-private ones do.
    config = tiny_config.replace(
        {
            **DEVICE_FEDERATION,
            "federation.eval-release": "none",
            "privacy.mode": "central",
            "privacy.update-clip": 0.5,
            "privacy.central-noise-multiplier": 1e-5,
            "privacy.accountant": "rdp",
            "federation.server-optimizer": "fedavg",  # Adam would blow the noise up to ±lr where nothing changed
        }
    )
    per_device, cohorts = _runs(config, tmp_path)
    entries = [
        [
            (e.mechanism, e.round, e.noise_multiplier, e.sample_rate, e.client)
            for e in Ledger.open(r.central_ledger_path).entries
        ]
        for r in (per_device, cohorts)
    ]
    assert entries[0] == entries[1] == [("dp-fedavg", 1, 1e-5, 1.0, "server"), ("dp-fedavg", 2, 1e-5, 1.0, "server")]
    a, b = per_device.load_weights(), cohorts.load_weights()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
    assert [m["central_epsilon"] for m in per_device.read_metrics()] == [
        m["central_epsilon"] for m in cohorts.read_metrics()
    ]


def test_a_cohort_screens_each_devices_clipped_sum() -> None:
    current = OrderedDict(w=torch.zeros(3, 4))
    summed = ChangeSum(current, max_update_norm=0.0)
    summed.add_clipped(OrderedDict(w=torch.full((3, 4), 0.5 / 12**0.5)), users=1, clip=0.5)  # norm exactly S
    with pytest.raises(InvalidUpdate, match="users-per-client bound 1"):
        summed.add_clipped(OrderedDict(w=torch.full((3, 4), 0.6 / 12**0.5)), users=1, clip=0.5)
    summed.add_clipped(OrderedDict(w=torch.full((3, 4), 0.9 / 12**0.5)), users=2, clip=0.5)  # a hub of two users
    assert summed.total is not None
    torch.testing.assert_close(summed.total["w"], torch.full((3, 4), 1.4 / 12**0.5))


@pytest.mark.parametrize("mode", ["local", "central"])
def test_cohorts_run_the_popularity_prior_and_the_census_for_every_device(
    tiny_config: StrataConfig, tmp_path: Path, mode: str
) -> None:
    privacy = (
        {"privacy.mode": "local", "privacy.target-epsilon": 6.0}
        if mode == "local"
        else {"privacy.mode": "central", "privacy.update-clip": 0.5, "privacy.central-noise-multiplier": 1.0}
    )
    config = tiny_config.replace(
        {
            **DEVICE_FEDERATION,
            **privacy,
            "federation.eval-release": "none",
            "model.popularity-prior": True,
            "federation.census": True,
            "privacy.release-noise-multiplier": 2.0,
        }
    )
    per_device, cohorts = _runs(config, tmp_path)
    if mode == "local":  # each device noised and recorded both releases itself, in either mode
        ledgers = _ledgers(per_device)
        assert _ledgers(cohorts) == ledgers and len(ledgers) == 40
        assert all([e[:2] for e in entries][0] == ("gaussian-sum", 0) for entries in ledgers.values())
        assert all([e[:2] for e in entries][-1] == ("gaussian-sum", 3) for entries in ledgers.values())
    else:  # the server added the noise of both and recorded them
        central = [
            [(e.mechanism, e.round, e.noise_multiplier) for e in Ledger.open(r.central_ledger_path).entries]
            for r in (per_device, cohorts)
        ]
        assert central[0] == central[1]
        assert [c[:2] for c in central[1]] == [
            ("gaussian-sum", 0),
            ("dp-fedavg", 1),
            ("dp-fedavg", 2),
            ("gaussian-sum", 3),
        ]
    for run in (per_device, cohorts):
        census = run.read_census()
        assert (
            census is not None
            and census["clients"] == 40
            and census["failed_clients"] == census["refused_clients"] == 0
        )
