"""The test doubles of Flower's side: a node list, an in-process Grid, and a client's reply.

- `Nodes(ids)`: only the part of a Grid a strategy asks, which nodes exist (sending fails).
- `DirectGrid(config)`: a Grid that calls the real ClientApp in-process (no Ray, no
  SuperLink): node i is partition i, with its own `Context` (so its ledger state lasts
  across messages, as on a SuperNode).
- `reply_to(request, content)`: the reply a client would send to `request`, after giving
  `request` the message id a SuperLink gives every message it delivers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from client.client_app import build_client_app
from client.store import num_clients
from shared.config import StrataConfig


def deliver(message: Message) -> Message:
    """`message` as a SuperLink delivers it: with a message id (a fresh UUID, as Flower's
    in-memory Grid gives one), so that a reply can refer to it."""
    if not message.metadata.message_id:
        message.metadata.__dict__["_message_id"] = str(uuid4())
    return message


def reply_to(request: Message, content: RecordDict) -> Message:
    """A client's reply carrying `content` to `request` (delivered first, see `deliver`)."""
    return Message(content=content, reply_to=deliver(request))


class _TestGrid(Grid):
    """A `Grid` whose Flower-run plumbing Strata's server never calls (it only asks for the
    node ids and uses `send_and_receive`)."""

    def _unused(self, what: str) -> NoReturn:
        raise NotImplementedError(f"{type(self).__name__}.{what}: not used by Strata's server")

    def set_run(self, run: Run) -> None:
        self._unused("set_run")

    @property
    def run(self) -> Run:
        self._unused("run")

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        self._unused("create_message")

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self._unused("push_messages")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._unused("pull_messages")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        self._unused("send_and_receive")


class Nodes(_TestGrid):
    """Just the part of a Grid the strategy asks: which nodes exist."""

    def __init__(self, ids: Iterable[int]) -> None:
        self.ids = list(ids)

    def get_node_ids(self) -> list[int]:
        return list(self.ids)


class DirectGrid(_TestGrid):
    """A Grid that calls the real ClientApp in-process (no Ray): node i is partition i."""

    def __init__(self, config: StrataConfig) -> None:
        self.app = build_client_app(config)
        self.n = num_clients(config)
        self.contexts = {i: self.context(i, self.n) for i in range(self.n)}

    @staticmethod
    def context(node_id: int, num_partitions: int, *, partition_id: int | None = None) -> Context:
        """A SuperNode's context of simulated node `node_id` (partition `partition_id`, default the node id)."""
        pid = node_id if partition_id is None else partition_id
        return Context(
            run_id=1,
            node_id=node_id,
            node_config={"partition-id": pid, "num-partitions": num_partitions},
            state=RecordDict(),
            run_config={},
        )

    def get_node_ids(self) -> list[int]:
        return list(range(self.n))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:  # noqa: ARG002
        return [self.app(deliver(msg), self.contexts[msg.metadata.dst_node_id]) for msg in messages]
