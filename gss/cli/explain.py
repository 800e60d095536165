"""``gss explain``: where each signal value of an entity came from (docs/debugging.md)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click
import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from gss.cli.context import CliContext, pass_cli
from gss.cli.serving import _client, _fail_rpc, json_option, target_option

# Strings longer than this (image bytes as base64, say) are shown by their length only.
_SHOWN_CHARS = 120


def _brief(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _brief(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_brief(v) for v in value]
    if isinstance(value, str) and len(value) > _SHOWN_CHARS:
        return f"<{len(value)} characters>"
    return value


def _when(ts: Any) -> str | None:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return datetime.fromtimestamp(ts.ToMilliseconds() / 1000, UTC).isoformat(
        timespec="milliseconds"
    )


def _decode_input(raw: bytes | None, plugin_code: str, plugins: dict[str, Any]) -> Any:
    """The input record's value as JSON: a changelog record, or the plugin's content event."""
    from contract.v1.envelope_pb2 import SignalRecord

    if raw is None:
        return None
    plugin = plugins.get(plugin_code)
    schema: type[Message] | None = (
        plugin.source.schema if plugin is not None and plugin.source is not None else None
    )
    for kind in [k for k in (schema, SignalRecord) if k is not None]:
        try:
            message = kind.FromString(raw)
        except DecodeError:
            continue
        return {
            "type": message.DESCRIPTOR.full_name,
            **_brief(json_format.MessageToDict(message, preserving_proto_field_name=True)),
        }
    return {"bytes": len(raw)}


def _plugins_by_code(cli: CliContext) -> dict[str, Any]:
    from compute.binding import plugin_code
    from compute.loader import load_plugins

    try:
        return {plugin_code(p)[0]: p for p in load_plugins(cli.settings().compute.plugins)}
    except Exception:  # the compute extra or plugin modules may be absent where explain runs
        return {}


@click.command()
@click.argument("galaxy")
@click.argument("entity_id")
@click.option(
    "--signal",
    "signals",
    multiple=True,
    help="Only this signal (name or name@version); default: every signal of the galaxy.",
)
@click.option(
    "--no-inputs", is_flag=True, help="Do not read the input records (Kafka, then the archive)."
)
@target_option
@json_option
@pass_cli
def explain(
    cli: CliContext,
    galaxy: str,
    entity_id: str,
    signals: tuple[str, ...],
    no_inputs: bool,
    target: str | None,
    as_json: bool,
) -> None:
    """For each signal of GALAXY/ENTITY_ID: the value, its event and write times, producer,
    plugin and code revision, model, the changelog record it was applied from, when its
    availability event was published, and the input records it was computed from (read
    from Kafka while retained, else from the topic archive)."""
    from contract.v1.envelope_pb2 import SignalRef
    from gss.lineage import find_announcement, read_input

    settings = cli.settings()
    client = _client(cli, target)
    try:
        if not signals:
            described = client.describe(galaxy)
            signals = tuple(f"{s.name}@{s.version}" for s in described.signals)
        (row,) = client.get(galaxy, [entity_id], list(signals))
    except grpc.RpcError as exc:
        raise _fail_rpc(exc) from None
    finally:
        client.close()
    plugins = {} if no_inputs else _plugins_by_code(cli)
    kafka = settings.kafka if settings.kafka.bootstrap_servers else None
    out = []
    for name, cell in row.signals.items():
        item: dict[str, Any] = {"signal": name, "status": cell.status}
        envelope = cell.envelope
        if cell.found and cell.value is not None and envelope is not None:
            item["value"] = _brief(
                json_format.MessageToDict(cell.value, preserving_proto_field_name=True)
            )
            source = envelope.source if envelope.HasField("source") else None
            item.update(
                event_time=_when(envelope.event_time),
                write_time=_when(envelope.write_time),
                producer=envelope.producer,
                plugin=envelope.plugin or None,
                plugin_revision=envelope.plugin_revision or None,
                model=f"{envelope.model_name}:{envelope.model_version}"
                if envelope.model_name
                else None,
                backfill=envelope.backfill,
                changelog=f"{source.topic}/{source.partition}:{source.offset}" if source else None,
            )
            if kafka is not None:
                ref_name, _, version = name.partition("@")
                ref = SignalRef(name=ref_name, version=int(version or cell.version))
                announced = find_announcement(kafka, galaxy, row.entity_id, ref, envelope)
                item["announced"] = (
                    {
                        "at": datetime.fromtimestamp(announced.published_ms / 1000, UTC).isoformat(
                            timespec="milliseconds"
                        ),
                        "event_id": announced.event_id,
                    }
                    if announced
                    else None
                )
            inputs = []
            for p in envelope.inputs:
                entry: dict[str, Any] = {"position": f"{p.topic}/{p.partition}:{p.offset}"}
                if not no_inputs and kafka is not None:
                    record = read_input(kafka, settings.archive, p)
                    entry["found_in"] = record.found_in if record else None
                    if record is not None:
                        entry["record"] = _decode_input(record.value, envelope.plugin, plugins)
                inputs.append(entry)
            item["inputs"] = inputs
        out.append(item)
    if as_json:
        click.echo(json.dumps({"galaxy": galaxy, "entity_id": row.entity_id, "signals": out}))
        return
    click.echo(f"{galaxy}/{row.entity_id}")
    for item in out:
        click.echo(f"  {item['signal']}: {item['status']}")
        for key in (
            "value",
            "event_time",
            "write_time",
            "producer",
            "plugin",
            "plugin_revision",
            "model",
            "backfill",
            "changelog",
            "announced",
        ):
            if item.get(key) not in (None, False):
                shown = item[key]
                click.echo(
                    f"    {key:<16} {json.dumps(shown) if isinstance(shown, dict) else shown}"
                )
        for entry in item.get("inputs", []):
            found = f" ({entry['found_in']})" if entry.get("found_in") else ""
            shown_record = f" {json.dumps(entry['record'])}" if entry.get("record") else ""
            click.echo(f"    input            {entry['position']}{found}{shown_record}")


def register(main: click.Group) -> None:
    main.add_command(explain)
