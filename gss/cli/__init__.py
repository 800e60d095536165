"""The ``gss`` command. Each verb group lives in its own module and is registered here."""

from __future__ import annotations

import click

from gss.cli import archive as archive
from gss.cli import cluster as cluster
from gss.cli import compute as compute
from gss.cli import dlq as dlq
from gss.cli import events as events
from gss.cli import explain as explain
from gss.cli import export as export
from gss.cli import models as models
from gss.cli import replay as replay
from gss.cli import serving as serving
from gss.cli import store as store
from gss.cli import ui as ui
from gss.cli.context import CliContext, pass_cli


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "-c",
    "--config",
    type=click.Path(dir_okay=False),
    envvar="GSS_CONFIG",
    help="YAML settings file (also GSS_CONFIG).",
)
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR.")
@click.version_option(package_name="galaxy-signal-service", prog_name="gss")
@click.pass_context
def main(ctx: click.Context, config: str | None, log_level: str | None) -> None:
    """GSS, the Galaxy Signal Service: serve, announce and export ML signals."""
    ctx.obj = CliContext(config_file=config, log_level=log_level)


serving.register(main)
models.register(main)
compute.register(main)
export.register(main)
events.register(main)
archive.register(main)
store.register(main)
cluster.register(main)
replay.register(main)
dlq.register(main)
explain.register(main)
ui.register(main)

__all__ = ["CliContext", "main", "pass_cli"]
