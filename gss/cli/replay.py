"""``gss replay``: produce archived traffic again, deterministically, for load tests."""

from __future__ import annotations

import click

from gss.cli.context import CliContext, pass_cli, stop_on_signals


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds}s"


@click.command()
@click.argument("topic")
@click.option(
    "--into",
    required=True,
    help="The topic to produce into (must exist, or --create-topic).",
)
@click.option(
    "--from",
    "from_",
    default=None,
    help="First record timestamp, inclusive: ISO-8601 UTC (2026-11-01T00:00Z), 'now' or "
    "relative (-2h). Default: the archive's first record.",
)
@click.option(
    "--to",
    "to",
    default=None,
    help="Last record timestamp, exclusive (same forms as --from). Default: the archive's end.",
)
@click.option(
    "--speed",
    default="1x",
    show_default=True,
    help="Replay speed: 10x divides the original gaps by 10; max sends as fast as possible.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Replay at most N records.")
@click.option(
    "--keep-timestamps",
    is_flag=True,
    help="Produce with the original timestamps (CreateTime) instead of the time of sending.",
)
@click.option(
    "--create-topic",
    is_flag=True,
    help="Create --into if it is missing, with the archived topic's partition count.",
)
@click.option(
    "--allow-same-topic",
    is_flag=True,
    help="Allow --into to be the archived topic itself (duplicates its production traffic).",
)
@click.option(
    "--root",
    default=None,
    help="Archive root: a directory or s3://bucket/prefix (settings: archive.root).",
)
@click.option(
    "--progress-seconds",
    type=float,
    default=5.0,
    show_default=True,
    help="How often to print a progress line.",
)
@pass_cli
def replay(
    cli: CliContext,
    topic: str,
    into: str,
    from_: str | None,
    to: str | None,
    speed: str,
    limit: int | None,
    keep_timestamps: bool,
    create_topic: bool,
    allow_same_topic: bool,
    root: str | None,
    progress_seconds: float,
) -> None:
    """Produce TOPIC's archived records with timestamps in [--from, --to) into --into.

    Partitions are merged by (timestamp, partition, offset), each kept in offset order; keys
    are partitioned by murmur2 as in production, so per-key order holds; the same command over
    the same archive gives the same records in the same order on every partition (each with a
    gss-replay-of header). Ctrl-C or SIGTERM stops after flushing what was sent (docs/history.md).
    """
    from gss.archive.replay import (
        Progress,
        Replayer,
        ReplayError,
        ReplayPlan,
        format_time,
        parse_speed,
        parse_time,
    )
    from gss.archive.storage import open_storage

    try:
        from_ms = None if from_ is None else parse_time(from_)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--from") from None
    try:
        until_ms = None if to is None else parse_time(to)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--to") from None
    try:
        rate = parse_speed(speed)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--speed") from None
    if from_ms is not None and until_ms is not None and until_ms <= from_ms:
        raise click.UsageError(
            f"--to ({format_time(until_ms)}) must be after --from ({format_time(from_ms)})"
        )
    settings = cli.settings(archive={"root": root}) if root else cli.settings()
    if not settings.kafka.bootstrap_servers:
        raise click.UsageError(
            "no Kafka broker configured: set kafka.bootstrap_servers (GSS_KAFKA__BOOTSTRAP_SERVERS)"
        )
    plan = ReplayPlan(
        topic=topic,
        into=into,
        from_ms=from_ms,
        until_ms=until_ms,
        speed=rate,
        limit=limit,
        keep_timestamps=keep_timestamps,
        allow_same_topic=allow_same_topic,
    )

    def progress(p: Progress) -> None:
        click.echo(
            f"replay: {p.records} records, {p.share:.0%} of the range, "
            f"{p.records_per_s:,.0f} records/s, ETA {_eta(p.eta_seconds)}",
            err=True,
        )

    stop = stop_on_signals()
    window = (
        f"[{'start' if from_ms is None else format_time(from_ms)}, "
        f"{'end' if until_ms is None else format_time(until_ms)})"
    )
    click.echo(f"replaying {topic} {window} into {into} at {speed}", err=True)
    replayer = Replayer(
        settings.kafka,
        open_storage(settings.archive),
        plan,
        create_topic=create_topic,
        stop_event=stop,
        on_progress=progress,
        progress_seconds=progress_seconds,
    )
    try:
        stats = replayer.run()
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from None
    if stats.created_topic:
        click.echo(f"created topic {into} ({stats.target_partitions} partitions)", err=True)
    click.echo(
        f"replayed {stats.records} records into {into} in {stats.elapsed_seconds:.1f}s "
        f"({stats.records_per_s:,.0f} records/s)" + (", stopped early" if stats.stopped else ""),
        err=True,
    )
    if stats.failed or stats.unflushed:
        raise click.ClickException(
            f"{stats.failed} records failed and {stats.unflushed} were unacknowledged "
            f"(first error: {stats.first_error})"
        )


def register(main: click.Group) -> None:
    main.add_command(replay)
