"""Flower ServerApp: reads the run config and hands the grid to the round loop."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from shared.config import StrataConfig, config_from_run_config

from .federation import run_federation


def build_server_app(config: StrataConfig | None = None) -> ServerApp:
    """A ServerApp for a fixed config (simulation CLI) or reading `context.run_config` (`flwr run`)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        _show_progress()
        run_federation(grid, config if config is not None else config_from_run_config(context.run_config))

    return app


def _show_progress() -> None:
    """Under `flwr run` nobody configured logging: send Strata's round progress to stderr."""
    strata = logging.getLogger("strata")
    if not strata.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s strata %(message)s", "%H:%M:%S"))
        strata.addHandler(handler)
        strata.setLevel(logging.INFO)


app = build_server_app()
