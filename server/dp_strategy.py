"""User-level DP-FedAvg as a wrapper around a strategy (as Flower's
`DifferentialPrivacyServerSideFixedClipping` wraps one).

The wrapper owns what central DP changes: clients are sampled by the mechanism's secret
Poisson sampling, each reply must be a sum of per-user updates clipped on the device (its
norm at most the public users-per-client bound · S), the replies are summed, noised and
divided by the public expected count (`central_dp.CentralDP`), and the release is recorded
in the server's ledger — every round, even one with no client sampled. Nothing about the
secret sample (its size, who refused) goes into the round's metrics. Under `central` privacy
the server also adds the noise of each evaluation release (recorded first, refused past
`central-max-epsilon`). The wrapped strategy screens the replies and applies its server
optimizer to the noisy mean.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from shared.privacy.accounting import epsilon_of
from shared.privacy.ledger import SERVER
from shared.privacy.release import EVALUATION, gaussian_noise, release_bound, release_entry
from shared.protocol import RUN_ID, TrainIns, TrainRes
from shared.training import update_norm
from shared.update_check import check_clipped_sum, clip_bound

from .central_dp import CentralDP
from .strategy import FedAvgStrategy, Tally, Weights

log = logging.getLogger(__name__)


class CentralDPStrategy(Strategy):
    """DP-FedAvg (McMahan et al. 2018) around a `FedAvgStrategy`."""

    def __init__(
        self,
        strategy: FedAvgStrategy,
        mechanism: CentralDP,
        *,
        eval_noise_multiplier: float | None = None,
        central_max_epsilon: float = 0.0,
    ) -> None:
        self.strategy = strategy
        strategy.log_train = False  # the training sample is secret: not in the instruction log
        strategy.replies_are_updates = True  # sums of clipped user updates
        self.mechanism = mechanism
        self.eval_noise_multiplier = eval_noise_multiplier
        """z of the evaluation releases when the server adds their noise (None: the clients do)."""
        self.central_max_epsilon = central_max_epsilon
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
        # Every candidate independently with probability q: nodes, or in cohort mode devices.
        nodes = self.mechanism.sample(self.strategy.candidates(grid))
        return self.strategy.messages(nodes, content, MessageType.TRAIN, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Sum the clipped per-user updates, add noise, divide by the public expected count,
        record the release, apply the server optimizer. Never skipped."""
        current = self.strategy.current
        assert current is not None, "configure_train must run before aggregate_train"
        mechanism = self.mechanism
        users = mechanism.max_users_per_client
        acc: Weights = OrderedDict((k, torch.zeros_like(v, dtype=torch.float64)) for k, v in current.items())
        tally = Tally()

        def within_clip(update: Weights, reply: TrainRes) -> None:
            check_clipped_sum(update, users, mechanism.clip)

        if self.strategy.cohorts:  # each device's sum was checked in its cohort; the cohort's by the triangle
            for changes, accepted in self.strategy.cohort_changes(server_round, replies, tally):
                if update_norm(changes) > clip_bound(accepted * users, mechanism.clip):
                    raise RuntimeError(f"round {server_round}: a cohort's sum is longer than its devices' clip bound")
                for k, v in changes.items():
                    acc[k].add_(v)
        else:
            for update, _ in self.strategy.screen(server_round, replies, tally, extra_check=within_clip):
                for k, v in update.items():
                    acc[k].add_(v)
        noisy = OrderedDict((k, v.to(current[k].dtype)) for k, v in mechanism.noisy_mean(acc).items())
        mechanism.record(server_round=server_round, run_id=self._run_id)  # durable before the release
        new = self.strategy.apply(noisy)
        log.debug(  # the operator's console only: the sample is secret
            "round %d: %d sampled updates, %d refused, %d failed",
            server_round,
            tally.accepted,
            tally.refused,
            tally.failed,
        )
        # The central ε so far is the runner's to log (server/federation.py): one PLD per round is costly.
        record = MetricRecord({"epsilon": max(self.strategy.client_epsilon.values(), default=0.0)})
        return ArrayRecord(new), record

    def _eval_noise(self) -> tuple[float, float]:
        """(z, bound) of an evaluation release the server adds the noise to."""
        assert self.eval_noise_multiplier is not None
        return self.eval_noise_multiplier, release_bound(EVALUATION)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask clients for an evaluation release, as the wrapped strategy does; none when the server
        would add the noise and the release would take the central ε above central-max-epsilon."""
        if self.eval_noise_multiplier is not None and self.central_max_epsilon > 0:
            z, bound = self._eval_noise()
            entry = release_entry(
                noise_multiplier=z, bound=bound, run_id=self._run_id, server_round=server_round, holder=SERVER
            )
            mech = self.mechanism
            after = epsilon_of([*mech.ledger.entries, entry], mech.delta, mech.accountant)
            if after > self.central_max_epsilon:
                log.warning(
                    "round %d: evaluation release skipped: it would bring the central ε to %.3f > "
                    "privacy.central-max-epsilon %g",
                    server_round,
                    after,
                    self.central_max_epsilon,
                )
                return []
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Add up the evaluation releases; under `central` privacy add the noise here, recorded first."""
        if self.eval_noise_multiplier is None:
            return self.strategy.aggregate_evaluate(server_round, replies)
        total, answered, refused = self.strategy.collect_evaluation(server_round, replies)
        if not answered:
            return None
        z, bound = self._eval_noise()
        entry = release_entry(
            noise_multiplier=z, bound=bound, run_id=self._run_id, server_round=server_round, holder=SERVER
        )
        self.mechanism.ledger.append(entry)  # durable before the release
        noisy = total + gaussian_noise(total.shape[0], z * bound)
        return self.strategy.evaluation_record(np.asarray(noisy), z * bound, answered, refused)
