"""A Grid that calls the real ClientApp in-process (no Ray), for server-side tests."""

from __future__ import annotations

from flwr.app import Context, RecordDict

from client.client_app import build_client_app
from client.store import num_clients
from shared.config import StrataConfig


class DirectGrid:
    """A Grid that calls the real ClientApp in-process (no Ray): node i is partition i."""

    def __init__(self, config: StrataConfig) -> None:
        self.app = build_client_app(config)
        self.n = num_clients(config)
        self.contexts = {
            i: Context(run_id=1, node_id=i, node_config={"partition-id": i, "num-partitions": self.n}, state=RecordDict(), run_config={})
            for i in range(self.n)
        }

    def get_node_ids(self) -> list[int]:
        return list(range(self.n))

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ARG002
        replies = []
        for k, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"m{k}"
            replies.append(self.app(msg, self.contexts[msg.metadata.dst_node_id]))
        return replies
