"""Strata's aggregation strategy (Flower Message API): FedAvg or FedAdam over screened replies.

Samples a fixed fraction of the clients (Flower nodes; in simulation's cohort mode, devices
that `cohorts` nodes run in turn), screens every reply (failures, refusals and
invalid updates are counted and logged, never averaged), averages the client weights with
equal weights (a client's user or example count is private: it never leaves the device),
applies the server optimizer to the averaged update, and adds up the clients' evaluation
releases into noisy means with their noise std. Central DP wraps this strategy
(`dp_strategy.py`), as Flower's `DifferentialPrivacyServerSideFixedClipping` wraps one.
"""

from __future__ import annotations


import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from shared.metrics import EVAL_FIELDS, release_means
from shared.protocol import (
    RUN_ID,
    CohortRes,
    EvaluateIns,
    EvaluateRes,
    ProtocolError,
    TrainIns,
    TrainRes,
    cohort_ins,
)

from .cohorts import cohort_outcomes, split_into_cohorts
from .instruction_log import InstructionLog, Kind, Outcome
from .server_optimizer import ServerOptimizer
from .replies import match_replies
from shared.update_check import InvalidUpdate, check_change_norm, check_update, received_update

log = logging.getLogger(__name__)

Weights = OrderedDict[str, torch.Tensor]
UpdateCheck = Callable[[Weights, TrainRes], None]


@dataclass
class Tally:
    """What happened to one round's replies."""

    accepted: int = 0
    failed: int = 0
    refused: int = 0


def _sum_of(shape: tuple[int, ...]) -> Callable[[CohortRes], str]:
    """Return a cohort reply check: its release sum (if any) has `shape` and finite values."""

    def check(res: CohortRes) -> str:
        if res.total is not None and (res.total.shape != shape or not np.all(np.isfinite(res.total))):
            return f"a cohort sum of shape {res.total.shape} (expected {shape}) or not finite"
        return ""

    return check


def _run_id(config: ConfigRecord) -> str:
    return str(config[RUN_ID]) if RUN_ID in config else ""


