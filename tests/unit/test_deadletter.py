"""The one dead-letter format (contract/deadletter.py): what the ingester and the compute job
write to gss.<galaxy>.dlq, and reading it back."""

from __future__ import annotations

import pytest
from confluent_kafka import Message
from google.protobuf.message import DecodeError
from helpers import dhash_record, image_id

from compute.binding import bind
from compute.execution import Reason as ComputeReason
from compute.execution import dead_letter
from compute.plugin import Source, signal
from contract import deadletter
from contract.deadletter import Reason
from contract.registry import Registry
from contract.settings import load_settings
from contract.v1.content_pb2 import ImageEvent
from contract.v1.signals_pb2 import DHash


def test_an_ingester_dead_letter_round_trips_with_the_record_as_read() -> None:
    """from_record keeps the record's position, key, value, headers and timestamp, and what
    it decoded to; parse reads back the same message."""
    record = dhash_record(1, 1, seconds=3)
    msg = Message(
        topic="gss.images.changelog",
        partition=2,
        offset=17,
        key=b"wrong key",
        value=record.SerializeToString(),
        timestamp=(1, 1_700_000_000_123),
        headers=[("origin", b"test"), ("trace", b"")],
    )
    letter = deadletter.from_record(
        msg,
        Reason.KEY_MISMATCH,
        galaxy="images",
        error="the Kafka key is not the entity",
        record=record,
        entity_id=image_id(1),
    )
    back = deadletter.parse(deadletter.serialize(letter))
    assert back == letter
    assert (back.reason, back.galaxy, back.producer) == (
        Reason.KEY_MISMATCH,
        "images",
        deadletter.INGESTER,
    )
    assert (back.error_type, back.error, back.attempts) == (
        "",
        "the Kafka key is not the entity",
        0,
    )
    assert (back.input_topic, back.input_partition, back.input_offset) == (
        "gss.images.changelog",
        2,
        17,
    )
    assert back.input_key == b"wrong key"
    assert back.input == record.SerializeToString()
    assert [(h.key, h.value) for h in back.input_headers] == [("origin", b"test"), ("trace", b"")]
    assert back.input_timestamp.ToMilliseconds() == 1_700_000_000_123
    assert (back.signal, back.entity_id) == (record.signal, image_id(1))
    assert back.event_time == record.envelope.event_time
    assert back.HasField("failed_at")


def test_an_undecodable_record_keeps_its_own_key_and_leaves_the_rest_unset() -> None:
    """Nothing decoded: no signal, entity or event time; a record without a key has none."""
    msg = Message(topic="gss.images.changelog", partition=0, offset=0, key=None, value=b"\xff")
    letter = deadletter.from_record(
        msg,
        Reason.UNDECODABLE,
        galaxy="images",
        error=DecodeError("Error parsing message"),
    )
    back = deadletter.parse(deadletter.serialize(letter))
    assert (back.error_type, back.error) == ("DecodeError", "Error parsing message")
    assert not back.HasField("signal")
    assert not back.HasField("event_time")
    assert not back.HasField("input_key")
    assert (back.input_partition, back.input_offset) == (0, 0)
    assert back.HasField("input_partition")
    assert back.HasField("input_offset")
    assert deadletter.kafka_key(None, msg.key()) is None


def test_a_compute_dead_letter_round_trips(registry: Registry) -> None:
    """compute.execution.dead_letter builds through the same module: same message type, same
    topic as the ingester's, keyed by the entity; the input's position is left unset."""
    plugin = signal(
        galaxy="images",
        name="dhash",
        version=1,
        source=Source(topic="content.images", schema=ImageEvent, entity="image_signature"),
    )(lambda e: DHash())
    (bound,) = bind([plugin], registry, load_settings(compute={"job_name": "j"}))
    entity = bytes.fromhex(image_id(2))
    topic, key, value = dead_letter(
        bound,
        ComputeReason.PLUGIN_ERROR,
        entity=entity,
        payload=b"event bytes",
        event_ms=1_000,
        error=RuntimeError("boom " * 2000),
        attempts=3,
    )
    assert ComputeReason is Reason
    assert topic == "gss.images.dlq"
    assert key == entity == deadletter.kafka_key(entity, None)
    back = deadletter.parse(value)
    assert (back.reason, back.producer, back.galaxy) == (Reason.PLUGIN_ERROR, "flink:j", "images")
    assert (back.signal.name, back.signal.version, back.entity_id) == ("dhash", 1, image_id(2))
    assert (back.error_type, back.attempts) == ("RuntimeError", 3)
    assert len(back.error) == deadletter.ERROR_MAX_CHARS
    assert (back.input_topic, back.input) == ("content.images", b"event bytes")
    assert back.event_time.ToMilliseconds() == 1_000
    for unknown in ("input_partition", "input_offset", "input_key", "input_timestamp"):
        assert not back.HasField(unknown)
    assert list(back.input_headers) == []
    unknown_entity = dead_letter(
        bound, Reason.BAD_INPUT, entity=None, payload=b"?", event_ms=None, error=ValueError("x")
    )
    assert unknown_entity[1] == b""


def test_reason_labels_and_content_type() -> None:
    """Metrics and logs name reasons in lower case; the content-type names the message."""
    assert deadletter.reason_label(Reason.UNDECODABLE) == "undecodable"
    assert deadletter.reason_label(Reason.PLUGIN_ERROR) == "plugin_error"
    assert deadletter.CONTENT_TYPE.endswith(b"messageType=gss.v1.DeadLetter")
    assert deadletter.DeadLetter.DESCRIPTOR.full_name == "gss.v1.DeadLetter"
    with pytest.raises(DecodeError):
        deadletter.parse(b"\xff\xff")
