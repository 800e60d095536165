"""The ingester's batched hot path: records spliced from serialized parts must store and
announce exactly what the reference path (decode_record, EventBuilder.marked_entry) would,
newer-wins must hold between writes of one key in one batch, and bad records mixed with good
ones must not disturb them."""

from __future__ import annotations

import pytest
from confluent_kafka import Message
from helpers import count_record, dhash_record, image_id

from contract.registry import Registry
from contract.settings import KafkaSettings
from contract.v1 import envelope_pb2, events_pb2, signals_pb2
from gss.kafka.ingester import Ingester, decode_batch, decode_record, stored_offsets
from gss.kafka.meta import OUTBOX_PREFIX, EntryKind, OutboxEntry
from gss.kafka.outbox import EventBuilder, Outbox
from store.db import SignalStore
from store.records import StoredRecord

CHANGELOG = {"images": "gss.images.changelog", "pins": "gss.pins.changelog"}
KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:1")


def message(
    record: envelope_pb2.SignalRecord | bytes,
    offset: int,
    *,
    key: bytes | None = None,
    partition: int = 0,
    galaxy: str = "images",
) -> Message:
    value = record if isinstance(record, bytes) else record.SerializeToString()
    if key is None and not isinstance(record, bytes):
        entity = record.entity_id
        key = int(entity).to_bytes(8, "big") if galaxy == "pins" else bytes.fromhex(entity)
    return Message(
        topic=CHANGELOG[galaxy],
        partition=partition,
        offset=offset,
        key=key,
        value=value,
        timestamp=(1, 1_700_000_000_000 + offset),
    )


def _varied_records() -> list[tuple[envelope_pb2.SignalRecord, str]]:
    """Good records covering what the splice must get right."""
    plain = dhash_record(1, 11, seconds=1.234567891)
    modelled = dhash_record(2, 12)
    modelled.envelope.model_name = "dhash"
    modelled.envelope.model_version = "3"
    modelled.envelope.plugin = "examples:dhash"
    modelled.envelope.inputs.add(topic="content", partition=1, offset=9)
    backfilled = dhash_record(3, 13, producer="")
    backfilled.envelope.backfill = True
    upper = dhash_record(4, 14)
    upper.entity_id = upper.entity_id.upper()  # not the canonical text: the event's is
    override = dhash_record(5, 15)
    override.override_ordering = True
    epoch = dhash_record(6, 16)
    epoch.envelope.event_time.FromSeconds(0)  # an event time that serializes empty
    not_inline = dhash_record(7, 0)
    not_inline.signal.name = "embedding"
    not_inline.value.Pack(signals_pb2.Embedding(values=[0.5] * 64))
    return [
        (plain, "images"),
        (modelled, "images"),
        (backfilled, "images"),
        (upper, "images"),
        (override, "images"),
        (epoch, "images"),
        (not_inline, "images"),
        (count_record(77, 5), "pins"),
        (count_record(0, 1), "pins"),
    ]


def test_the_hot_path_stores_and_announces_what_the_reference_path_does(
    registry: Registry,
) -> None:
    """Every spliced write equals decode_record's (key, override, and the stored record as a
    message), and its spliced event and outbox entry equal marked_entry's."""
    galaxy_of = {topic: registry.galaxy(name) for name, topic in CHANGELOG.items()}
    msgs = [
        message(record, 100 + i, partition=i % 3, galaxy=galaxy)
        for i, (record, galaxy) in enumerate(_varied_records())
    ]
    batch = decode_batch(galaxy_of, registry, msgs, 1_800_000_000_123_456)
    assert not batch.dead_letters
    assert all(facts is not None for facts in batch.facts)  # all took the hot path
    builder = EventBuilder(registry, KAFKA)
    for msg, write, facts in zip(msgs, batch.writes, batch.facts, strict=True):
        galaxy = galaxy_of[msg.topic()]
        expected = decode_record(galaxy, registry, msg, 1_800_000_000_123_456)
        assert (write.galaxy, write.key, write.override) == (
            expected.galaxy,
            expected.key,
            expected.override,
        )
        assert StoredRecord.decode(write.stored) == StoredRecord.decode(expected.stored)
        assert write.stored[:17] == expected.stored[:17]  # header: format, event time, offset
        assert facts is not None
        encoded, backfill, pending = builder.fact_entry(write, facts)
        reference, reference_backfill = builder.marked_entry(expected)
        entry = OutboxEntry.decode(encoded)
        assert backfill == reference_backfill
        assert (entry.kind, entry.galaxy, entry.key, entry.headers) == (
            reference.kind,
            reference.galaxy,
            reference.key,
            reference.headers,
        )
        event = events_pb2.SignalAvailable.FromString(entry.value)
        assert event == events_pb2.SignalAvailable.FromString(reference.value)
        assert pending == (entry.kind, entry.galaxy, entry.key, entry.value, list(entry.headers))


def test_unusual_records_take_the_reference_path(registry: Registry) -> None:
    """A tombstone, or a record whose producer set a write time or a source, is decoded by the
    reference path (no facts), and stored as it would always have been."""
    tombstone = dhash_record(1, 0)
    tombstone.ClearField("value")
    tombstone.tombstone = True
    with_write_time = dhash_record(2, 2)
    with_write_time.envelope.write_time.FromSeconds(5)
    with_source = dhash_record(3, 3)
    with_source.envelope.source.topic = "elsewhere"
    galaxy_of = {CHANGELOG["images"]: registry.galaxy("images")}
    msgs = [message(r, i) for i, r in enumerate((tombstone, with_write_time, with_source))]
    batch = decode_batch(galaxy_of, registry, msgs, 7)
    assert batch.facts == [None, None, None]
    stored = [StoredRecord.decode(w.stored) for w in batch.writes]
    assert stored[0].deleted
    assert stored[1].envelope.write_time.ToMicroseconds() == 7
    assert stored[2].envelope.source.topic == CHANGELOG["images"]


