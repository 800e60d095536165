"""Event verbs: ``gss broker`` (a local Kafka-protocol broker), ``gss ingest`` (the changelog
ingester and outbox publisher without the server) and ``gss watch`` (print availability events)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import click
import grpc
from google.protobuf import json_format

from contract.v1 import envelope_pb2, events_pb2, signal_service_pb2
from gss.cli.context import CliContext, pass_cli, stop_on_signals


@click.command()
@click.option("--port", type=int, default=0, help="Port on 127.0.0.1 (default: one the OS picks).")
@click.option("--no-topics", is_flag=True, help="Do not create the galaxies' topics.")
@pass_cli
def broker(cli: CliContext, port: int, no_topics: bool) -> None:
    """Run a local, in-memory Kafka-protocol broker (tansu) until Ctrl-C.

    For development: everything it holds is lost when it stops. Prints the bootstrap address
    to export as GSS_KAFKA__BOOTSTRAP_SERVERS for `gss serve`, `gss ingest` and `gss watch`.
    """
    from contract.topics import ensure_topics
    from gss.local.broker import LocalBroker

    registry = cli.registry()
    stop = stop_on_signals()
    with LocalBroker(port=port or None) as local:
        settings = cli.settings(kafka={"bootstrap_servers": local.bootstrap_servers})
        created = [] if no_topics else ensure_topics(settings.kafka, registry)
        click.echo(f"broker listening on {local.bootstrap_servers} (in memory; Ctrl-C stops it)")
        if created:
            click.echo(f"created topics: {', '.join(sorted(created))}")
        click.echo(f"export GSS_KAFKA__BOOTSTRAP_SERVERS={local.bootstrap_servers}")
        while not stop.wait(1.0):
            if not local.running:
                raise click.ClickException("the broker process exited")


@click.command()
@click.option(
    "--data", type=click.Path(file_okay=False), default=None, help="Store directory (store.path)."
)
@pass_cli
def ingest(cli: CliContext, data: str | None) -> None:
    """Materialise the galaxies' changelogs into the store and publish availability events,
    until SIGTERM or Ctrl-C (no gRPC server: `gss serve` does the same while serving).

    Resumes from the offsets stored in the store; use it to rebuild a store by replay.
    """
    from contract.errors import GssError
    from gss.kafka.events_runtime import EventsRuntime
    from gss.server import open_store

    settings = cli.settings(store={"path": data} if data else {})
    registry = cli.registry()
    stop = stop_on_signals()
    store = open_store(settings, registry)
    try:
        runtime = EventsRuntime(settings, registry, store).start()
    except GssError as exc:
        store.close()
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"ingesting {', '.join(runtime.ingester.topics)} into {settings.store.path}", err=True
    )
    try:
        stop.wait()
    finally:
        runtime.stop()
        store.close()


def _event_dict(event: events_pb2.SignalAvailable, partition: int, offset: int) -> dict[str, Any]:
    out = json_format.MessageToDict(event, preserving_proto_field_name=True)
    out["value_hash"] = event.value_hash.hex()
    if event.HasField("value"):
        from clients.lookup import decode_value

        out["value"] = json_format.MessageToDict(
            decode_value(event.value), preserving_proto_field_name=True
        )
    out["partition"], out["offset"] = partition, offset
    return out


@click.command()
@click.option("--galaxy", required=True, help="Galaxy whose events to print.")
@click.option(
    "-s",
    "--signal",
    "signals",
    multiple=True,
    help="Only this signal (name or name@version); repeat for more.",
)
@click.option(
    "--from-beginning", is_flag=True, help="Start with the oldest retained event, not the live end."
)
@click.option(
    "--target",
    default=None,
    help="Read through a GSS server's WatchSignals (host:port) instead of Kafka.",
)
@click.option("--max-events", type=int, default=None, help="Stop after this many events.")
@click.option(
    "--idle-timeout",
    type=float,
    default=None,
    help="Stop after this many seconds without an event.",
)
@pass_cli
def watch(
    cli: CliContext,
    galaxy: str,
    signals: tuple[str, ...],
    from_beginning: bool,
    target: str | None,
    max_events: int | None,
    idle_timeout: float | None,
) -> None:
    """Print availability events of a galaxy as JSON lines (Kafka directly, or WatchSignals)."""
    from clients.lookup import parse_signal_ref

    refs = [parse_signal_ref(s) for s in signals]
    count = 0
    last = time.monotonic()

    def done() -> bool:
        return (max_events is not None and count >= max_events) or (
            idle_timeout is not None and time.monotonic() - last >= idle_timeout
        )

    stop = stop_on_signals()
    if target:
        request = signal_service_pb2.WatchSignalsRequest(
            galaxy=galaxy, signals=refs, from_beginning=from_beginning
        )
        from clients.lookup import GssClient

        with GssClient.from_settings(cli.settings().client, target) as client:
            call = client.watch(request)
            if idle_timeout is not None:
                threading.Thread(target=_cancel_when, args=(call, done, stop), daemon=True).start()
            try:
                for response in call:
                    click.echo(
                        json.dumps(
                            _event_dict(
                                response.event,
                                response.position.partition,
                                response.position.offset,
                            )
                        )
                    )
                    count, last = count + 1, time.monotonic()
                    if done() or stop.is_set():
                        call.cancel()
                        break
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    raise click.ClickException(f"{exc.code().name}: {exc.details()}") from exc
        return

    from contract.errors import GssError
    from gss.kafka.watch import AvailableReader

    settings = cli.settings()
    if not settings.kafka.bootstrap_servers:
        raise click.UsageError(
            "no broker configured: set GSS_KAFKA__BOOTSTRAP_SERVERS (or kafka.bootstrap_servers), "
            "or pass --target to watch through a GSS server"
        )
    try:
        reader = AvailableReader(
            settings.kafka,
            cli.registry().galaxy(galaxy),
            signals=_signal_versions(refs),
            from_beginning=from_beginning,
            client_id="gss-cli-watch",
        )
    except GssError as exc:
        raise click.ClickException(str(exc)) from exc
    with reader:
        while not stop.is_set() and not done():
            for watched in reader.poll(0.5):
                click.echo(
                    json.dumps(_event_dict(watched.event, watched.partition, watched.offset))
                )
                count, last = count + 1, time.monotonic()
                if done():
                    break


def _signal_versions(refs: list[envelope_pb2.SignalRef]) -> dict[str, int]:
    return {ref.name: ref.version for ref in refs}


def _cancel_when(call: Any, done: Any, stop: threading.Event) -> None:
    while not call.done():
        if done() or stop.is_set():
            call.cancel()
            return
        time.sleep(0.2)


def register(main: click.Group) -> None:
    for command in (broker, ingest, watch):
        main.add_command(command)
