"""Tracing a stored value back (`gss explain`, docs/debugging.md): the availability event that
announced it, and the input records its envelope names (from Kafka while retained, else from
the topic archive).

Everything here reads; nothing joins a consumer group or commits.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from contract.kafka import consumer_config
from contract.settings import ArchiveSettings, KafkaSettings
from contract.topics import TopicKind, topic_name
from contract.v1 import envelope_pb2, events_pb2


@dataclass(frozen=True, slots=True)
class InputRecord:
    """An input record as read back: from ``kafka`` or the ``archive``."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    found_in: str


@dataclass(frozen=True, slots=True)
class Announcement:
    """The availability event of a value: when it was published, and its id."""

    event_id: str
    published_ms: int
    backfill: bool


def _consumer(kafka: KafkaSettings) -> Consumer:
    return Consumer(
        {
            **consumer_config(kafka, "gss-explain", f"gss-explain-{uuid.uuid4()}"),
            "enable.auto.commit": False,
        }
    )


def read_kafka_record(
    kafka: KafkaSettings, topic: str, partition: int, offset: int, timeout_seconds: float = 5.0
) -> InputRecord | None:
    """The record at ``topic/partition:offset`` if Kafka still holds it."""
    consumer = _consumer(kafka)
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            if msg.offset() != offset:
                return None  # gone: retention passed it (or a compacted topic dropped it)
            return InputRecord(
                topic, partition, offset, msg.timestamp()[1], msg.key(), msg.value(), "kafka"
            )
        return None
    finally:
        consumer.close()


def read_archived_record(
    archive: ArchiveSettings, topic: str, partition: int, offset: int
) -> InputRecord | None:
    """The record at ``topic/partition:offset`` from the topic archive, if it holds it."""
    from gss.archive.reader import read_partition
    from gss.archive.storage import open_storage

    if not archive.root:
        return None
    storage = open_storage(archive)
    for record in read_partition(storage, topic, partition, from_offset=offset):
        if record.offset != offset:
            return None
        return InputRecord(
            topic, partition, offset, record.timestamp_ms, record.key, record.value, "archive"
        )
    return None


def read_input(
    kafka: KafkaSettings, archive: ArchiveSettings, position: envelope_pb2.RecordPosition
) -> InputRecord | None:
    """An input record an envelope names: from Kafka while retained, else from the archive."""
    found = read_kafka_record(kafka, position.topic, position.partition, position.offset)
    if found is None:
        found = read_archived_record(archive, position.topic, position.partition, position.offset)
    return found


def find_announcement(
    kafka: KafkaSettings,
    galaxy: str,
    entity_id: str,
    signal: envelope_pb2.SignalRef,
    envelope: envelope_pb2.Envelope,
    *,
    max_records: int = 100_000,
    timeout_seconds: float = 10.0,
) -> Announcement | None:
    """The availability event of the value ``envelope`` describes: on the galaxy's events
    topic, in the partition of its changelog record, from its write time on (events are
    published after the value is readable), the first event naming the same changelog
    position (or, for a direct write, entity, signal and write time)."""
    if not envelope.HasField("write_time"):
        return None
    topic = topic_name(kafka, TopicKind.AVAILABLE, galaxy)
    consumer = _consumer(kafka)
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return None
        partitions = (
            [envelope.source.partition] if envelope.HasField("source") else sorted(meta.partitions)
        )
        start = envelope.write_time.ToMilliseconds() - 1_000
        found = consumer.offsets_for_times(
            [TopicPartition(topic, p, start) for p in partitions], timeout=10
        )
        consumer.assign([tp for tp in found if tp.offset >= 0])
        deadline = time.monotonic() + timeout_seconds
        seen = 0
        while seen < max_records and time.monotonic() < deadline:
            msgs = consumer.consume(500, 0.5)
            if not msgs:
                break
            for msg in msgs:
                if msg.error() is not None:
                    continue
                seen += 1
                event = events_pb2.SignalAvailable.FromString(msg.value() or b"")
                if (event.entity_id, event.signal.name, event.signal.version) != (
                    entity_id,
                    signal.name,
                    signal.version,
                ):
                    continue
                same = (
                    event.position == envelope.source
                    if envelope.HasField("source")
                    else event.write_time == envelope.write_time
                )
                if same:
                    return Announcement(event.event_id, msg.timestamp()[1], event.backfill)
        return None
    finally:
        consumer.close()
