"""Strata's aggregation strategy (Flower Message API).

Samples clients, validates every reply, averages client weights weighted by users or
examples, applies the server optimizer to the averaged update, and aggregates
evaluation sums and counts exactly (so the federated figure equals the central one).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from shared.config import StrataConfig
from shared.metrics import MetricSums

from .server_optimizer import ServerOptimizer
from .update_check import InvalidUpdate, check_update

log = logging.getLogger(__name__)


class StrataStrategy(Strategy):
    """FedAvg/FedAdam over validated client updates with exact evaluation aggregation."""

    def __init__(self, config: StrataConfig, rng: np.random.Generator) -> None:
        self.config = config
        self.fed = config.federation
        self.rng = rng
        self.optimizer = ServerOptimizer(self.fed.server_optimizer, self.fed.server_lr)
        self._current: OrderedDict[str, torch.Tensor] | None = None
        self.client_epsilon: dict[int, float] = {}
        """Latest ε each client reported (node id -> ε)."""
        self.rejected: list[str] = []

    def summary(self) -> None:
        log.info(
            "strategy: %s, fraction-train %.3f, min-train-clients %d, weighted by %s",
            self.fed.server_optimizer,
            self.fed.fraction_train,
            self.fed.min_train_clients,
            self.fed.weighted_by,
        )

    def _sample(self, grid: Grid, fraction: float) -> list[int]:
        nodes = sorted(grid.get_node_ids())
        k = max(1, int(round(len(nodes) * fraction)))
        picked = self.rng.choice(len(nodes), size=min(k, len(nodes)), replace=False)
        return [nodes[i] for i in sorted(picked.tolist())]

    def _messages(self, nodes: list[int], arrays: ArrayRecord, config: ConfigRecord, kind: str) -> list[Message]:
        record = RecordDict({"arrays": arrays, "config": config})
        return [Message(content=record, message_type=kind, dst_node_id=n) for n in nodes]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._current = arrays.to_torch_state_dict()
        config["server-round"] = server_round
        return self._messages(self._sample(grid, self.fed.fraction_train), arrays, config, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        assert self._current is not None, "configure_train must run before aggregate_train"
        current = self._current
        # Streaming weighted sum: memory stays at two models however many clients reply.
        acc: OrderedDict[str, torch.Tensor] = OrderedDict((k, torch.zeros_like(v)) for k, v in current.items())
        total = 0.0
        accepted = failed = refused = 0
        loss_sum = users = 0.0
        for msg in replies:
            if msg.has_error():
                failed += 1
                log.warning("round %d: client %d failed: %s", server_round, msg.metadata.src_node_id, msg.error.reason)
                continue
            metrics = msg.content["metrics"]
            self.client_epsilon[msg.metadata.src_node_id] = float(metrics["epsilon"])
            if int(metrics["refused"]):
                refused += 1
                continue
            weights = msg.content["arrays"].to_torch_state_dict()
            try:
                check_update(weights, current)
            except InvalidUpdate as exc:
                failed += 1
                self.rejected.append(f"round {server_round}, node {msg.metadata.src_node_id}: {exc}")
                log.warning("round %d: rejected update from node %d: %s", server_round, msg.metadata.src_node_id, exc)
                continue
            weight = float(metrics["num-users" if self.fed.weighted_by == "users" else "num-examples"])
            for k, v in weights.items():
                acc[k].add_(v, alpha=weight)
            total += weight
            accepted += 1
            loss_sum += float(metrics["train-loss"]) * float(metrics["num-users"])
            users += float(metrics["num-users"])
        record = MetricRecord(
            {
                "clients": accepted,
                "failed": failed,
                "refused": refused,
                "users": users,
                "train-loss": loss_sum / users if users else float("nan"),
                "epsilon": max(self.client_epsilon.values(), default=0.0),
            }
        )
        if accepted < self.fed.min_train_clients or total <= 0:
            log.warning(
                "round %d skipped: %d usable replies (< min-train-clients %d)",
                server_round,
                accepted,
                self.fed.min_train_clients,
            )
            return None, record
        delta = OrderedDict((k, acc[k].div_(total).sub_(v)) for k, v in current.items())
        new = self.optimizer.step(current, delta)
        return ArrayRecord(new), record

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        config["server-round"] = server_round
        return self._messages(self._sample(grid, self.fed.fraction_evaluate), arrays, config, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        total, answered = MetricSums(), 0
        for msg in replies:
            if msg.has_error():
                log.warning("round %d: evaluation failed on node %d: %s", server_round, msg.metadata.src_node_id, msg.error.reason)
                continue
            m = msg.content["metrics"]
            total = total + MetricSums.from_dict({k: m[k] for k in MetricSums().to_dict()})
            answered += 1
        if not answered:
            return None
        return MetricRecord({**total.to_dict(), **total.means(), "clients": answered})