class FedAvgStrategy(Strategy):
    """FedAvg/FedAdam over validated client updates with exact evaluation aggregation."""

    def __init__(
        self,
        *,
        optimizer: ServerOptimizer,
        rng: np.random.Generator,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_clients: int = 1,
        rating_range: tuple[float, float] = (1.0, 5.0),
        client_eval_noise_std: float = 0.0,
        instructions: InstructionLog | None = None,
        max_update_norm: float = 0.0,
        cohorts: int = 0,
        devices: int = 0,
    ) -> None:
        if not 0 < fraction_train <= 1 or not 0 < fraction_evaluate <= 1:
            raise ValueError("The fractions of clients sampled should be in (0, 1].")
        if min_train_clients < 1:
            raise ValueError("min-train-clients should be at least 1.")
        if client_eval_noise_std < 0:
            raise ValueError("the clients' evaluation noise std must be >= 0.")
        if cohorts and devices < 1:
            raise ValueError("cohort mode needs the public number of devices.")
        self.optimizer = optimizer
        self.rng = rng
        """Seeded: fixed-size sampling of training and evaluation clients."""
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.min_train_clients = min_train_clients
        self.rating_range = rating_range
        self.max_update_norm = max_update_norm
        """Largest L2 norm of a reply's change to the global weights that is averaged (0: no bound)."""
        self.client_eval_noise_std = client_eval_noise_std
        """Std of the noise each client adds to its evaluation sum (0 when it adds none)."""
        self.instructions = instructions
        """The server's signed log of every instruction and its outcome (None: not kept)."""
        self.log_train = True
        """Whether training instructions are logged (not under central DP: the sample is secret)."""
        self.replies_are_updates = False
        """Whether a training reply is a sum of clipped updates, not weights (central DP)."""
        self._run_id = ""
        self.current: Weights | None = None
        """The global weights of the round in progress (set by `configure_train`)."""
        self.client_epsilon: dict[int, float] = {}
        """Latest ε each client reported (node id -> ε)."""
        self.rejected: list[str] = []
        self.outbox: list[Message] = []
        """The instructions of the current step (their ids are set when the grid sends them)."""
        self.cohorts = cohorts
        """Simulation: this many Flower nodes run the sampled devices in turn (0: one node per device)."""
        self.devices = devices
        """The public number of devices sampling chooses among in cohort mode."""
        self.cohort_of_node: dict[int, tuple[int, ...]] = {}
        """Cohort mode: the devices each node of the current step runs."""

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Return what a checkpoint needs to resume this strategy exactly."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "client_epsilon": dict(self.client_epsilon),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state of `state_dict()`."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.client_epsilon = dict(state["client_epsilon"])

    def summary(self) -> None:
        """Log the strategy's settings."""
        log.info(
            "strategy: %s, fraction-train %.3f, min-train-clients %d, equal client weights",
            self.optimizer.kind,
            self.fraction_train,
            self.min_train_clients,
        )

    # ------------------------------------------------------------------ building blocks

    def candidates(self, grid: Grid) -> list[int]:
        """Return what sampling chooses among: the connected Flower nodes, or in cohort mode the devices."""
        return list(range(self.devices)) if self.cohorts else sorted(grid.get_node_ids())

    def sample(self, grid: Grid, fraction: float) -> list[int]:
        """Sample round(fraction · N) connected nodes, or devices in cohort mode (at least one)."""
        nodes = self.candidates(grid)
        k = max(1, int(round(len(nodes) * fraction)))
        picked = self.rng.choice(len(nodes), size=min(k, len(nodes)), replace=False)
        return [nodes[i] for i in sorted(picked.tolist())]

    def _log(self, server_round: int, kind: Kind, node: int, device: str, outcome: Outcome) -> None:
        if self.instructions is not None:
            self.instructions.append(
                run_id=self._run_id, server_round=server_round, kind=kind, node=node, device=device, outcome=outcome
            )

    def _batched_log(self) -> AbstractContextManager[None]:
        """Instructions logged within are written with one fsync on leaving (`InstructionLog.batch`)."""
        return self.instructions.batch() if self.instructions is not None else nullcontext()

    def _log_train(self, server_round: int, node: int, device: str, outcome: Outcome) -> None:
        if self.log_train:
            self._log(server_round, "train", node, device, outcome)

    def messages(self, nodes: list[int], content: RecordDict, kind: str, grid: Grid | None = None) -> list[Message]:
        """Build one message of `kind` with `content` for each node, kept as the outbox replies are matched
        to. In cohort mode `nodes` are devices, split into contiguous cohorts, one per Flower node of `grid`."""
        if not self.cohorts:
            self.outbox = [Message(content=content, message_type=kind, dst_node_id=n) for n in nodes]
            return self.outbox
        assert grid is not None, "cohort mode needs the grid's nodes"
        self.cohort_of_node = split_into_cohorts(nodes, list(grid.get_node_ids()), self.cohorts)
        self.outbox = [
            Message(content=cohort_ins(content, devices), message_type=kind, dst_node_id=w)
            for w, devices in self.cohort_of_node.items()
        ]
        return self.outbox

    def _cohort_replies(
        self,
        server_round: int,
        kind: Kind,
        replies: Iterable[Message],
        tally: Tally,
        check: Callable[[CohortRes], str] | None = None,
    ) -> Iterator[CohortRes]:
        """Cohort mode: yield each usable cohort reply after counting, logging and noting ε of every
        device in it (`cohorts.cohort_outcomes`: a failed node, or one failing `check`, fails them all)."""
        pairs = match_replies(self.outbox, replies)
        for res, outcomes in cohort_outcomes(pairs, self.cohort_of_node, what=f"round {server_round}", check=check):
            for o in outcomes:
                if res is not None:
                    self.client_epsilon[o.device] = o.epsilon
                if o.outcome == "accepted":
                    tally.accepted += 1
                elif o.outcome == "refused":
                    tally.refused += 1
                    log.info("round %d: device %d refused: %s", server_round, o.device, o.reason)
                else:
                    tally.failed += 1
                    if res is not None:
                        self.rejected.append(f"round {server_round}, device {o.device}: {o.reason}")
                        log.warning("round %d: device %d %s: %s", server_round, o.device, o.outcome, o.reason)
                self._log_step(kind, server_round, o.device, o.key, o.outcome)
            if res is not None:
                yield res

    def _log_step(self, kind: Kind, server_round: int, node: int, device: str, outcome: Outcome) -> None:
        if kind == "train":
            self._log_train(server_round, node, device, outcome)
        else:
            self._log(server_round, kind, node, device, outcome)

    def cohort_changes(
        self, server_round: int, replies: Iterable[Message], tally: Tally
    ) -> Iterator[tuple[Weights, int]]:
        """Cohort mode: yield each cohort's sum of its accepted devices' changes (their change from
        the global weights; under central DP their clipped update sums) and how many devices it holds."""
        current = self.current
        assert current is not None
        for res in self._cohort_replies(server_round, "train", replies, tally):
            if (res.changes is None) != (res.accepted == 0):
                raise RuntimeError(f"round {server_round}: a cohort's sum does not match its accepted devices")
            if res.changes is None:
                continue
            try:
                check_update(res.changes, current)  # names, shapes, dtypes, finite values
            except InvalidUpdate as exc:
                why = f"round {server_round}: a cohort's sum does not fit the global model: {exc}"
                raise RuntimeError(why) from None
            yield OrderedDict((k, res.changes[k]) for k in current), res.accepted

    def screen(
        self,
        server_round: int,
        replies: Iterable[Message],
        tally: Tally,
        extra_check: UpdateCheck | None = None,
    ) -> Iterator[tuple[Weights, TrainRes]]:
        """Yield the replies whose update may be aggregated; failures, refusals, malformed replies
        and invalid updates are counted in `tally` and logged, never averaged."""
        assert self.current is not None, "configure_train must run before the replies are screened"
        for node, msg in match_replies(self.outbox, replies):
            if msg is None or msg.has_error():
                tally.failed += 1
                why = "no reply within the round's timeout" if msg is None else msg.error.reason
                log.warning("round %d: client %d failed: %s", server_round, node, why)
                self._log_train(server_round, node, "", "failed")
                continue
            try:
                reply = TrainRes.from_record(msg.content)
            except ProtocolError as exc:
                tally.failed += 1
                self.rejected.append(f"round {server_round}, node {node}: {exc}")
                log.warning("round %d: malformed reply from node %d: %s", server_round, node, exc)
                self._log_train(server_round, node, "", "failed")
                continue
            self.client_epsilon[node] = reply.epsilon
            if reply.refused:
                tally.refused += 1
                log.info("round %d: client %d refused: %s", server_round, node, reply.reason)
                self._log_train(server_round, node, reply.key, "refused")
                continue
            try:
                update = OrderedDict(
                    received_update(reply.weights, reply.compact, self.current, updates=self.replies_are_updates)
                )
                check_update(update, self.current)
                if extra_check is not None:
                    extra_check(update, reply)
            except InvalidUpdate as exc:
                tally.failed += 1
                self.rejected.append(f"round {server_round}, node {node}: {exc}")
                log.warning("round %d: rejected update from node %d: %s", server_round, node, exc)
                self._log_train(server_round, node, reply.key, "rejected")
                continue
            tally.accepted += 1
            self._log_train(server_round, node, reply.key, "accepted")
            yield update, reply

    def _check_norm(self, update: Weights, reply: TrainRes) -> None:  # noqa: ARG002
        """Reject a change to the global weights larger than `max_update_norm`."""
        assert self.current is not None
        check_change_norm(update, self.current, self.max_update_norm)

    def apply(self, delta: Weights) -> Weights:
        """Return the new global weights: the server optimizer's step from the current ones by `delta`."""
        assert self.current is not None
        return self.optimizer.step(self.current, delta)

    def record(self, tally: Tally) -> MetricRecord:
        """Return the round's train metrics."""
        return MetricRecord(
            {
                "clients": tally.accepted,
                "failed": tally.failed,
                "refused": tally.refused,
                "epsilon": max(self.client_epsilon.values(), default=0.0),
            }
        )

    # ------------------------------------------------------------------ Flower's Strategy

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask a seeded fraction of the clients to train from the current weights."""
        self.current = arrays.to_torch_state_dict()
        self._run_id = _run_id(config)
        content = TrainIns(arrays=arrays, server_round=server_round, run_id=_run_id(config)).to_record()
        return self.messages(self.sample(grid, self.fraction_train), content, MessageType.TRAIN, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the usable updates with equal weights and apply the server optimizer; skip a round
        with too few."""
        assert self.current is not None, "configure_train must run before aggregate_train"
        current = self.current
        # Streaming sum: memory stays at a few models however many clients reply. In float64,
        # so the result does not depend on the order replies arrive in (FedAdam turns float32
        # rounding noise in unchanged coordinates into full ±lr steps).
        # Cohorts send sums of changes from the current weights (float32): their mean is the delta.
        acc: Weights = OrderedDict((k, torch.zeros_like(v, dtype=torch.float64)) for k, v in current.items())
        tally = Tally()
        if self.cohorts:
            sums: Iterable[Weights] = (changes for changes, _ in self.cohort_changes(server_round, replies, tally))
        else:
            sums = (weights for weights, _ in self.screen(server_round, replies, tally, self._check_norm))
        with self._batched_log():
            for weights in sums:
                for k, v in weights.items():
                    acc[k].add_(v)
        record = self.record(tally)
        if tally.accepted < self.min_train_clients:
            log.warning(
                "round %d skipped: %d usable replies (< min-train-clients %d)",
                server_round,
                tally.accepted,
                self.min_train_clients,
            )
            return None, record
        if self.cohorts:
            delta = OrderedDict((k, acc[k].div_(tally.accepted).to(v.dtype)) for k, v in current.items())
        else:
            delta = OrderedDict((k, acc[k].div_(tally.accepted).sub_(v).to(v.dtype)) for k, v in current.items())
        return ArrayRecord(self.apply(delta)), record

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask a seeded fraction of the clients for an evaluation release of the weights."""
        self._run_id = _run_id(config)
        content = EvaluateIns(arrays=arrays, server_round=server_round, run_id=_run_id(config)).to_record()
        return self.messages(self.sample(grid, self.fraction_evaluate), content, MessageType.EVALUATE, grid)

    def collect_evaluation(self, server_round: int, replies: Iterable[Message]) -> tuple[np.ndarray, int, int]:
        """Add up the clients' evaluation sums: (total, clients that contributed, clients that refused)."""
        with self._batched_log():
            return self._collect_evaluation(server_round, replies)

    def _collect_evaluation(self, server_round: int, replies: Iterable[Message]) -> tuple[np.ndarray, int, int]:
        total, answered, refused = np.zeros(len(EVAL_FIELDS)), 0, 0
        if self.cohorts:
            tally = Tally()
            for res in self._cohort_replies(server_round, "evaluate", replies, tally, _sum_of(total.shape)):
                if res.total is not None:
                    total += res.total
            return total, tally.accepted, tally.refused
        for node, msg in match_replies(self.outbox, replies):
            if msg is None or msg.has_error():
                why = "no reply within the round's timeout" if msg is None else msg.error.reason
                log.warning("round %d: evaluation failed on node %d: %s", server_round, node, why)
                self._log(server_round, "evaluate", node, "", "failed")
                continue
            try:
                reply = EvaluateRes.from_record(msg.content)
            except ProtocolError as exc:
                log.warning("round %d: malformed evaluation reply from node %d: %s", server_round, node, exc)
                self._log(server_round, "evaluate", node, "", "failed")
                continue
            self.client_epsilon[node] = reply.epsilon
            if reply.total is None:
                refused += 1
                log.info("round %d: node %d refused the evaluation release: %s", server_round, node, reply.reason)
                self._log(server_round, "evaluate", node, reply.key, "refused")
                continue
            if reply.total.shape != total.shape or not np.all(np.isfinite(reply.total)):
                log.warning(
                    "round %d: evaluation sum of node %d has shape %s or is not finite: ignored",
                    server_round,
                    node,
                    reply.total.shape,
                )
                self._log(server_round, "evaluate", node, reply.key, "rejected")
                continue
            total += reply.total
            answered += 1
            self._log(server_round, "evaluate", node, reply.key, "accepted")
        return total, answered, refused

    def evaluation_record(self, total: np.ndarray, noise_std: float, answered: int, refused: int) -> MetricRecord:
        """Return the noisy means of an evaluation release, their noise std, and who contributed."""
        means = release_means(total, noise_std, self.rating_range)
        return MetricRecord({**means, "clients": answered, "refused": refused})

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Add up the clients' evaluation releases into noisy means; None when nobody contributed."""
        total, answered, refused = self.collect_evaluation(server_round, replies)
        if not answered:
            return None
        return self.evaluation_record(total, self.client_eval_noise_std * float(np.sqrt(answered)), answered, refused)
