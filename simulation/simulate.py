"""Run the real ServerApp and ClientApp on Flower's simulation engine (Ray backend)."""

from __future__ import annotations

import logging
import os

from flwr.simulation import run_simulation

from client.client_app import build_client_app
from client.store import num_clients
from server.cohorts import cohort_devices
from server.server_app import build_server_app
from shared.config import StrataConfig
from shared.memory import one_malloc_arena
from shared.run_dir import JsonDict, RunDir

from .oracle import OracleEvaluation
from .population import with_public_population

log = logging.getLogger(__name__)


def backend_config(config: StrataConfig, ray_address: str | None = None) -> dict[str, dict[str, object]]:
    """Ray resources per virtual client, and Ray's own start-up arguments.

    Without `ray_address` Flower starts a private Ray instance on this machine's cores. With it,
    Flower joins that running cluster (`ray start --head` and `ray start --address ...` on other
    machines) and sizes its actor pool from the cluster's CPUs; every node must have Strata
    installed at the same path as this one.
    """
    init_args: dict[str, object] = {"include_dashboard": False}
    if ray_address:
        init_args["address"] = ray_address  # an existing cluster: its nodes bring their own CPUs
    else:
        init_args["num_cpus"] = os.cpu_count() or 1
    return {
        "client_resources": {"num_cpus": config.federation.num_cpus_per_client, "num_gpus": 0.0},
        "init_args": init_args,
    }


def finished_summary(run: RunDir, config: StrataConfig) -> JsonDict | None:
    """Return the summary of `run` if it holds a finished run of `config`'s rounds, else None.

    A finished run is never resumed: resuming would repeat its one-shot releases (the census)
    and spend budget again. More rounds than it ran is a new request and continues it.
    """
    summary = run.read_summary()
    if summary is None or not run.checkpoint_path.exists() or not run.config_path.exists():
        return None
    ignored = ("federation.rounds", "federation.min-available-clients")
    saved = {k: v for k, v in run.read_config().to_flat().items() if k not in ignored}
    if saved != {k: v for k, v in config.to_flat().items() if k not in ignored}:
        return None  # another experiment: the server refuses to resume it, with the keys that differ
    done = int(summary.get("rounds", 0)) >= config.federation.rounds or "stopped_early" in summary
    return summary if done else None


def simulate(config: StrataConfig, ray_address: str | None = None) -> JsonDict:
    """Simulate the federation of `config` and return the run summary (also in summary.json).

    `ray_address` (host:port of a running Ray cluster's head) runs the virtual clients on that
    cluster instead of a private Ray instance; the run, its ledgers and results are the same.
    """
    config = with_public_population(config)
    run = RunDir.of(config.run_dir)
    finished = finished_summary(run, config)
    if finished is not None:
        log.warning(
            "%s already holds this finished run (%d of %d rounds): showing its results; nothing was trained or "
            "released, no budget was spent. Use a new --out for a new run.",
            run,
            finished["rounds"],
            config.federation.rounds,
        )
        return {**finished, "already_finished": True}
    n = num_clients(config)
    nodes = n
    if config.federation.cohorts:
        devices = cohort_devices(config)
        if devices != n:
            raise ValueError(
                f"the {config.federation.topology} topology has {n} clients but the public count cohort mode samples "
                f"from is {devices} (privacy.population or federation.num-hubs): make them agree."
            )
        nodes = min(config.federation.cohorts, n)
    config = config.replace({"federation.min-available-clients": nodes})  # start only once all are registered
    if ray_address:
        log.info("joining the Ray cluster at %s", ray_address)
    if nodes < n:
        log.info("simulating %d virtual clients in %d cohorts on Flower's simulation engine", n, nodes)
    else:
        log.info("simulating %d virtual clients on Flower's simulation engine", n)
    ledgers = run.client_ledger_paths()
    if ledgers:
        log.warning(
            "%s already holds %d client ledgers from earlier runs: this run's ε composes with them "
            "(the same users' data is used again). Use a new --out for an untouched budget.",
            run.ledger_dir,
            len(ledgers),
        )
    run.clear_summary()
    oracle = OracleEvaluation(config) if config.federation.oracle_eval else None
    with one_malloc_arena():  # Ray's processes start inside: they inherit the setting
        run_simulation(
            server_app=build_server_app(config, oracle=oracle),
            client_app=build_client_app(config),
            num_supernodes=nodes,
            backend_config=backend_config(config, ray_address),  # type: ignore[arg-type]
        )
    summary = run.read_summary()
    if summary is None:
        raise RuntimeError(
            f"the simulation ended without writing {run.summary_path}; see the log above for the failure."
        )
    return summary
