"""Flower ClientApp: turns each message into a typed instruction and a plain call.

Replies are the typed values of `shared.protocol`: the accounted mechanism's weights and
release sums, the device's ε and refusal reasons; no counts, losses, ids or per-user values.
A real device answers an instruction it already answered (a resumed run) with the same reply
(`replay.py`), so nothing is trained or spent twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from shared.config import StrataConfig, config_from_run_config
from shared.logs import show_strata_logs
from shared.privacy.accounting import EpsilonCache
from shared.privacy.ledger import Ledger
from shared.privacy.signing import SigningKey
from shared.protocol import EvaluateIns, ReleaseIns, TrainIns
from shared.run_dir import RunDir, client_ledger_name

from .budget import ClientBudget
from .policy import Policy, effective_max_epsilon, policy_for
from .ledger_store import open_ledger, save_to_state
from .release import contribute, evaluate
from .replay import ReplyCache
from .rounds import train_round
from .store import DeviceStore, store_for

log = logging.getLogger(__name__)


def _ledger_path(config: StrataConfig, context: Context, client_id: str) -> Path:
    """In `ledger-dir` of the node config (a device), else in the run directory (simulation)."""
    configured = context.node_config.get("ledger-dir")
    ledger_dir = Path(str(configured)).expanduser() if configured else RunDir.of(config.run_dir).ledger_dir
    return ledger_dir / client_ledger_name(client_id)


def _signer(config: StrataConfig, context: Context, client_id: str) -> SigningKey:
    """Return the device's signing key: node config `signing-key` (a device), else `keys/` beside its ledgers."""
    configured = context.node_config.get("signing-key")
    if configured:
        return SigningKey.load(Path(str(configured)).expanduser())
    ledger_dir = _ledger_path(config, context, client_id).parent
    return SigningKey.load_or_create(ledger_dir.parent / "keys" / f"{Path(client_ledger_name(client_id)).stem}.pem")


def _budget(config: StrataConfig, context: Context, store: DeviceStore, policy: Policy) -> tuple[ClientBudget, Ledger]:
    path = _ledger_path(config, context, store.client_id)
    ledger = open_ledger(context, path, _signer(config, context, store.client_id))
    cap = effective_max_epsilon(policy, config)
    # A real device (its own ledger-dir) keeps computed ε values: each message is a fresh process.
    real_device = bool(context.node_config.get("ledger-dir"))
    cache = EpsilonCache(path.parent / "epsilons" / f"{path.stem}.json") if real_device else None
    return ClientBudget.from_config(config.privacy, ledger=ledger, max_epsilon=cap, cache=cache), ledger


def _replies(config: StrataConfig, context: Context, client_id: str, kind: str) -> ReplyCache | None:
    """Return the cache of this device's last reply to `kind` (real devices only: a node config with `ledger-dir`)."""
    if not context.node_config.get("ledger-dir"):
        return None
    return ReplyCache.beside(_ledger_path(config, context, client_id), kind)


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


def build_client_app(config: StrataConfig | None = None) -> ClientApp:
    """Build a ClientApp for a fixed config (simulation CLI) or reading `context.run_config` (`flwr run`)."""
    app = ClientApp()

    def cfg(context: Context) -> StrataConfig:
        show_strata_logs()
        return config if config is not None else config_from_run_config(dict(context.run_config))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        c = cfg(context)
        store = store_for(c, dict(context.node_config))
        policy = policy_for(c, dict(context.node_config))
        budget, ledger = _budget(c, context, store, policy)
        ins = TrainIns.from_record(msg.content)
        content = _answer(
            _replies(c, context, store.client_id, "train"),
            ins.run_id,
            ins.server_round,
            lambda: train_round(store, c, ins, budget, policy).to_record(),
        )
        save_to_state(context, ledger)
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluation(msg: Message, context: Context) -> Message:
        """Release the client's DP evaluation of the global weights."""
        c = cfg(context)
        store = store_for(c, dict(context.node_config))
        policy = policy_for(c, dict(context.node_config))
        budget, ledger = _budget(c, context, store, policy)
        ins = EvaluateIns.from_record(msg.content)
        content = _answer(
            _replies(c, context, store.client_id, "evaluate"),
            ins.run_id,
            ins.server_round,
            lambda: evaluate(store, c, ins, budget, policy).to_record(),
        )
        save_to_state(context, ledger)
        return Message(content=content, reply_to=msg)

    @app.query()
    def release(msg: Message, context: Context) -> Message:
        """Contribute the client's part of a one-shot release (popularity prior, interest census)."""
        c = cfg(context)
        store = store_for(c, dict(context.node_config))
        policy = policy_for(c, dict(context.node_config))
        budget, ledger = _budget(c, context, store, policy)
        ins = ReleaseIns.from_record(msg.content)
        content = _answer(
            _replies(c, context, store.client_id, f"release-{ins.kind}"),
            ins.run_id,
            ins.server_round,
            lambda: contribute(store, c, ins, budget, policy).to_record(),
        )
        save_to_state(context, ledger)
        return Message(content=content, reply_to=msg)

    return app


app = build_client_app()
