"""Flower ClientApp: moves weights in and out and calls the local trainer.

Replies carry only shared weights and aggregate metrics: no user ids, item ids or
per-user values leave the device.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from shared.config import StrataConfig, config_from_run_config

from .ledger_store import ledger_path, open_ledger, save_to_state
from .release import contribute
from .store import store_for
from .trainer import evaluate_locally, train_locally

log = logging.getLogger(__name__)


def _ledger_dir(config: StrataConfig, context: Context) -> Path:
    configured = context.node_config.get("ledger-dir")
    return Path(str(configured)) if configured else config.run_dir / "ledgers"


def build_client_app(config: StrataConfig | None = None) -> ClientApp:
    """A ClientApp for a fixed config (simulation CLI) or reading `context.run_config` (`flwr run`)."""
    app = ClientApp()

    def cfg(context: Context) -> StrataConfig:
        return config if config is not None else config_from_run_config(context.run_config)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        c = cfg(context)
        store = store_for(c, dict(context.node_config))
        ledger = open_ledger(context, ledger_path(_ledger_dir(c, context), store.client_id))
        weights = msg.content["arrays"].to_torch_state_dict()
        server_round = int(msg.content["config"]["server-round"])
        result = train_locally(
            store, c, weights, server_round=server_round, run_id=str(msg.content["config"]["run-id"]), ledger=ledger
        )
        save_to_state(context, ledger)
        metrics = MetricRecord(
            {
                "num-users": result.users,
                "num-examples": result.examples,
                "train-loss": result.mean_loss if result.weights is not None else 0.0,
                "epsilon": result.epsilon,
                "refused": int(result.weights is None),
            }
        )
        content = RecordDict({"metrics": metrics})
        if result.weights is not None:
            content["arrays"] = ArrayRecord(result.weights)
        else:
            log.warning("client %s refused to train: %s", store.client_id, result.refused)
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        c = cfg(context)
        store = store_for(c, dict(context.node_config))
        sums = evaluate_locally(store, c, msg.content["arrays"].to_torch_state_dict())
        metrics = MetricRecord({**sums.to_dict(), "num-users": store.n_users})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    @app.query()
    def release(msg: Message, context: Context) -> Message:
        """The client's part of a one-shot release (popularity prior, interest census)."""
        c = cfg(context)
        store = store_for(c, dict(context.node_config))
        ledger = open_ledger(context, ledger_path(_ledger_dir(c, context), store.client_id))
        conf = msg.content["config"]
        weights = msg.content["arrays"].to_torch_state_dict() if "arrays" in msg.content else None
        interests = msg.content["interests"]["l2"].numpy() if "interests" in msg.content else None
        total, spent = contribute(
            store, c, str(conf["release"]), run_id=str(conf["run-id"]), server_round=int(conf["server-round"]),
            ledger=ledger, weights=weights, interest_matrix=interests,
        )
        save_to_state(context, ledger)
        content = RecordDict(
            {
                "release": ArrayRecord({"sum": Array(total)}),
                "metrics": MetricRecord({"num-users": store.n_users, "epsilon": spent}),
            }
        )
        return Message(content=content, reply_to=msg)

    return app


app = build_client_app()
