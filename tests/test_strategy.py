"""Aggregation by hand: equal-weight FedAvg, FedAdam's first step, rejected and skipped rounds,
and evaluation releases summed into noisy means."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import pytest
import torch
from fakes import Nodes, reply_to
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from server.server_optimizer import ServerOptimizer
from server.strategy import FedAvgStrategy
from shared.protocol import EvaluateRes, TrainRes


def _reply(request: Message, weights: dict[str, torch.Tensor] | None, eps: float = 0.0) -> Message:
    res = TrainRes(weights=weights, epsilon=eps, reason="" if weights is not None else "policy: test")
    return reply_to(request, res.to_record())


def _strategy(**options: Any) -> FedAvgStrategy:
    return FedAvgStrategy(optimizer=ServerOptimizer("fedavg"), rng=np.random.default_rng(0), **options)


def _round(
    strategy: FedAvgStrategy,
    current: dict[str, torch.Tensor],
    client_weights: list[dict[str, torch.Tensor] | None],
) -> tuple[ArrayRecord | None, MetricRecord | None]:
    arrays = ArrayRecord(OrderedDict(current))
    msgs = list(strategy.configure_train(1, arrays, ConfigRecord({"run-id": "t"}), Nodes([1, 2, 3])))
    assert [m.metadata.dst_node_id for m in msgs] == [1, 2, 3]
    replies = [_reply(m, w) for m, w in zip(msgs, client_weights, strict=True)]
    return strategy.aggregate_train(1, replies)


def test_fedavg_is_the_equal_weight_average() -> None:
    current = {"w": torch.zeros(2)}
    arrays, metrics = _round(
        _strategy(),
        current,
        [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}, None],
    )
    # ([1,2] + [3,6]) / 2 = [2, 4]: no private count weights a client; the refusing one counts for nothing.
    assert arrays is not None and metrics is not None
    assert torch.allclose(arrays.to_torch_state_dict()["w"], torch.tensor([2.0, 4.0]))
    assert dict(metrics) == {"clients": 2, "failed": 0, "refused": 1, "epsilon": 0.0}


def test_evaluation_releases_add_up_to_noisy_means_with_their_std() -> None:
    strategy = _strategy(client_eval_noise_std=0.5)
    arrays = ArrayRecord(OrderedDict(w=torch.zeros(1)))
    msgs = list(strategy.configure_evaluate(3, arrays, ConfigRecord(), Nodes([1, 2])))
    # Two clients' sums of (has-positive, ndcg, recall, sq-err, abs-err, rated) vectors.
    parts = [np.array([4.0, 1.0, 2.0, 0.1, 0.2, 2.0]), np.array([6.0, 2.0, 2.0, 0.3, 0.2, 2.0])]
    replies = [reply_to(m, EvaluateRes(total=t, epsilon=0.1).to_record()) for m, t in zip(msgs, parts, strict=True)]
    record = strategy.aggregate_evaluate(3, replies)
    assert record is not None
    assert record["ndcg@100"] == pytest.approx(3.0 / 10.0) and record["recall@20"] == pytest.approx(0.4)
    assert record["rmse"] == pytest.approx(4.0 * np.sqrt(0.4 / 4.0))  # span 4 · √(Σsq-err / Σrated)
    assert record["mae"] == pytest.approx(4.0 * 0.4 / 4.0)
    assert record["noise-std"] == pytest.approx(0.5 * np.sqrt(2))  # each client's noise, in quadrature
    assert record["ndcg@100-std"] == pytest.approx(0.5 * np.sqrt(2) * np.sqrt(1 + 0.09) / 10.0)
    assert record["clients"] == 2 and strategy.client_epsilon == {1: 0.1, 2: 0.1}


def test_nan_update_is_rejected_not_averaged() -> None:
    current = {"w": torch.zeros(2)}
    arrays, metrics = _round(
        _strategy(),
        current,
        [
            {"w": torch.tensor([1.0, 1.0])},
            {"w": torch.tensor([float("nan"), 0.0])},
            {"w": torch.ones(3)},
        ],
    )
    assert arrays is not None and metrics is not None
    assert torch.allclose(arrays.to_torch_state_dict()["w"], torch.tensor([1.0, 1.0]))
    assert metrics["failed"] == 2


def test_round_with_too_few_replies_is_skipped() -> None:
    replies: list[dict[str, torch.Tensor] | None] = [{"w": torch.ones(1)}, None, None]
    arrays, metrics = _round(_strategy(min_train_clients=2), {"w": torch.zeros(1)}, replies)
    assert arrays is None and metrics is not None and metrics["clients"] == 1


def test_fedadam_first_step_moves_each_weight_by_lr() -> None:
    opt = ServerOptimizer("fedadam", lr=0.01)
    new = opt.step(OrderedDict(w=torch.zeros(3)), OrderedDict(w=torch.tensor([5.0, -0.1, 2.0])))
    assert torch.allclose(new["w"], torch.tensor([0.01, -0.01, 0.01]), atol=1e-6)


def test_fraction_sampling_is_seeded() -> None:
    s1, s2 = _strategy(fraction_train=0.5), _strategy(fraction_train=0.5)
    nodes = Nodes(range(100, 120))
    a = [
        m.metadata.dst_node_id
        for m in s1.configure_train(1, ArrayRecord(OrderedDict(w=torch.zeros(1))), ConfigRecord(), nodes)
    ]
    b = [
        m.metadata.dst_node_id
        for m in s2.configure_train(1, ArrayRecord(OrderedDict(w=torch.zeros(1))), ConfigRecord(), nodes)
    ]
    assert a == b and len(a) == 10


def test_bad_server_optimizer_is_refused() -> None:
    with pytest.raises(ValueError, match="server optimizer"):
        ServerOptimizer("sgd")


def test_server_waits_for_clients_before_round_one() -> None:
    """Flower starts the ServerApp while SuperNodes still register: round 1 must wait for them."""
    from server.federation import _wait_for_clients

    class _Registering(Nodes):
        def __init__(self) -> None:
            super().__init__([])
            self.calls = 0

        def get_node_ids(self) -> list[int]:
            self.calls += 1
            return list(range(min(self.calls, 4)))

    grid = _Registering()
    assert _wait_for_clients(grid, 4, timeout_s=5) == 4
    assert grid.calls >= 4
    with pytest.raises(RuntimeError, match="min-available-clients"):
        _wait_for_clients(Nodes([1]), 3, timeout_s=0.3)
