"""What the signal explorer shows, as JSON-ready dicts (docs/debugging.md, "Explorer").

Signals, values and lineage come from a GSS server through the gRPC API, with the browser
caller's credentials, so the API's access rules apply to the page as to any client. Recent
events and dead letters are read from Kafka, and only after the caller has shown it may read
the galaxy (a DescribeGalaxy with its credentials). Ingest lag and freshness come from the
server's Prometheus endpoint and the recent events.
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families

from clients.lookup import GssClient
from contract.kafka import consumer_config
from contract.settings import KafkaSettings
from contract.topics import TopicKind, topic_name
from contract.v1 import events_pb2, signal_service_pb2

_STATES = {
    signal_service_pb2.SIGNAL_STATE_ACTIVE: "active",
    signal_service_pb2.SIGNAL_STATE_DEPRECATED: "deprecated",
}


def _dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def galaxy_dict(galaxy: signal_service_pb2.Galaxy) -> dict[str, Any]:
    return {
        "name": galaxy.name,
        "key_type": galaxy.key_type,
        "partitions": galaxy.partitions,
        "description": galaxy.description,
        "signals": [
            {
                "name": s.name,
                "version": s.version,
                "value_type": s.value_type,
                "state": _STATES.get(s.state, "active"),
                "default": s.is_default,
                "description": s.description,
            }
            for s in galaxy.signals
        ],
    }


def galaxies(client: GssClient) -> list[dict[str, Any]]:
    """Every galaxy the caller may read, with its signals' versions, states and value types."""
    return [galaxy_dict(client.describe(g.name)) for g in client.galaxies()]


def entity(client: GssClient, galaxy: str, entity_id: str) -> dict[str, Any]:
    """Every signal version of one entity, with each value's envelope (its lineage)."""
    described = client.describe(galaxy)
    refs = [f"{s.name}@{s.version}" for s in described.signals]
    (row,) = client.get(galaxy, [entity_id], refs)
    signals = []
    for ref, cell in row.signals.items():
        item: dict[str, Any] = {"signal": ref, "status": cell.status}
        if cell.found and cell.value is not None:
            item["value"] = _dict(cell.value)
        if cell.envelope is not None:
            envelope = _dict(cell.envelope)
            envelope["inputs"] = [
                f"{p.topic}/{p.partition}:{p.offset}" for p in cell.envelope.inputs
            ]
            if cell.envelope.HasField("source"):
                s = cell.envelope.source
                envelope["source"] = f"{s.topic}/{s.partition}:{s.offset}"
            item["envelope"] = envelope
        signals.append(item)
    return {"galaxy": galaxy, "entity_id": row.entity_id, "signals": signals}


def recent_events(kafka: KafkaSettings, galaxy: str, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` availability events of the galaxy (newest first), each with when
    it was published."""
    topic = topic_name(kafka, TopicKind.AVAILABLE, galaxy)
    consumer = Consumer(
        {
            **consumer_config(kafka, "gss-ui", f"gss-ui-{uuid.uuid4()}"),
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=5).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        assign = []
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
            assign.append(TopicPartition(topic, p, max(low, high - limit)))
        consumer.assign(assign)
        out: list[tuple[int, dict[str, Any]]] = []
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            msgs = consumer.consume(500, 0.3)
            if not msgs:
                break
            for msg in msgs:
                if msg.error() is not None or not msg.value():
                    continue
                event = events_pb2.SignalAvailable.FromString(msg.value() or b"")
                published = msg.timestamp()[1]
                out.append(
                    (
                        published,
                        {
                            "published_ms": published,
                            "event_id": event.event_id,
                            "entity_id": event.entity_id,
                            "signal": f"{event.signal.name}@{event.signal.version}",
                            "event_time_ms": event.event_time.ToMilliseconds(),
                            "write_time_ms": event.write_time.ToMilliseconds(),
                            "producer": event.producer,
                            "backfill": event.backfill,
                            "deleted": event.deleted,
                        },
                    )
                )
        out.sort(key=lambda item: item[0], reverse=True)
        return [event for _, event in out[:limit]]
    finally:
        consumer.close()


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def freshness(events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """From recent live events (backfills aside): how long after the fact a value was
    announced, and how long after it became readable (seconds, p50 and p99)."""
    live = [e for e in events if not e["backfill"] and not e["deleted"]]
    age = [(e["published_ms"] - e["event_time_ms"]) / 1000 for e in live]
    announce = [(e["published_ms"] - e["write_time_ms"]) / 1000 for e in live]
    return {
        "events": len(live),
        "fact_to_announced_p50_s": _quantile(age, 0.5),
        "fact_to_announced_p99_s": _quantile(age, 0.99),
        "readable_to_announced_p50_s": _quantile(announce, 0.5),
        "readable_to_announced_p99_s": _quantile(announce, 0.99),
    }


def ingest_health(metrics_url: str | None) -> dict[str, Any]:
    """Per galaxy from the server's metrics: records not yet applied (summed over hosted
    partitions) and how long ago the newest applied record was written; the outbox depth."""
    if not metrics_url:
        return {"available": False, "reason": "no metrics URL (ui.metrics_url)"}
    try:
        with urllib.request.urlopen(metrics_url, timeout=3) as response:
            text = response.read().decode()
    except OSError as exc:
        return {"available": False, "reason": f"{metrics_url}: {exc}"}
    galaxies: dict[str, dict[str, Any]] = {}
    outbox = None
    now = time.time()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            galaxy = sample.labels.get("galaxy")
            if sample.name == "gss_changelog_lag_records" and galaxy:
                entry = galaxies.setdefault(galaxy, {"lag_records": 0})
                entry["lag_records"] = entry.get("lag_records", 0) + int(sample.value)
            elif sample.name == "gss_changelog_last_record_timestamp_seconds" and galaxy:
                galaxies.setdefault(galaxy, {"lag_records": 0})["last_applied_age_s"] = round(
                    now - sample.value, 3
                )
            elif sample.name == "gss_outbox_entries":
                outbox = int(sample.value)
    return {"available": True, "galaxies": galaxies, "outbox_entries": outbox}


def dead_letters(
    kafka: KafkaSettings, galaxy: str, since_ms: int, samples: int = 5
) -> dict[str, Any]:
    """The galaxy's dead letters since ``since_ms``: counts by signal and reason, and the
    newest few in full."""
    from gss.dlq import Stats, letter_dict, read_letters

    stats = Stats()
    newest: list[Any] = []
    for letter in read_letters(kafka, galaxy, since_ms=since_ms, idle_seconds=1.0, max_seconds=10):
        stats.add(letter)
        newest = [*newest[-(samples - 1) :], letter] if samples > 1 else [letter]
    return {
        "total": stats.total,
        "by_signal_reason": [
            {"signal": s, "reason": r, "count": n}
            for (s, r), n in stats.by_signal_reason.most_common()
        ],
        "samples": [
            {k: v for k, v in letter_dict(letter).items() if k != "input"}
            for letter in reversed(newest)
        ],
    }
