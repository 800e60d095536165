"""Serving verbs: ``gss serve``, ``gss get``, ``gss put``, ``gss galaxies``, ``gss run``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import click
import grpc
from google.protobuf import json_format, symbol_database
from google.protobuf.message import Message

from clients.lookup import EntityResult, GssClient, make_record, make_tombstone
from contract.v1 import envelope_pb2, signal_service_pb2
from gss.cli.context import CliContext, duration_option, pass_cli

OUTCOMES: dict[int, str] = {
    signal_service_pb2.WRITE_OUTCOME_APPLIED: "applied",
    signal_service_pb2.WRITE_OUTCOME_SKIPPED_NOT_NEWER: "skipped_not_newer",
    signal_service_pb2.WRITE_OUTCOME_ACCEPTED: "accepted",
}

target_option = click.option(
    "--target",
    envvar="GSS_TARGET",
    default=None,
    help="host:port of a GSS server (also GSS_TARGET; default: the configured server address).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")


def _target(cli: CliContext, target: str | None) -> str:
    if target:
        return target
    settings = cli.settings()
    if settings.client.target:
        return settings.client.target
    return f"{settings.server.host}:{settings.server.port}"


def _client(cli: CliContext, target: str | None) -> GssClient:
    # TLS and token from the client settings (client.tls, client.token, client.token_file).
    try:
        return GssClient.from_settings(cli.settings().client, _target(cli, target))
    except (OSError, ValueError) as exc:
        raise click.UsageError(f"bad client settings: {exc}") from exc


def _fail_rpc(exc: grpc.RpcError) -> click.ClickException:
    code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return click.ClickException(f"{code}: {details}")


def message_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


@click.command()
@click.option("--host", default=None, help="Address to listen on (settings: server.host).")
@click.option(
    "--port", type=int, default=None, help="Port to listen on; 0 picks one (server.port)."
)
@click.option(
    "--data", type=click.Path(file_okay=False), default=None, help="Store directory (store.path)."
)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=None,
    help="Serving processes on the port: a writer and N-1 readers (server.processes).",
)
@pass_cli
def serve(
    cli: CliContext, host: str | None, port: int | None, data: str | None, processes: int | None
) -> None:
    """Serve the GSS gRPC API until SIGTERM or Ctrl-C (drains in-flight calls, then closes the store)."""
    from gss.server import start_server

    server_overrides = {
        k: v
        for k, v in {"host": host, "port": port, "processes": processes}.items()
        if v is not None
    }
    store_overrides = {"path": data} if data else {}
    settings = cli.settings(server=server_overrides, store=store_overrides)
    server = start_server(settings)
    server.stop_on_signals()
    click.echo(f"GSS serving on {server.address} (metrics on :{server.metrics_port})", err=True)
    server.wait()


@click.command()
@click.argument("galaxy")
@click.argument("entity_ids", nargs=-1, required=True)
@click.option(
    "-s",
    "--signal",
    "signals",
    multiple=True,
    required=True,
    help="Signal as name (its pinned default version) or name@version; repeat for more.",
)
@target_option
@json_option
@pass_cli
def get(
    cli: CliContext,
    galaxy: str,
    entity_ids: tuple[str, ...],
    signals: tuple[str, ...],
    target: str | None,
    as_json: bool,
) -> None:
    """Look up SIGNALS of ENTITY_IDS in GALAXY (ids as decimal or hex text)."""
    try:
        with _client(cli, target) as client:
            rows = client.get(galaxy, entity_ids, signals)
    except grpc.RpcError as exc:
        raise _fail_rpc(exc) from exc
    if as_json:
        click.echo(json.dumps([_row_dict(row) for row in rows], indent=2))
        return
    for row in rows:
        click.echo(f"{galaxy}/{row.entity_id}")
        for name, cell in row.signals.items():
            if cell.found and cell.value is not None and cell.envelope is not None:
                value = json.dumps(message_dict(cell.value), separators=(",", ":"))
                at = cell.envelope.event_time.ToDatetime(UTC).isoformat()
                click.echo(
                    f"  {name}@{cell.version}: {value}  (event time {at}, by {cell.envelope.producer or '?'})"
                )
            else:
                click.echo(f"  {name}: {cell.status.replace('_', ' ')}")


def _row_dict(row: EntityResult) -> dict[str, Any]:
    return {
        "entity_id": row.entity_id,
        "signals": {
            name: {
                "status": cell.status,
                "version": cell.version,
                "value": message_dict(cell.value) if cell.value is not None else None,
                "envelope": message_dict(cell.envelope) if cell.envelope is not None else None,
            }
            for name, cell in row.signals.items()
        },
    }


def _json_records(stream: TextIO) -> Iterator[tuple[int, dict[str, Any]]]:
    text = stream.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"input is not valid JSON: {exc}") from exc
        yield from enumerate(items, start=1)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise click.ClickException(f"line {number} is not valid JSON: {exc}") from exc


def records_from_json(
    stream: TextIO, galaxies: dict[str, signal_service_pb2.Galaxy]
) -> list[envelope_pb2.SignalRecord]:
    """SignalRecords from JSON lines (or a JSON array) of
    ``{"galaxy", "entity_id", "signal": "name@version", "value": {...}, "event_time"?, "producer"?,
    "model_name"?, "model_version"?, "override_ordering"?}`` or, to delete a value,
    ``{"galaxy", "entity_id", "signal", "tombstone": true, "event_time"?}``; value types come
    from the server's registry."""
    records = []
    for number, item in _json_records(stream):
        where = f"record {number}"
        try:
            galaxy = galaxies[item["galaxy"]]
            name, _, version = str(item["signal"]).partition("@")
            spec = next(s for s in galaxy.signals if s.name == name and str(s.version) == version)
        except KeyError as exc:
            raise click.ClickException(f"{where}: missing or unknown {exc}") from exc
        except StopIteration:
            raise click.ClickException(
                f"{where}: galaxy {item['galaxy']} has no signal {item['signal']!r} (name@version)"
            ) from None
        event_time = datetime.fromisoformat(item["event_time"]) if "event_time" in item else None
        if event_time is not None and event_time.tzinfo is None:
            raise click.ClickException(
                f"{where}: event_time needs a UTC offset, e.g. 2026-01-31T12:00:00Z"
            )
        if item.get("tombstone"):
            records.append(
                make_tombstone(
                    galaxy.name,
                    str(item["entity_id"]),
                    f"{name}@{version}",
                    event_time=event_time,
                    producer=item.get("producer", "gss-cli"),
                )
            )
            continue
        cls = symbol_database.Default().GetSymbol(spec.value_type)
        try:
            value = json_format.ParseDict(item.get("value", {}), cls())
        except json_format.ParseError as exc:
            raise click.ClickException(f"{where}: value is not a {spec.value_type}: {exc}") from exc
        records.append(
            make_record(
                galaxy.name,
                str(item["entity_id"]),
                f"{name}@{version}",
                value,
                event_time=event_time,
                producer=item.get("producer", "gss-cli"),
                model_name=item.get("model_name", ""),
                model_version=item.get("model_version", ""),
            )
        )
        records[-1].override_ordering = bool(item.get("override_ordering"))
    return records


