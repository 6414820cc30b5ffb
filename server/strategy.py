"""Strata's aggregation strategy (Flower Message API).

Samples clients, validates every reply, averages client weights weighted by users or
examples, applies the server optimizer to the averaged update, and aggregates
evaluation sums and counts exactly (so the federated figure equals the central one).

With central DP (`privacy.mode` = `central` or `local+central`) training follows
DP-FedAvg instead (`central_dp.py`): secret Poisson sampling, replies are sums of
per-user clipped updates, the server adds Gaussian noise to their sum, divides by the
public expected count and records the release in its ledger — every round, even one
with no client sampled.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from shared.config import StrataConfig
from shared.metrics import MetricSums
from shared.training import update_norm

from .central_dp import CLIP_SLACK, CentralDP
from .server_optimizer import ServerOptimizer
from .update_check import InvalidUpdate, check_update

log = logging.getLogger(__name__)


@dataclass
class _Tally:
    """What happened to one round's replies."""

    accepted: int = 0
    failed: int = 0
    refused: int = 0
    users: float = 0.0
    loss_sum: float = 0.0


class StrataStrategy(Strategy):
    """FedAvg/FedAdam over validated client updates with exact evaluation aggregation."""

    def __init__(self, config: StrataConfig, rng: np.random.Generator, *, central: CentralDP | None = None) -> None:
        if config.privacy.central_dp and central is None:
            raise ValueError(
                f"privacy.mode = {config.privacy.mode!r} needs the server's DP-FedAvg mechanism: "
                "pass central=build_central_dp(...) to StrataStrategy."
            )
        if central is not None and not config.privacy.central_dp:
            raise ValueError(f"a central DP mechanism was given but privacy.mode is {config.privacy.mode!r}.")
        self.config = config
        self.fed = config.federation
        self.rng = rng
        """Seeded: fixed-size sampling without central DP, and evaluation sampling."""
        self.central = central
        self._run_id = ""
        self.optimizer = ServerOptimizer(self.fed.server_optimizer, self.fed.server_lr)
        self._current: OrderedDict[str, torch.Tensor] | None = None
        self.client_epsilon: dict[int, float] = {}
        """Latest ε each client reported (node id -> ε)."""
        self.rejected: list[str] = []

    def summary(self) -> None:
        if self.central is not None:
            log.info(
                "strategy: DP-FedAvg + %s, Poisson sampling q %.3f, update clip %g, noise multiplier %.4f",
                self.fed.server_optimizer,
                self.fed.fraction_train,
                self.central.clip,
                self.central.noise_multiplier,
            )
            return
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
        self._run_id = str(config["run-id"]) if "run-id" in config else ""
        config["server-round"] = server_round
        if self.central is not None:
            nodes = self.central.sample(sorted(grid.get_node_ids()))
        else:
            nodes = self._sample(grid, self.fed.fraction_train)
        return self._messages(nodes, arrays, config, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        assert self._current is not None, "configure_train must run before aggregate_train"
        if self.central is not None:
            return self._aggregate_central(server_round, replies)
        current = self._current
        # Streaming weighted sum: memory stays at a few models however many clients reply. In
        # float64, so the result does not depend on the order replies arrive in (FedAdam
        # turns float32 rounding noise in unchanged coordinates into full ±lr steps).
        acc: OrderedDict[str, torch.Tensor] = OrderedDict(
            (k, torch.zeros_like(v, dtype=torch.float64)) for k, v in current.items()
        )
        total = 0.0
        tally = _Tally()
        for weights, metrics in self._usable(server_round, replies, current, tally):
            weight = float(metrics["num-users" if self.fed.weighted_by == "users" else "num-examples"])
            for k, v in weights.items():
                acc[k].add_(v, alpha=weight)
            total += weight
        record = self._record(tally)
        accepted = tally.accepted
        if accepted < self.fed.min_train_clients or total <= 0:
            log.warning(
                "round %d skipped: %d usable replies (< min-train-clients %d)",
                server_round,
                accepted,
                self.fed.min_train_clients,
            )
            return None, record
        delta = OrderedDict((k, acc[k].div_(total).sub_(v).to(v.dtype)) for k, v in current.items())
        new = self.optimizer.step(current, delta)
        return ArrayRecord(new), record

    def _aggregate_central(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord, MetricRecord]:
        """DP-FedAvg: sum the clipped per-user updates, add noise, divide by the public
        expected count, record the release, apply the server optimizer. Never skipped."""
        assert self._current is not None and self.central is not None
        current, central = self._current, self.central
        acc: OrderedDict[str, torch.Tensor] = OrderedDict(
            (k, torch.zeros_like(v, dtype=torch.float64)) for k, v in current.items()
        )
        tally = _Tally()

        def within_clip(update: OrderedDict[str, torch.Tensor], metrics: MetricRecord) -> None:
            n_users = float(metrics["num-users"])
            norm = update_norm(update)
            if norm > n_users * central.clip * (1 + CLIP_SLACK) + 1e-6:
                raise InvalidUpdate(
                    f"clipped update sum has norm {norm:.4g} > num-users {n_users:g} × update-clip {central.clip:g}"
                )

        for update, _ in self._usable(server_round, replies, current, tally, extra_check=within_clip):
            for k, v in update.items():
                acc[k].add_(v)
        noisy = OrderedDict((k, v.to(current[k].dtype)) for k, v in central.noisy_mean(acc).items())
        central.record(server_round=server_round, run_id=self._run_id)  # durable before the release
        new = self.optimizer.step(current, noisy)
        if tally.accepted == 0:
            log.info("round %d: no update from any sampled client; released noise only", server_round)
        record = self._record(tally)
        record["central-epsilon"] = central.epsilon()
        return ArrayRecord(new), record

    def _usable(
        self,
        server_round: int,
        replies: Iterable[Message],
        current: OrderedDict[str, torch.Tensor],
        tally: _Tally,
        extra_check: Callable[[OrderedDict[str, torch.Tensor], MetricRecord], None] | None = None,
    ) -> Iterator[tuple[OrderedDict[str, torch.Tensor], MetricRecord]]:
        """The replies whose update may be aggregated; failures, refusals and invalid updates
        are counted in `tally` and logged, never averaged."""
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                tally.failed += 1
                log.warning("round %d: client %d failed: %s", server_round, node, msg.error.reason)
                continue
            metrics = msg.content["metrics"]
            self.client_epsilon[node] = float(metrics["epsilon"])
            if int(metrics["refused"]):
                tally.refused += 1
                continue
            update = msg.content["arrays"].to_torch_state_dict()
            try:
                check_update(update, current)
                if extra_check is not None:
                    extra_check(update, metrics)
            except InvalidUpdate as exc:
                tally.failed += 1
                self.rejected.append(f"round {server_round}, node {node}: {exc}")
                log.warning("round %d: rejected update from node %d: %s", server_round, node, exc)
                continue
            tally.accepted += 1
            tally.users += float(metrics["num-users"])
            tally.loss_sum += float(metrics["train-loss"]) * float(metrics["num-users"])
            yield update, metrics

    def _record(self, tally: _Tally) -> MetricRecord:
        return MetricRecord(
            {
                "clients": tally.accepted,
                "failed": tally.failed,
                "refused": tally.refused,
                "users": tally.users,
                "train-loss": tally.loss_sum / tally.users if tally.users else float("nan"),
                "epsilon": max(self.client_epsilon.values(), default=0.0),
            }
        )

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
