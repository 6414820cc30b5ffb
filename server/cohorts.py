"""Simulation's cohort mode on the server: how many devices it samples among, and which cohort
node runs which of them (training, evaluation and the one-shot releases alike)."""

from __future__ import annotations

import numpy as np

from shared.config import StrataConfig


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
