"""The dead-letter format: one ``gss.v1.DeadLetter`` message per record GSS gave up on.

Both producers of dead letters write them here, to the galaxy's ``gss.<galaxy>.dlq``
(``KafkaSettings.dlq_topic``, :data:`contract.topics.TopicKind.DLQ`):

- the changelog ingester (``gss.kafka.ingester``), for a changelog record it cannot apply:
  :func:`from_record` (reasons ``EMPTY`` … ``KEY_MISMATCH``);
- the compute job (``compute.execution``), for an input a plugin could not turn into a value:
  :func:`build` (reasons ``PLUGIN_ERROR``, ``BAD_INPUT``, ``BAD_OUTPUT``, ``TOO_LATE``).

Everything is in the record's value, because PyFlink's Kafka sink cannot set record headers;
the ingester adds a ``content-type`` header (:data:`CONTENT_TYPE`) for tooling, compute's
records have none, so consumers must not depend on it. The record's key is
:func:`kafka_key`: the entity's canonical bytes when known (so a dead letter sits on its
entity's partition), else the input's own key. :func:`parse` reads one back, whoever wrote it.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from contract.headers import header_items
from contract.v1 import dead_letter_pb2, envelope_pb2

DeadLetter = dead_letter_pb2.DeadLetter
Reason = dead_letter_pb2.DeadLetter.Reason

# The value of the ``content-type`` header (contract.headers.CONTENT_TYPE) on the ingester's
# dead letters. Compute's have no headers.
CONTENT_TYPE = b"application/x-protobuf; messageType=gss.v1.DeadLetter"
# The ``producer`` of the changelog ingester's dead letters (compute's: "flink:<job_name>").
INGESTER = "gss-ingester"
# Error messages are cut to this many characters.
ERROR_MAX_CHARS = 4096


def build(
    reason: int,
    *,
    galaxy: str,
    producer: str,
    input_topic: str,
    input: bytes,
    error: BaseException | str | None = None,
    error_type: str | None = None,
    attempts: int = 0,
    signal: envelope_pb2.SignalRef | None = None,
    entity_id: str = "",
    event_time_ms: int | None = None,
    input_partition: int | None = None,
    input_offset: int | None = None,
    input_key: bytes | None = None,
    input_headers: Iterable[tuple[str, bytes]] = (),
    input_timestamp_ms: int | None = None,
    failed_at_ms: int | None = None,
    plugin: str = "",
    plugin_revision: str = "",
) -> dead_letter_pb2.DeadLetter:
    """A dead letter. ``error`` is the exception of the last attempt (its type name becomes
    ``error_type`` unless given) or a message; ``None`` values leave their fields unset (the
    position, key and timestamp of an input compute cannot see, for one)."""
    if isinstance(error, BaseException):
        message = str(error)
        error_type = type(error).__name__ if error_type is None else error_type
    else:
        message = error or ""
    letter = DeadLetter(
        reason=reason,  # type: ignore[arg-type]
        galaxy=galaxy,
        entity_id=entity_id,
        error_type=error_type or "",
        error=message[:ERROR_MAX_CHARS],
        attempts=attempts,
        input_topic=input_topic,
        input=input,
        producer=producer,
        input_headers=[DeadLetter.Header(key=k, value=v) for k, v in input_headers],
        plugin=plugin,
        plugin_revision=plugin_revision,
    )
    if signal is not None:
        letter.signal.CopyFrom(signal)
    if event_time_ms is not None:
        letter.event_time.FromMilliseconds(event_time_ms)
    if input_partition is not None:
        letter.input_partition = input_partition
    if input_offset is not None:
        letter.input_offset = input_offset
    if input_key is not None:
        letter.input_key = input_key
    if input_timestamp_ms is not None:
        letter.input_timestamp.FromMilliseconds(input_timestamp_ms)
    if failed_at_ms is None:
        letter.failed_at.GetCurrentTime()
    else:
        letter.failed_at.FromMilliseconds(failed_at_ms)
    return letter


def from_record(
    msg: Message,
    reason: int,
    *,
    galaxy: str,
    error: BaseException | str,
    error_type: str | None = None,
    record: envelope_pb2.SignalRecord | None = None,
    entity_id: str = "",
    producer: str = INGESTER,
) -> dead_letter_pb2.DeadLetter:
    """The dead letter of a consumed Kafka record (the ingester's): its position, key, value,
    headers and timestamp as read, and what the decoded ``record`` (if it decoded) names."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    timestamp_type, timestamp_ms = msg.timestamp()
    signal, event_time_ms = None, None
    if record is not None:
        signal = record.signal if record.HasField("signal") else None
        if record.envelope.HasField("event_time"):
            event_time_ms = record.envelope.event_time.ToMilliseconds()
    return build(
        reason,
        galaxy=galaxy,
        producer=producer,
        input_topic=topic or "",
        input=msg.value() or b"",
        error=error,
        error_type=error_type,
        signal=signal,
        entity_id=entity_id,
        event_time_ms=event_time_ms,
        input_partition=partition,
        input_offset=offset,
        input_key=msg.key(),
        input_headers=header_items(msg),
        input_timestamp_ms=None if timestamp_type == TIMESTAMP_NOT_AVAILABLE else timestamp_ms,
    )


def kafka_key(entity: bytes | None, input_key: bytes | None) -> bytes | None:
    """The dead letter's Kafka key: the entity's canonical bytes when known, else the input's
    key (None: the input had none)."""
    return entity if entity else input_key


def serialize(letter: dead_letter_pb2.DeadLetter) -> bytes:
    """The dead letter as the Kafka record's value."""
    return letter.SerializeToString()


def parse(value: bytes) -> dead_letter_pb2.DeadLetter:
    """A dead letter read from ``gss.<galaxy>.dlq``, written by the ingester or compute;
    ``google.protobuf.message.DecodeError`` if ``value`` is not one."""
    return DeadLetter.FromString(value)


def reason_label(reason: int) -> str:
    """A reason as metrics and logs name it: ``PLUGIN_ERROR`` -> ``plugin_error``."""
    return Reason.Name(reason).lower()  # type: ignore[arg-type]