@click.command()
@click.argument("source", type=click.File("r"), default="-")
@click.option(
    "--wait-readable", is_flag=True, help="Return once the values are readable (broker mode)."
)
@target_option
@json_option
@pass_cli
def put(
    cli: CliContext, source: TextIO, wait_readable: bool, target: str | None, as_json: bool
) -> None:
    """Write records from SOURCE (JSON lines or a JSON array; - for stdin), all or nothing."""
    try:
        with _client(cli, target) as client:
            galaxies = {g.name: g for g in client.galaxies()}
            records = records_from_json(source, galaxies)
            if not records:
                raise click.ClickException("no records in the input")
            outcomes = client.put(records, wait_readable=wait_readable)
    except grpc.RpcError as exc:
        raise _fail_rpc(exc) from exc
    names = [OUTCOMES.get(o, "unspecified") for o in outcomes]
    if as_json:
        click.echo(json.dumps({"outcomes": names}))
        return
    counts = {name: names.count(name) for name in dict.fromkeys(names)}
    click.echo(", ".join(f"{n} {name.replace('_', ' ')}" for name, n in counts.items()))


@click.command()
@target_option
@json_option
@pass_cli
def galaxies(cli: CliContext, target: str | None, as_json: bool) -> None:
    """List galaxies and their signals."""
    try:
        with _client(cli, target) as client:
            listed = client.galaxies()
    except grpc.RpcError as exc:
        raise _fail_rpc(exc) from exc
    if as_json:
        click.echo(json.dumps([message_dict(g) for g in listed], indent=2))
        return
    for galaxy in listed:
        click.echo(
            f"{galaxy.name}  (key {galaxy.key_type}, {galaxy.partitions} partitions)  {galaxy.description}"
        )
        names = [spec.name for spec in galaxy.signals]
        for spec in galaxy.signals:
            ttl = f", ttl {spec.ttl.ToTimedelta()}" if spec.HasField("ttl") else ""
            # [default] only where there is a choice: names with more than one version.
            flags = "".join(
                f"  [{flag}]"
                for flag, on in (
                    ("default", spec.is_default and names.count(spec.name) > 1),
                    ("deprecated", spec.state == signal_service_pb2.SIGNAL_STATE_DEPRECATED),
                )
                if on
            )
            click.echo(
                f"  {spec.name}@{spec.version}{flags}  {spec.value_type}{ttl}  {spec.description}"
            )


@click.command()
@duration_option
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    default="./gss-data",
    help="Directory for the store and snapshots of this run.",
)
@click.option(
    "--port", type=int, default=None, help="GSS port (default: server.port; 0 picks one)."
)
@click.option(
    "--compute/--no-compute",
    default=True,
    help="Run Triton, the Flink job and the content generator (default), or serving and events only.",
)
@click.option(
    "--rate",
    type=float,
    default=4.0,
    show_default=True,
    help="Content events a second (half of them images; on 2 cores the job with the "
    "pretrained models keeps up with about 3-8 images a second).",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=None,
    help="Serving processes on the port: a writer and N-1 readers (server.processes).",
)
@pass_cli
def run(
    cli: CliContext,
    duration: float | None,
    data: str,
    port: int | None,
    compute: bool,
    rate: float,
    processes: int | None,
) -> None:
    """Run the main job on embedded defaults: broker, Triton, GSS, the Flink job and a content
    generator, showing signals becoming readable and announced."""
    from gss.local.stack import run_local_stack

    overrides: dict[str, Any] = {
        "store": {"path": str(Path(data) / "store")},
        "compute": {"checkpoint_dir": (Path(data) / "flink-checkpoints").resolve().as_uri()},
    }
    server = {k: v for k, v in {"port": port, "processes": processes}.items() if v is not None}
    if server:
        overrides["server"] = server
    settings = cli.settings(**overrides)
    run_local_stack(
        settings,
        Path(data),
        duration=duration,
        out=sys.stdout,
        compute=compute,
        rate_per_second=rate,
    )


def register(main: click.Group) -> None:
    for command in (serve, get, put, galaxies, run):
        main.add_command(command)
