"""Flower ServerApp: reads the run config and hands the grid to the round loop."""

from __future__ import annotations


from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from shared.config import StrataConfig, config_from_run_config
from shared.logs import show_strata_logs
from shared.memory import keep_freed_memory

from .federation import Oracle, run_federation


def build_server_app(config: StrataConfig | None = None, *, oracle: Oracle | None = None) -> ServerApp:
    """Build a ServerApp for a fixed config (simulation CLI) or reading `context.run_config` (`flwr run`).

    `oracle` is the simulation runner's own evaluation; a deployed ServerApp has none.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        show_strata_logs()
        keep_freed_memory()
        c = config if config is not None else config_from_run_config(dict(context.run_config))
        run_federation(grid, c, oracle=oracle)

    return app


app = build_server_app()
