"""``gss export`` (the daily snapshot) and ``gss export verify`` (check a partition)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import click

from contract.errors import GssError
from gss.cli.context import CliContext, pass_cli


def _date(value: str | None) -> date | None:
    if value is None:
        return None
    from contract.snapshot.layout import parse_date

    try:
        return parse_date(value)
    except GssError as exc:
        raise click.BadParameter(str(exc), param_hint="--date") from None


root_option = click.option(
    "--root",
    type=click.Path(file_okay=False),
    default=None,
    help="Export root (settings: export.root).",
)
galaxy_option = click.option(
    "--galaxy",
    "galaxies",
    multiple=True,
    help="Export only this galaxy (repeatable; default: every galaxy in the registry).",
)


@click.group(invoke_without_command=True)
@click.option(
    "--date",
    "date_text",
    default=None,
    metavar="YYYY-MM-DD",
    help="Partition date dt (default: yesterday, UTC).",
)
@galaxy_option
@root_option
@click.option(
    "--store",
    "store_path",
    type=click.Path(file_okay=False),
    default=None,
    help="Store directory to snapshot, also while a server uses it (settings: store.path).",
)
@click.option("--workers", type=int, default=None, help="Converting processes (export.workers).")
@click.option(
    "--allow-late",
    is_flag=True,
    help="Export a date more than export.late_days ago (labels today's state with it).",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar (default: only on a terminal; structured logs otherwise).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def export(
    ctx: click.Context,
    date_text: str | None,
    galaxies: tuple[str, ...],
    root: str | None,
    store_path: str | None,
    workers: int | None,
    allow_late: bool,
    progress: bool | None,
    as_json: bool,
) -> None:
    """Write the daily snapshot: every signal version as a dt=YYYY-MM-DD Parquet partition.

    Reads a consistent view of the store (a RocksDB secondary instance caught up once, so a
    running server and ingestion carry on), converts each value to its Thrift twin and
    publishes each partition atomically with a manifest and _SUCCESS. See docs/export.md.
    """
    if ctx.invoked_subcommand is not None:
        return
    cli: CliContext = ctx.obj
    overrides: dict[str, object] = {}
    if root:
        overrides["root"] = root
    if workers is not None:
        overrides["workers"] = workers
    settings = cli.settings(
        export=overrides, **({"store": {"path": store_path}} if store_path else {})
    )
    registry = cli.registry()
    from gss.snapshot import export_snapshot

    try:
        result = export_snapshot(
            registry,
            settings.export,
            dt=_date(date_text),
            galaxies=list(galaxies) or None,
            store_path=settings.store.path.resolve(),
            allow_late=allow_late,
            progress=progress,
            log_level=settings.log_level,
        )
    except GssError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(
            json.dumps(
                {
                    "export_id": result.export_id,
                    "dt": result.dt.isoformat(),
                    "rows": result.rows,
                    "rejected_rows": result.rejected_rows,
                    "duration_seconds": result.duration_seconds,
                    "unregistered": result.unregistered,
                    "malformed_keys": result.malformed_keys,
                    "partitions": [p.summary() for p in result.partitions],
                },
                indent=2,
            )
        )
    else:
        for p in result.partitions:
            extra = f", {p.expired_rows} expired" if p.expired_rows else ""
            extra += f", {p.rejected_rows} REJECTED (see _rejects.jsonl)" if p.rejected_rows else ""
            click.echo(
                f"{p.galaxy}/{p.signal}@{p.version} dt={result.dt.isoformat()}: {p.rows} rows{extra} -> {p.path}"
            )
        for galaxy, counts in result.unregistered.items():
            click.echo(
                f"warning: galaxy {galaxy} holds values of signals the registry does not declare, "
                f"not exported: {counts}",
                err=True,
            )
        if result.malformed_keys:
            click.echo(
                f"warning: {result.malformed_keys} store keys are not signal keys and were skipped "
                "(see _reports/ under each galaxy)",
                err=True,
            )
        if result.rows == 0:
            click.echo(
                "note: the store held no values for these galaxies; the partitions are empty",
                err=True,
            )
        click.echo(
            f"exported {result.rows} rows in {result.duration_seconds:.1f} s (export {result.export_id})",
            err=True,
        )


@export.command()
@click.option("--date", "date_text", required=True, metavar="YYYY-MM-DD", help="Partition date dt.")
@galaxy_option
@click.option("--signal", "signals", multiple=True, help="Only this signal (name or name@version).")
@root_option
@pass_cli
def verify(
    cli: CliContext,
    date_text: str,
    galaxies: tuple[str, ...],
    signals: tuple[str, ...],
    root: str | None,
) -> None:
    """Check dt partitions against their manifests (_SUCCESS, footers, row counts, checksums)."""
    from contract.snapshot import layout
    from gss.snapshot.manifest import verify_partition

    dt = _date(date_text)
    assert dt is not None
    export_root = Path(root) if root else cli.settings().export.root
    if not export_root.is_dir():
        raise click.ClickException(
            f"export root {export_root} does not exist (--root or export.root)"
        )
    wanted = {s if "@" in s else f"{s}@*" for s in signals}
    partitions = []
    for galaxy_dir in sorted(
        p for p in export_root.iterdir() if p.is_dir() and not layout.is_hidden(p.name)
    ):
        if galaxies and galaxy_dir.name not in galaxies:
            continue
        for table in sorted(galaxy_dir.iterdir()):
            m = layout.SIGNAL_DIR.match(table.name)
            if not m:
                continue
            if (
                wanted
                and f"{m.group(1)}@{m.group(2)}" not in wanted
                and f"{m.group(1)}@*" not in wanted
            ):
                continue
            partition = table / layout.partition_dir_name(dt)
            if partition.is_dir():
                partitions.append(partition)
    if not partitions:
        where = ", ".join(galaxies) if galaxies else "any galaxy"
        raise click.ClickException(
            f"no dt={dt.isoformat()} partition under {export_root} for {where}: "
            "was the export for that date run (gss export --date ...)?"
        )
    failed = 0
    for partition in partitions:
        result = verify_partition(partition)
        rel = partition.relative_to(export_root)
        if result.ok:
            click.echo(f"ok   {rel} ({result.rows} rows)")
        else:
            failed += 1
            click.echo(f"FAIL {rel}")
            for problem in result.problems:
                click.echo(f"     - {problem}")
    if failed:
        raise click.ClickException(f"{failed} of {len(partitions)} partitions failed verification")


def register(main: click.Group) -> None:
    main.add_command(export)
