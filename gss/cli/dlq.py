"""Dead-letter verbs: ``gss dlq list | show | stats | redrive`` (docs/debugging.md)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click
import grpc

from contract.errors import GssError
from gss.cli.context import CliContext, pass_cli
from gss.cli.serving import _client, _fail_rpc, json_option, target_option


def _ms(text: str | None, option: str) -> int | None:
    from gss.archive.replay import parse_time

    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _selection(
    signal: tuple[str, ...], reason: tuple[str, ...], producer: str | None, until: str | None
) -> Any:
    from gss.dlq import Selection

    try:
        return Selection(
            frozenset(signal), frozenset(r.lower() for r in reason), producer, _ms(until, "--until")
        )
    except GssError as exc:
        raise click.BadParameter(str(exc), param_hint="--reason") from None


def _letters(cli: CliContext, galaxy: str, since: str | None) -> Any:
    from gss.dlq import read_letters

    if galaxy not in cli.registry().galaxies:
        raise click.BadParameter(f"no galaxy {galaxy!r} in the registry", param_hint="GALAXY")
    return read_letters(cli.settings().kafka, galaxy, since_ms=_ms(since, "--since"))


def _filters(f: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--signal", multiple=True, help="Only this signal (name or name@version)."
            ),
            click.option(
                "--reason",
                multiple=True,
                help="Only this reason (plugin_error, bad_input, too_late, unknown_signal, ...).",
            ),
            click.option(
                "--producer",
                default=None,
                help='Only this writer: "gss-ingester", "flink:<job>", or "flink:" for any job.',
            ),
            click.option(
                "--since", default=None, help="Dead-lettered at or after (ISO-8601 or -2h)."
            ),
            click.option("--until", default=None, help="Dead-lettered before."),
        ]
    ):
        f = option(f)
    return f


@click.group()
def dlq() -> None:
    """Read, count and re-drive a galaxy's dead letters (gss.<galaxy>.dlq)."""


@dlq.command("list")
@click.argument("galaxy")
@_filters
@click.option("--limit", type=int, default=100, show_default=True, help="At most this many.")
@json_option
@pass_cli
def list_(
    cli: CliContext,
    galaxy: str,
    signal: tuple[str, ...],
    reason: tuple[str, ...],
    producer: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """One line per dead letter: where it sits, when, why, for which signal and entity, where
    its input was read, and the error."""
    from gss.dlq import letter_dict

    select = _selection(signal, reason, producer, until)
    shown = 0
    for letter in _letters(cli, galaxy, since):
        if not select(letter):
            continue
        d = letter.letter
        if as_json:
            click.echo(json.dumps(letter_dict(letter)))
        else:
            click.echo(
                f"{letter.position}  {_when(letter.timestamp_ms)}  {letter.reason:<14} "
                f"{letter.signal or '-':<24} {d.entity_id or '-':<34} {letter.input_position}  "
                f"{d.error_type}: {d.error[:100]}"
            )
        shown += 1
        if shown >= limit:
            break


@dlq.command()
@click.argument("galaxy")
@click.argument("position")
@pass_cli
def show(cli: CliContext, galaxy: str, position: str) -> None:
    """One dead letter in full (JSON), by its PARTITION:OFFSET on the dead-letter topic."""
    from gss.dlq import letter_dict

    partition, _, offset = position.partition(":")
    if not (partition.isdigit() and offset.isdigit()):
        raise click.BadParameter(f"{position!r} is not PARTITION:OFFSET", param_hint="POSITION")
    for letter in _letters(cli, galaxy, None):
        if (letter.partition, letter.offset) == (int(partition), int(offset)):
            click.echo(json.dumps(letter_dict(letter), indent=2))
            return
    raise click.ClickException(f"no dead letter at {position} of galaxy {galaxy}")


@dlq.command()
@click.argument("galaxy")
@_filters
@json_option
@pass_cli
def stats(
    cli: CliContext,
    galaxy: str,
    signal: tuple[str, ...],
    reason: tuple[str, ...],
    producer: str | None,
    since: str | None,
    until: str | None,
    as_json: bool,
) -> None:
    """Dead letters counted by signal and reason, and by input topic and partition."""
    from gss.dlq import Stats

    select = _selection(signal, reason, producer, until)
    counts = Stats()
    for letter in _letters(cli, galaxy, since):
        if select(letter):
            counts.add(letter)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "total": counts.total,
                    "first": _when(counts.first_ms),
                    "last": _when(counts.last_ms),
                    "by_signal_reason": [
                        {"signal": s, "reason": r, "count": n}
                        for (s, r), n in counts.by_signal_reason.most_common()
                    ],
                    "by_input": [
                        {"topic": t, "partition": p, "count": n}
                        for (t, p), n in counts.by_input.most_common()
                    ],
                }
            )
        )
        return
    click.echo(f"{counts.total} dead letters ({_when(counts.first_ms)} .. {_when(counts.last_ms)})")
    for (s, r), n in counts.by_signal_reason.most_common():
        click.echo(f"  {n:>8}  {s:<28} {r}")
    click.echo("by input:")
    for (t, p), n in counts.by_input.most_common():
        click.echo(f"  {n:>8}  {t} partition {p if p >= 0 else '?'}")


