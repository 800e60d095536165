"""``gss archive run`` (copy topics into the archive) and ``gss archive status``."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click

from gss.cli.context import CliContext, duration_option, pass_cli, stop_on_signals

root_option = click.option(
    "--root",
    default=None,
    help="Archive root: a directory or s3://bucket/prefix (settings: archive.root).",
)


@click.group()
def archive() -> None:
    """The topic archive: Kafka topics as immutable gzip JSON-lines files (docs/history.md)."""


@archive.command()
@root_option
@click.option(
    "--topic",
    "topics",
    multiple=True,
    help="Archive this topic (repeatable; default: archive.topics, or every galaxy's changelog "
    "and archive.content_topics).",
)
@duration_option
@pass_cli
def run(cli: CliContext, root: str | None, topics: tuple[str, ...], duration: float | None) -> None:
    """Copy topics into the archive, each offset exactly once, until Ctrl-C or SIGTERM.

    Resumes each partition after its newest commit marker; buffered records are written and
    committed before exiting.
    """
    overrides: dict[str, object] = {}
    if root:
        overrides["root"] = root
    if topics:
        overrides["topics"] = list(topics)
    settings = cli.settings(archive=overrides) if overrides else cli.settings()
    from prometheus_client import start_http_server

    from gss.archive.archiver import Archiver, archive_topics
    from gss.archive.storage import open_storage

    if not settings.kafka.bootstrap_servers:
        raise click.UsageError(
            "no Kafka broker configured: set kafka.bootstrap_servers (GSS_KAFKA__BOOTSTRAP_SERVERS)"
        )
    names = archive_topics(settings.archive, settings.kafka, cli.registry())
    stop = stop_on_signals()
    if settings.archive.metrics_port >= 0:
        server, _thread = start_http_server(
            settings.archive.metrics_port, addr=settings.archive.metrics_host
        )
        click.echo(f"archive metrics on :{server.server_port}", err=True)
    storage = open_storage(settings.archive)
    click.echo(f"archiving {', '.join(names)} to {settings.archive.root}", err=True)
    stats = Archiver(settings.archive, settings.kafka, names, storage, stop_event=stop).run(
        duration
    )
    click.echo(
        f"archived {stats.records} records in {stats.batches} batches ({stats.files} files)",
        err=True,
    )


def _time(ms: int) -> str:
    return datetime.fromtimestamp(max(ms, 0) / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")


@archive.command()
@root_option
@click.option("--topic", "topics", multiple=True, help="Only this topic (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_cli
def status(cli: CliContext, root: str | None, topics: tuple[str, ...], as_json: bool) -> None:
    """Per topic and partition: archived offset range, records, files and time range."""
    settings = cli.settings(archive={"root": root}) if root else cli.settings()
    from gss.archive.status import archive_status
    from gss.archive.storage import open_storage

    rows = archive_status(open_storage(settings.archive), list(topics) or None)
    if as_json:
        click.echo(
            json.dumps(
                {"root": settings.archive.root, "partitions": [r.to_dict() for r in rows]},
                indent=2,
            )
        )
        return
    if not rows:
        click.echo(f"nothing archived under {settings.archive.root}")
        return
    header = ("topic", "part", "offsets", "records", "files", "first timestamp", "last timestamp")
    lines = [header] + [
        (
            r.topic,
            str(r.partition),
            f"{r.first_offset}-{r.last_offset}",
            str(r.records),
            str(r.files),
            _time(r.min_timestamp_ms),
            _time(r.max_timestamp_ms) + (" (pending batch)" if r.pending else ""),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def register(main: click.Group) -> None:
    main.add_command(archive)
