"""User-level DP-FedAvg as a wrapper around a strategy (as Flower's
`DifferentialPrivacyServerSideFixedClipping` wraps one).

The wrapper owns what central DP changes: clients are sampled by the mechanism's secret
Poisson sampling, each reply must be a sum of per-user updates clipped on the device (its
norm at most num-users · S), the replies are summed, noised and divided by the public
expected count (`central_dp.CentralDP`), and the release is recorded in the server's
ledger — every round, even one with no client sampled. The wrapped strategy screens the
replies, applies its server optimizer to the noisy mean and evaluates.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from shared.protocol import RUN_ID, TrainIns, TrainRes
from shared.training import update_norm

from .central_dp import CLIP_SLACK, CentralDP
from .strategy import FedAvgStrategy, Tally, Weights
from .update_check import InvalidUpdate

log = logging.getLogger(__name__)


class CentralDPStrategy(Strategy):
    """DP-FedAvg (McMahan et al. 2018) around a `FedAvgStrategy`."""

    def __init__(self, strategy: FedAvgStrategy, mechanism: CentralDP) -> None:
        self.strategy = strategy
        self.mechanism = mechanism
        self._run_id = ""

    @property
    def client_epsilon(self) -> dict[int, float]:
        """The latest ε each client reported (the wrapped strategy's record)."""
        return self.strategy.client_epsilon

    @property
    def rejected(self) -> list[str]:
        """Why updates were rejected, one line each (the wrapped strategy's record)."""
        return self.strategy.rejected

    def state_dict(self) -> dict[str, Any]:
        """Return the wrapped strategy's state (the mechanism's sampling and noise are secret: no state)."""
        return {"strategy": self.strategy.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the wrapped strategy from `state_dict()`."""
        self.strategy.load_state_dict(state["strategy"])

    def summary(self) -> None:
        """Log the mechanism's parameters."""
        log.info(
            "strategy: DP-FedAvg + %s, Poisson sampling q %.3f, update clip %g, noise multiplier %.4f",
            self.strategy.optimizer.kind,
            self.mechanism.fraction,
            self.mechanism.clip,
            self.mechanism.noise_multiplier,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask the clients the mechanism samples (secret Poisson sampling) to train."""
        self.strategy.current = arrays.to_torch_state_dict()
        self._run_id = str(config[RUN_ID]) if RUN_ID in config else ""
        content = TrainIns(arrays=arrays, server_round=server_round, run_id=self._run_id).to_record()
        nodes = self.mechanism.sample(sorted(grid.get_node_ids()))
        return self.strategy.messages(nodes, content, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Sum the clipped per-user updates, add noise, divide by the public expected count,
        record the release, apply the server optimizer. Never skipped."""
        current = self.strategy.current
        assert current is not None, "configure_train must run before aggregate_train"
        mechanism = self.mechanism
        acc: Weights = OrderedDict((k, torch.zeros_like(v, dtype=torch.float64)) for k, v in current.items())
        tally = Tally()

        def within_clip(update: Weights, reply: TrainRes) -> None:
            norm = update_norm(update)
            if norm > reply.num_users * mechanism.clip * (1 + CLIP_SLACK) + 1e-6:
                raise InvalidUpdate(
                    f"clipped update sum has norm {norm:.4g} > num-users {reply.num_users} × "
                    f"update-clip {mechanism.clip:g}"
                )

        for update, _ in self.strategy.screen(server_round, replies, tally, extra_check=within_clip):
            for k, v in update.items():
                acc[k].add_(v)
        noisy = OrderedDict((k, v.to(current[k].dtype)) for k, v in mechanism.noisy_mean(acc).items())
        mechanism.record(server_round=server_round, run_id=self._run_id)  # durable before the release
        new = self.strategy.apply(noisy)
        if tally.accepted == 0:
            log.info("round %d: no update from any sampled client; released noise only", server_round)
        record = self.strategy.record(tally)
        record["central-epsilon"] = mechanism.epsilon()
        return ArrayRecord(new), record

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask clients to evaluate, as the wrapped strategy does."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Aggregate the evaluation sums, as the wrapped strategy does."""
        return self.strategy.aggregate_evaluate(server_round, replies)
