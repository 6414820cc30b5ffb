"""Flower ClientApp: turns each message into a typed instruction and a plain call.

Replies are the typed values of `shared.protocol`: the accounted mechanism's weights and
release sums, the device's ε and refusal reasons; no counts, losses, ids or per-user values.
A real device answers an instruction it already answered (a resumed run) with the same reply
(`replay.py`), so nothing is trained or spent twice. In simulation a message may address a
cohort of virtual devices (`cohort.py`), each answered as on a node of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from shared.config import StrataConfig, config_from_run_config
from shared.logs import show_strata_logs
from shared.memory import keep_freed_memory
from shared.protocol import EvaluateIns, ReleaseIns, TrainIns, cohort_of

from .cohort import contribute_cohort, evaluate_cohort, train_cohort
from .device import Device, open_device
from .release import contribute, evaluate
from .replay import ReplyCache
from .rounds import train_round

log = logging.getLogger(__name__)


def _answer(cache: ReplyCache | None, run_id: str, server_round: int, make: Callable[[], RecordDict]) -> RecordDict:
    """Return the cached reply to (run, round) if this device already sent one, else a new one (then cached)."""
    if cache is not None:
        earlier = cache.get(run_id, server_round)
        if earlier is not None:
            return earlier
    content = make()
    if cache is not None:
        cache.put(run_id, server_round, content)
    return content


def _as_device(
    config: StrataConfig,
    context: Context,
    kind: str,
    run_id: str,
    server_round: int,
    make: Callable[[Device], RecordDict],
) -> RecordDict:
    """Open the node's device, answer with `make` (or the cached reply to this instruction), keep its ledger."""
    device = open_device(config, context, dict(context.node_config))
    content = _answer(device.replies(kind), run_id, server_round, lambda: make(device))
    device.close(context)
    return content


def build_client_app(config: StrataConfig | None = None) -> ClientApp:
    """Build a ClientApp for a fixed config (simulation CLI) or reading `context.run_config` (`flwr run`)."""
    app = ClientApp()

    def cfg(context: Context) -> StrataConfig:
        show_strata_logs()
        keep_freed_memory()  # once per process: each round allocates and frees model copies
        return config if config is not None else config_from_run_config(dict(context.run_config))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        c = cfg(context)
        ins = TrainIns.from_record(msg.content)
        devices = cohort_of(msg.content)
        if devices is not None:
            return Message(content=train_cohort(c, context, ins, devices).to_record(), reply_to=msg)
        content = _as_device(
            c,
            context,
            "train",
            ins.run_id,
            ins.server_round,
            lambda d: train_round(d.store, c, ins, d.budget, d.policy).to_record(),
        )
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluation(msg: Message, context: Context) -> Message:
        """Release the client's DP evaluation of the global weights."""
        c = cfg(context)
        ins = EvaluateIns.from_record(msg.content)
        devices = cohort_of(msg.content)
        if devices is not None:
            return Message(content=evaluate_cohort(c, context, ins, devices).to_record(), reply_to=msg)
        content = _as_device(
            c,
            context,
            "evaluate",
            ins.run_id,
            ins.server_round,
            lambda d: evaluate(d.store, c, ins, d.budget, d.policy).to_record(),
        )
        return Message(content=content, reply_to=msg)

    @app.query()
    def release(msg: Message, context: Context) -> Message:
        """Contribute the client's part of a one-shot release (popularity prior, interest census)."""
        c = cfg(context)
        ins = ReleaseIns.from_record(msg.content)
        devices = cohort_of(msg.content)
        if devices is not None:
            return Message(content=contribute_cohort(c, context, ins, devices).to_record(), reply_to=msg)
        content = _as_device(
            c,
            context,
            f"release-{ins.kind}",
            ins.run_id,
            ins.server_round,
            lambda d: contribute(d.store, c, ins, d.budget, d.policy).to_record(),
        )
        return Message(content=content, reply_to=msg)

    return app


app = build_client_app()
