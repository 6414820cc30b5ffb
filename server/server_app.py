"""Flower ServerApp: reads the run config and hands the grid to the round loop."""

from __future__ import annotations


from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from shared.config import StrataConfig, config_from_run_config
from shared.logs import show_strata_logs
from shared.memory import keep_freed_memory

from .federation import Oracle, run_federation

REPLY_POLL_S = 0.01
"""How often simulation's in-memory grid looks for replies (Flower's default 0.1 s: a round waited
50 ms on average after its last reply, 7% of an ML-100K cohort round)."""


def poll_replies_often(grid: Grid) -> None:
    """Make simulation's in-memory grid (`pull_interval`, its documented setting) poll for replies
    every `REPLY_POLL_S`; a deployed grid is left as it is."""
    if type(grid).__name__ == "InMemoryGrid" and hasattr(grid, "pull_interval"):
        grid.pull_interval = REPLY_POLL_S


def build_server_app(config: StrataConfig | None = None, *, oracle: Oracle | None = None) -> ServerApp:
    """Build a ServerApp for a fixed config (simulation CLI) or reading `context.run_config` (`flwr run`).

    `oracle` is the simulation runner's own evaluation; a deployed ServerApp has none.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        show_strata_logs()
        keep_freed_memory()
        poll_replies_often(grid)
        c = config if config is not None else config_from_run_config(dict(context.run_config))
        run_federation(grid, c, oracle=oracle)

    return app


app = build_server_app()
