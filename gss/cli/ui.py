"""``gss ui``: the signal explorer page (docs/debugging.md, "Explorer")."""

from __future__ import annotations

import click

from gss.cli.context import CliContext, pass_cli
from gss.cli.serving import _target, target_option


@click.command()
@click.option("--host", default=None, help="Address to listen on (settings: ui.host).")
@click.option("--port", type=int, default=None, help="Port (settings: ui.port; 0: any free one).")
@target_option
@pass_cli
def ui(cli: CliContext, host: str | None, port: int | None, target: str | None) -> None:
    """Serve the signal explorer: galaxies and signals, an entity's values with their lineage,
    recent availability events, ingest lag and freshness, dead letters. Read-only; what it
    shows follows the API's access rules for the browser's caller."""
    from gss.ui.app import serve

    settings = cli.settings()
    serve(
        settings,
        _target(cli, target),
        host or settings.ui.host,
        settings.ui.port if port is None else port,
    )


def register(main: click.Group) -> None:
    main.add_command(ui)
