"""Simulation's cohort mode on the server: how many devices it samples among, and which cohort
node runs which of them, and what each cohort's reply says of its devices (training, evaluation
and the one-shot releases alike)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np
from flwr.app import Message

from shared.config import StrataConfig
from shared.protocol import CohortRes, DeviceOutcome, ProtocolError

log = logging.getLogger(__name__)


def cohort_devices(config: StrataConfig) -> int:
    """Return the public number of devices cohort mode samples from (0 outside cohort mode): the
    hub count, or in the `device` topology the public population N (one user per device)."""
    fed, p = config.federation, config.privacy
    if not fed.cohorts:
        return 0
    devices = fed.num_hubs if fed.topology == "hub" else p.population
    if devices < 1:
        raise ValueError(
            "federation.cohorts needs privacy.population (the public number of devices) in the device topology."
        )
    return devices


def split_into_cohorts(devices: list[int], nodes: list[int], cohorts: int) -> dict[int, tuple[int, ...]]:
    """Return node → its contiguous share of `devices`, over the first `cohorts` of the sorted `nodes`
    (a node with no share gets no entry)."""
    workers = sorted(nodes)[:cohorts]
    if not workers:
        raise RuntimeError("cohort mode: no Flower node is connected to run the cohorts.")
    chunks = np.array_split(np.asarray(devices, dtype=np.int64), len(workers))
    return {w: tuple(int(d) for d in c) for w, c in zip(workers, chunks, strict=True) if len(c)}


def cohort_outcomes(
    replies: Iterable[tuple[int, Message | None]],
    cohort_of_node: Mapping[int, tuple[int, ...]],
    *,
    what: str,
    check: Callable[[CohortRes], str] | None = None,
) -> Iterator[tuple[CohortRes | None, tuple[DeviceOutcome, ...]]]:
    """Decode each cohort node's (node, reply) into its reply and every device's outcome.

    A node that failed, whose reply is malformed or does not account for exactly its devices, or
    fails `check` (the caller's test of the sum: a reason, "" when it passes) yields None and all
    of its devices failed, with a warning naming `what` and the node."""
    for node, msg in replies:
        devices = cohort_of_node.get(node, ())
        res, why = _decode(msg, devices, check)
        if res is None:
            log.warning("%s: cohort node %d (%d devices) failed: %s", what, node, len(devices), why)
            yield None, tuple(DeviceOutcome(device=d, outcome="failed", reason=why) for d in devices)
        else:
            yield res, res.outcomes


def _decode(
    msg: Message | None, devices: tuple[int, ...], check: Callable[[CohortRes], str] | None
) -> tuple[CohortRes | None, str]:
    if msg is None:
        return None, "no reply within the timeout"
    if msg.has_error():
        return None, str(msg.error.reason)
    try:
        res = CohortRes.from_record(msg.content)
    except ProtocolError as exc:
        return None, f"malformed cohort reply: {exc}"
    if sorted(o.device for o in res.outcomes) != sorted(devices):
        return None, f"the reply accounts for devices {[o.device for o in res.outcomes]}, not {list(devices)}"
    why = check(res) if check is not None else ""
    return (None, why) if why else (res, "")
