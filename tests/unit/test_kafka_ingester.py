"""The ingester's batch step without a broker: validation into dead letters, offsets stored
with the values, and idempotence when a batch is seen again."""

from __future__ import annotations

import pytest
from confluent_kafka import Message
from helpers import count_record, dhash_record, image_id

from contract.registry import Registry
from contract.settings import KafkaSettings
from contract.v1 import envelope_pb2, signals_pb2
from gss.kafka.ingester import DeadLetter, Ingester, decode_record, stored_offsets
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


def _reason(registry: Registry, msg: Message) -> str:
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
    assert _reason(registry, message(b"\xff\xff garbage", 0, key=b"x")) == "undecodable"
    assert _reason(registry, message(b"", 0, key=b"x")) == "empty"
    assert _reason(registry, message(pins, 0, key=b"k")) == "wrong_galaxy"
    assert _reason(registry, message(unknown, 0)) == "unknown_signal"
    assert _reason(registry, message(wrong_type, 0)) == "wrong_type"
    assert _reason(registry, message(no_time, 0)) == "invalid"
    assert _reason(registry, message(good, 0, key=b"not the entity")) == "key_mismatch"
    write = decode_record(registry.galaxy("images"), registry, message(good, 7), 1)
    assert write.key.startswith(bytes.fromhex(image_id(1)))


def test_a_batch_commits_values_dead_letters_and_offsets_together(
    store: SignalStore, registry: Registry
) -> None:
    """Good records are applied, bad ones dead-lettered with reason and source headers, and
    every partition's next offset (bad records included) is stored in the same batch."""
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
    headers = dict(dead.headers)
    assert headers["gss-dlq-reason"] == b"undecodable"
    assert headers["gss-source-offset"] == b"1"
    assert headers["origin"] == b"test"
    assert dead.value == b"\xff\xff garbage"
    assert ingester.stats.applied == 3
    assert ingester.stats.dead_lettered == 1


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