@pytest.mark.parametrize("newer_first", [True, False])
def test_two_writes_of_one_key_in_one_batch_the_newer_wins(
    store: SignalStore, registry: Registry, newer_first: bool
) -> None:
    """Of two writes of one key in one batch, the one with the later event time is stored,
    whichever comes first in the batch; with equal event times, the later offset. Each write
    that won when it came is announced, as in batches of their own (replicas batch the same
    changelog differently and must announce the same events): an older write after a newer
    one is not, a newer one after an older one is, and so is the older one."""
    outbox = Outbox(store, registry, KAFKA)
    ingester = Ingester(store, registry, KAFKA, outbox)
    older, newer = dhash_record(1, 100, seconds=1), dhash_record(1, 200, seconds=2)
    pair = [newer, older] if newer_first else [older, newer]
    same_time = [dhash_record(2, 300, seconds=5), dhash_record(2, 400, seconds=5)]
    ingester._apply([message(r, i) for i, r in enumerate(pair + same_time)])
    values = {}
    for key, stored in store.scan("images"):
        value = signals_pb2.DHash()
        StoredRecord.decode(stored).value.Unpack(value)
        values[key[:16].hex()] = value.hash
    assert values == {image_id(1): 200, image_id(2): 400}
    events = [
        events_pb2.SignalAvailable.FromString(OutboxEntry.decode(raw).value)
        for _, raw in store.scan_meta(OUTBOX_PREFIX)
    ]
    assert [(e.entity_id, e.position.offset) for e in events] == [
        *([(image_id(1), 0)] if newer_first else [(image_id(1), 0), (image_id(1), 1)]),
        (image_id(2), 2),
        (image_id(2), 3),
    ]
    assert (ingester.stats.applied, ingester.stats.skipped) == (2, 2)
    assert stored_offsets(store, CHANGELOG["images"]) == {0: 4}


def test_bad_records_among_good_ones(store: SignalStore, registry: Registry) -> None:
    """Bad records of every kind interleaved with good ones: each good one is stored and
    announced, each bad one dead-lettered, in one batch with every partition's next offset; the
    publisher's in-memory entries are exactly the committed events, equal to the stored ones."""
    outbox = Outbox(store, registry, KAFKA)
    ingester = Ingester(store, registry, KAFKA, outbox)
    unknown = dhash_record(9, 1)
    unknown.signal.name = "no_such_signal"
    wrong_type = dhash_record(9, 1)
    wrong_type.value.Pack(signals_pb2.Embedding(values=[1.0]))
    no_time = dhash_record(9, 1)
    no_time.envelope.ClearField("event_time")
    bad_value = dhash_record(9, 1)
    bad_value.value.value = b"\xff\xff"
    version_zero = dhash_record(9, 1)
    version_zero.signal.version = 0
    bad = [
        message(b"\xff\xff garbage", 0, key=b"x"),
        message(b"", 0, key=b"x"),
        message(unknown, 0),
        message(wrong_type, 0),
        message(no_time, 0),
        message(bad_value, 0),
        message(version_zero, 0),
        message(dhash_record(9, 1), 0, key=b"not the entity"),
        message(count_record(5, 1), 0, key=(5).to_bytes(8, "big")),  # wrong galaxy
    ]
    batch = []
    for i, msg in enumerate(bad):
        good = dhash_record(i, i)
        batch.append(message(good, 2 * i, partition=i % 2))
        batch.append(message(msg.value(), 2 * i + 1, key=msg.key(), partition=i % 2))
    ingester._apply(batch)
    assert ingester.stats.applied == len(bad)
    assert ingester.stats.dead_lettered == len(bad)
    assert stored_offsets(store, CHANGELOG["images"]) == {
        p: max(m.offset() for m in batch if m.partition() == p) + 1 for p in (0, 1)
    }
    stored_entries = {key: OutboxEntry.decode(raw) for key, raw in store.scan_meta(OUTBOX_PREFIX)}
    kinds = [e.kind for e in stored_entries.values()]
    assert kinds.count(EntryKind.AVAILABLE) == kinds.count(EntryKind.DLQ) == len(bad)
    assert set(outbox.pending) == {
        key for key, e in stored_entries.items() if e.kind is EntryKind.AVAILABLE
    }
    for key, (kind, galaxy, entity, value, headers) in outbox.pending.items():
        assert OutboxEntry(kind, galaxy, entity, value, tuple(headers)) == stored_entries[key]
    outbox.removed(list(stored_entries))
    assert not outbox.pending


def test_a_batch_that_fails_to_commit_leaves_nothing_to_send(
    store: SignalStore, registry: Registry
) -> None:
    """If the WriteBatch fails, none of its entries wait in memory for the publisher."""
    outbox = Outbox(store, registry, KAFKA)
    ingester = Ingester(store, registry, KAFKA, outbox)
    store.close()
    with pytest.raises(RuntimeError):
        ingester._apply([message(dhash_record(1, 1), 0)])
    assert not outbox.pending
