"""The ingester's batch step without a broker: validation into dead letters, offsets stored
with the values, and idempotence when a batch is seen again."""

from __future__ import annotations

import pytest
from confluent_kafka import Message
from helpers import count_record, dhash_record, image_id

from contract import deadletter
from contract.deadletter import Reason
from contract.registry import Registry
from contract.settings import KafkaSettings
from contract.v1 import envelope_pb2, signals_pb2
from gss.kafka.ingester import (
    DeadLetter,
    Ingester,
    dead_letter_entry,
    decode_record,
    stored_offsets,
)
from gss.kafka.meta import OUTBOX_PREFIX, EntryKind, OutboxEntry
from gss.kafka.outbox import Outbox
from store.db import SignalStore

TOPIC = "gss.images.changelog"
KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:1")


def message(
    record: envelope_pb2.SignalRecord | bytes,
    offset: int,
    *,
    key: bytes | None = None,
    partition: int = 0,
    topic: str = TOPIC,
) -> Message:
    value = record if isinstance(record, bytes) else record.SerializeToString()
    if key is None and not isinstance(record, bytes):
        key = bytes.fromhex(record.entity_id)
    return Message(
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        value=value,
        timestamp=(1, 1_700_000_000_000),
        headers=[("origin", b"test")],
    )


def _reason(registry: Registry, msg: Message) -> int:
    with pytest.raises(DeadLetter) as caught:
        decode_record(registry.galaxy("images"), registry, msg, 1)
    return caught.value.reason


def test_malformed_records_are_classified(registry: Registry) -> None:
    """Each kind of malformed changelog record gets its own dead-letter reason."""
    good = dhash_record(1, 1)
    unknown = dhash_record(1, 1)
    unknown.signal.name = "no_such_signal"
    wrong_type = dhash_record(1, 1)
    wrong_type.value.Pack(signals_pb2.Embedding(values=[1.0]))
    no_time = dhash_record(1, 1)
    no_time.envelope.ClearField("event_time")
    pins = count_record(5, 1)
    assert _reason(registry, message(b"\xff\xff garbage", 0, key=b"x")) == Reason.UNDECODABLE
    assert _reason(registry, message(b"", 0, key=b"x")) == Reason.EMPTY
    assert _reason(registry, message(pins, 0, key=b"k")) == Reason.WRONG_GALAXY
    assert _reason(registry, message(unknown, 0)) == Reason.UNKNOWN_SIGNAL
    assert _reason(registry, message(wrong_type, 0)) == Reason.WRONG_TYPE
    assert _reason(registry, message(no_time, 0)) == Reason.INVALID_RECORD
    assert _reason(registry, message(good, 0, key=b"not the entity")) == Reason.KEY_MISMATCH
    write = decode_record(registry.galaxy("images"), registry, message(good, 7), 1)
    assert write.key.startswith(bytes.fromhex(image_id(1)))


def test_a_batch_commits_values_dead_letters_and_offsets_together(
    store: SignalStore, registry: Registry
) -> None:
    """Good records are applied, bad ones dead-lettered (a gss.v1.DeadLetter with the reason,
    the error, the source position and the record as read), and every partition's next offset
    (bad records included) is stored in the same batch."""
    outbox = Outbox(store, registry, KAFKA)
    ingester = Ingester(store, registry, KAFKA, outbox)
    batch = [
        message(dhash_record(1, 1), 0),
        message(b"\xff\xff garbage", 1, key=b"x"),
        message(dhash_record(2, 2), 2),
        message(dhash_record(3, 3), 0, partition=3),
    ]
    ingester._apply(batch)
    assert stored_offsets(store, TOPIC) == {0: 3, 3: 1}
    entries = [OutboxEntry.decode(v) for _, v in store.scan_meta(OUTBOX_PREFIX)]
    assert [e.kind for e in entries].count(EntryKind.AVAILABLE) == 3
    (dead,) = [e for e in entries if e.kind is EntryKind.DLQ]
    letter = deadletter.parse(dead.value)
    assert letter.reason == Reason.UNDECODABLE
    assert letter.error.startswith("not a gss.v1.SignalRecord")
    assert letter.error_type == "DecodeError"
    assert (letter.input_topic, letter.input_partition, letter.input_offset) == (TOPIC, 0, 1)
    assert [(h.key, h.value) for h in letter.input_headers] == [("origin", b"test")]
    assert letter.input == b"\xff\xff garbage"
    assert letter.input_key == b"x"
    assert letter.input_timestamp.ToMilliseconds() == 1_700_000_000_000
    assert (letter.galaxy, letter.producer, letter.attempts) == ("images", deadletter.INGESTER, 0)
    assert dead.key == b"x"  # no entity known: the record's own key
    assert dict(dead.headers) == {"content-type": deadletter.CONTENT_TYPE}
    assert ingester.stats.applied == 3
    assert ingester.stats.dead_lettered == 1


def test_a_dead_letter_names_what_the_record_decoded_to(registry: Registry) -> None:
    """A record that decoded but cannot be applied: its dead letter names its signal, entity
    and event time, and is keyed by the entity (not the wrong key it came with)."""
    galaxy = registry.galaxy("images")
    record = dhash_record(1, 1, seconds=5)
    msg = message(record, 4, key=b"not the entity", partition=2)
    with pytest.raises(DeadLetter) as caught:
        decode_record(galaxy, registry, msg, 1)
    entry = dead_letter_entry(galaxy, msg, caught.value)
    letter = deadletter.parse(entry.value)
    assert letter.reason == Reason.KEY_MISMATCH
    assert "is not the canonical bytes of entity" in letter.error
    assert (letter.signal.name, letter.signal.version) == ("dhash", record.signal.version)
    assert letter.entity_id == image_id(1)
    assert letter.event_time == record.envelope.event_time
    assert (letter.input_partition, letter.input_offset) == (2, 4)
    assert letter.input_key == b"not the entity"
    assert envelope_pb2.SignalRecord.FromString(letter.input) == record
    assert entry.key == bytes.fromhex(image_id(1))


def test_a_batch_seen_twice_changes_nothing(store: SignalStore, registry: Registry) -> None:
    """Records applied once are skipped the second time: no value changes, no new events."""
    outbox = Outbox(store, registry, KAFKA)
    ingester = Ingester(store, registry, KAFKA, outbox)
    batch = [message(dhash_record(i, i), i) for i in range(5)]
    ingester._apply(batch)
    before = list(store.scan("images")), outbox.depth
    ingester._apply(batch)
    assert (list(store.scan("images")), outbox.depth) == before
    assert ingester.stats.skipped == 5


def test_wait_applied_follows_committed_offsets(store: SignalStore, registry: Registry) -> None:
    """wait_applied is true once a position's batch is committed, and times out before."""
    ingester = Ingester(store, registry, KAFKA, Outbox(store, registry, KAFKA))
    position = envelope_pb2.ChangelogPosition(topic=TOPIC, partition=0, offset=1)
    assert not ingester.wait_applied([position], 0.01)
    ingester._apply([message(dhash_record(1, 1), 0), message(dhash_record(2, 1), 1)])
    assert ingester.wait_applied([position], 0.01)
