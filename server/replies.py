"""Which device a reply comes from: matched to the instruction it answers, not to its sender field.

When a SuperNode is lost mid-round the SuperLink answers for it with an error reply whose
`src_node_id` is the SuperLink's own; only `reply_to_message_id` names the instruction, and so
the device. An instruction with no reply at all (the round's timeout passed) is reported too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from flwr.app import Message


def match_replies(sent: Iterable[Message], replies: Iterable[Message]) -> Iterator[tuple[int, Message | None]]:
    """Yield (destination node, its reply) for each reply, then (node, None) for each instruction
    that got none. A reply to no known instruction keeps its sender's node id."""
    destination = {m.metadata.message_id: m.metadata.dst_node_id for m in sent if m.metadata.message_id}
    answered: set[str] = set()
    for reply in replies:
        ref = reply.metadata.reply_to_message_id
        answered.add(ref)
        yield destination.get(ref, reply.metadata.src_node_id), reply
    for message_id, node in destination.items():
        if message_id not in answered:
            yield node, None