@dlq.command()
@click.argument("plugin")
@click.option(
    "--reason",
    multiple=True,
    help="Only this reason (default: plugin_error, bad_output, bad_input).",
)
@click.option("--since", default=None, help="Dead-lettered at or after (ISO-8601 or -2h).")
@click.option("--until", default=None, help="Dead-lettered before.")
@click.option("--dry-run", is_flag=True, help="Say what would be re-driven; write nothing.")
@target_option
@json_option
@pass_cli
def redrive(
    cli: CliContext,
    plugin: str,
    reason: tuple[str, ...],
    since: str | None,
    until: str | None,
    dry_run: bool,
    target: str | None,
    as_json: bool,
) -> None:
    """Feed the compute dead letters of PLUGIN (galaxy/name@version, after a fix) back
    through it: each input once. A value goes through the changelog like any computed value
    (producer gss-redrive, its lineage the original input); a dead letter whose signal is
    already stored from its input, or newer, is skipped, so running it again does nothing."""
    from compute.binding import bind
    from compute.flink.backfill import find_plugin
    from compute.redrive import REDRIVABLE, redrivable, redrive, resolved_by

    settings = cli.settings()
    try:
        found = find_plugin(settings, plugin)
        (bound,) = bind([found], cli.registry(), settings)
        bound = redrivable(bound)
    except GssError as exc:
        raise click.BadParameter(str(exc), param_hint="PLUGIN") from None
    reasons = tuple(reason) or tuple(sorted(REDRIVABLE))
    bad = {r.lower() for r in reasons} - REDRIVABLE
    if bad:
        raise click.BadParameter(
            f"{sorted(bad)} cannot be re-driven; choose from {sorted(REDRIVABLE)}",
            param_hint="--reason",
        )
    signal = f"{bound.plugin.name}@{bound.plugin.version}"
    select = _selection((signal,), reasons, "flink:", until)
    models = None
    if bound.plugin.model is not None and not dry_run:
        from compute.inference import connect

        models = connect(settings.triton)
    client = _client(cli, target)
    producer = None if dry_run else _changelog_producer(settings)
    outcomes: dict[str, int] = {"redriven": 0, "already_answered": 0, "still_failing": 0}
    seen: set[Any] = set()
    try:
        for letter in _letters(cli, bound.galaxy, since):
            if not select(letter):
                continue
            d = letter.letter
            key = (letter.input_position, d.input) if d.HasField("input_offset") else d.input
            if key in seen:
                continue  # the same input dead-lettered again (a retry, a restart)
            seen.add(key)
            stored = None
            if d.entity_id:
                try:
                    (row,) = client.get(bound.galaxy, [d.entity_id], [signal])
                except grpc.RpcError as exc:
                    raise _fail_rpc(exc) from None
                cell = row.signals[signal]
                stored = cell.envelope if cell.found else None
            if resolved_by(stored, d):
                outcome, detail = "already_answered", ""
            elif dry_run:
                outcome, detail = "redriven", "(dry run)"
            else:
                assert producer is not None
                result = redrive(bound, d, models)
                if result.ok:
                    for topic, entity, value in result.rows:
                        producer.produce(topic, key=entity, value=value)
                    outcome, detail = "redriven", ""
                else:
                    failure = result.failure
                    assert failure is not None
                    outcome = "still_failing"
                    detail = f"{failure.error_type}: {failure.error[:120]}"
            outcomes[outcome] += 1
            if as_json:
                click.echo(
                    json.dumps(
                        {
                            "dlq_position": letter.position,
                            "input_position": letter.input_position,
                            "entity_id": d.entity_id,
                            "outcome": outcome,
                            "detail": detail,
                        }
                    )
                )
            else:
                click.echo(
                    f"{letter.position}  {letter.input_position}  {d.entity_id or '-'}  "
                    f"{outcome} {detail}".rstrip()
                )
    finally:
        if producer is not None:
            left = producer.flush(30)
            if left:
                raise click.ClickException(
                    f"{left} re-driven values were not acknowledged by the broker; run again"
                )
        client.close()
    click.echo(
        f"redrive {plugin}: {outcomes['redriven']} re-driven, "
        f"{outcomes['already_answered']} already answered, "
        f"{outcomes['still_failing']} still failing" + (" (dry run)" if dry_run else ""),
        err=True,
    )


def _changelog_producer(settings: Any) -> Any:
    from confluent_kafka import Producer

    from contract.kafka import producer_config

    return Producer(producer_config(settings.kafka, "gss-redrive", delivery_timeout_seconds=30))


def register(main: click.Group) -> None:
    main.add_command(dlq)
