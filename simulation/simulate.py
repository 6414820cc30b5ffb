"""Run the real ServerApp and ClientApp on Flower's simulation engine (Ray backend)."""

from __future__ import annotations

import json
import logging
import os

from flwr.simulation import run_simulation

from client.client_app import build_client_app
from client.store import num_clients
from server.server_app import build_server_app
from shared.config import StrataConfig

log = logging.getLogger("strata")


def backend_config(config: StrataConfig) -> dict:
    return {
        "client_resources": {"num_cpus": config.federation.num_cpus_per_client, "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False},
    }


def simulate(config: StrataConfig) -> dict:
    """Simulate the federation of `config` and return the run summary (also in summary.json)."""
    n = num_clients(config)
    config = config.replace({"federation.min-available-clients": n})  # start only once all are registered
    log.info("simulating %d virtual clients on Flower's simulation engine", n)
    ledgers = sorted((config.run_dir / "ledgers").glob("client-*.jsonl"))
    if ledgers:
        log.warning(
            "%s already holds %d client ledgers from earlier runs: this run's ε composes with them "
            "(the same users' data is used again). Use a new --out for an untouched budget.",
            config.run_dir / "ledgers",
            len(ledgers),
        )
    summary_path = config.run_dir / "summary.json"
    if summary_path.exists():
        summary_path.unlink()
    run_simulation(
        server_app=build_server_app(config),
        client_app=build_client_app(config),
        num_supernodes=n,
        backend_config=backend_config(config),  # type: ignore[arg-type]
    )
    if not summary_path.exists():
        raise RuntimeError(f"the simulation ended without writing {summary_path}; see the log above for the failure.")
    return json.loads(summary_path.read_text())
