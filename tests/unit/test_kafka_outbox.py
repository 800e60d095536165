"""The transactional outbox: events derived from the writes that win, in the same WriteBatch."""

from __future__ import annotations

import hashlib
from pathlib import Path

from helpers import dhash_record, image_id

from clients.lookup import make_record
from contract import deadletter
from contract.registry import Registry
from contract.settings import KafkaSettings
from contract.v1 import envelope_pb2, events_pb2, signals_pb2
from gss.kafka.meta import OUTBOX_PREFIX, EntryKind, OutboxEntry, outbox_sequence
from gss.kafka.outbox import Outbox
from gss.writes import to_write
from store.db import SignalStore, Write


def _entries(store: SignalStore) -> list[tuple[bytes, OutboxEntry]]:
    return [(k, OutboxEntry.decode(v)) for k, v in store.scan_meta(OUTBOX_PREFIX)]


def _write(
    registry: Registry, record: envelope_pb2.SignalRecord, offset: int | None = None
) -> Write:
    position = None
    if offset is not None:
        position = envelope_pb2.ChangelogPosition(
            topic="gss.images.changelog", partition=2, offset=offset
        )
    return to_write(registry, record, write_time_us=1_000_000, position=position)


def test_only_winning_writes_get_events(store: SignalStore, registry: Registry) -> None:
    """Of an older and a newer write, only the newer is stored; each is announced, as in
    batches of their own. A write older than the value before it is not announced;
    re-applying the same write stores nothing and announces nothing."""
    outbox = Outbox(store, registry, KafkaSettings())
    older, newer = dhash_record(1, 10, seconds=1), dhash_record(1, 20, seconds=2)
    result = outbox.apply_with_events([_write(registry, older, 5), _write(registry, newer, 6)])
    assert result.applied == [False, True]
    events = [events_pb2.SignalAvailable.FromString(e.value) for _, e in _entries(store)]
    assert [signals_pb2.DHash.FromString(e.value.value).hash for e in events] == [10, 20]
    again = outbox.apply_with_events([_write(registry, newer, 6)])
    assert again.applied == [False]
    stale = outbox.apply_with_events(
        [_write(registry, dhash_record(1, 40, seconds=4), 8), _write(registry, older, 7)]
    )
    assert stale.applied == [True, False]
    events = [events_pb2.SignalAvailable.FromString(e.value) for _, e in _entries(store)]
    assert [signals_pb2.DHash.FromString(e.value.value).hash for e in events] == [10, 20, 40]
    assert outbox.depth == 3


def test_events_do_not_depend_on_how_writes_are_batched(tmp_path: Path, registry: Registry) -> None:
    """Two replicas applying one changelog in different batches (one catching up in a large
    batch, one live, a write at a time) derive the same events, with the same ids, in the
    same order (docs/cluster.md: a takeover resends what lies beyond the last commit, and a
    subscriber deduping by id must never see an entity's events go backwards)."""
    changelog = [
        (dhash_record(1, 10, seconds=1), 0),
        (dhash_record(2, 10, seconds=1), 1),
        (dhash_record(1, 20, seconds=2), 2),
        (dhash_record(1, 15, seconds=1.5), 3),  # older than the value before it
        (dhash_record(2, 10, seconds=1), 4),  # repeats the value before it
        (dhash_record(1, 30, seconds=3), 5),
        (dhash_record(2, 20, seconds=1), 6),  # same event time, later offset
    ]
    ids = []
    for batches in ([changelog], [[w] for w in changelog], [changelog[:3], changelog[3:]]):
        with SignalStore(tmp_path / f"replica{len(ids)}", list(registry.galaxies)) as store:
            outbox = Outbox(store, registry, KafkaSettings())
            for batch in batches:
                outbox.apply_with_events([_write(registry, r, offset) for r, offset in batch])
            events = [events_pb2.SignalAvailable.FromString(e.value) for _, e in _entries(store)]
            ids.append([(e.event_id, e.position.offset) for e in events])
    assert ids[0] == ids[1] == ids[2]
    assert [offset for _, offset in ids[0]] == [0, 1, 2, 5, 6]


def test_event_fields(store: SignalStore, registry: Registry) -> None:
    """An event names galaxy, entity (text form), signal, times, position, the value's hash,
    carries a small inline value, and its Kafka key is the entity's canonical bytes."""
    outbox = Outbox(store, registry, KafkaSettings())
    record = dhash_record(7, 99, seconds=3, producer="flink:test")
    outbox.apply_with_events([_write(registry, record, 41)])
    ((_, entry),) = _entries(store)
    assert entry.kind is EntryKind.AVAILABLE
    assert entry.galaxy == "images"
    assert entry.key == bytes.fromhex(image_id(7))
    event = events_pb2.SignalAvailable.FromString(entry.value)
    assert dict(entry.headers)["gss-event-id"] == event.event_id.encode()
    assert dict(entry.headers)["gss-signal"] == b"dhash@1"
    assert event.galaxy == "images"
    assert event.entity_id == image_id(7)
    assert (event.signal.name, event.signal.version) == ("dhash", 1)
    assert event.event_time == record.envelope.event_time
    assert event.write_time.ToMicroseconds() == 1_000_000
    assert (event.position.topic, event.position.partition, event.position.offset) == (
        "gss.images.changelog",
        2,
        41,
    )
    assert event.value_hash == hashlib.sha256(record.value.value).digest()
    assert event.value == record.value
    assert event.producer == "flink:test"


def test_values_stay_out_of_events_when_not_allowed_or_too_big(
    store: SignalStore, registry: Registry
) -> None:
    """images/embedding does not allow inline values; other values are inline only under
    inline_value_max_bytes. The hash is always there."""
    outbox = Outbox(store, registry, KafkaSettings(inline_value_max_bytes=9))
    embedding = make_record(
        "images", image_id(1), "embedding@1", signals_pb2.Embedding(values=[0.5] * 4)
    )
    small = make_record("images", image_id(2), "dhash@1", signals_pb2.DHash(hash=1))
    big = make_record(
        "images",
        image_id(3),
        "dominant_colors@1",
        signals_pb2.DominantColors(
            colors=[signals_pb2.WeightedColor(red=200, green=1, blue=2, weight=0.5)] * 3
        ),
    )
    outbox.apply_with_events([_write(registry, r) for r in (embedding, small, big)])
    events = {
        e.entity_id: e
        for e in (events_pb2.SignalAvailable.FromString(x.value) for _, x in _entries(store))
    }
    assert not events[image_id(1)].HasField("value")
    assert events[image_id(2)].HasField("value")
    assert not events[image_id(3)].HasField("value")
    assert all(len(e.value_hash) == 32 for e in events.values())


def test_event_ids_are_stable_and_distinct(tmp_path: Path, registry: Registry) -> None:
    """The same write gets the same event id in another store (a rebuild by replay); the same
    value from another changelog position, or a direct write, gets another id."""
    record = dhash_record(3, 5)
    ids = []
    for name, offset in (("a", 10), ("b", 10), ("c", 11), ("d", None)):
        with SignalStore(tmp_path / name, list(registry.galaxies)) as store:
            Outbox(store, registry, KafkaSettings()).apply_with_events(
                [_write(registry, record, offset)]
            )
            ((_, entry),) = _entries(store)
            ids.append(events_pb2.SignalAvailable.FromString(entry.value).event_id)
    assert ids[0] == ids[1]
    assert len({ids[0], ids[2], ids[3]}) == 3


def test_dead_letters_and_offsets_commit_with_the_values(
    store: SignalStore, registry: Registry
) -> None:
    """Dead letters become outbox entries and meta (offsets) is written in the same apply."""
    outbox = Outbox(store, registry, KafkaSettings())
    letter = deadletter.build(
        deadletter.Reason.UNDECODABLE,
        galaxy="images",
        producer=deadletter.INGESTER,
        input_topic="gss.images.changelog",
        input=b"garbage",
    )
    dead = OutboxEntry(
        EntryKind.DLQ,
        "images",
        b"k",
        deadletter.serialize(letter),
        (("content-type", deadletter.CONTENT_TYPE),),
    )
    outbox.apply_with_events(
        [_write(registry, dhash_record(1, 1), 0)],
        meta={b"changelog_offset\x00x": b"1"},
        dead_letters=[dead],
    )
    kinds = [e.kind for _, e in _entries(store)]
    assert kinds == [EntryKind.AVAILABLE, EntryKind.DLQ]
    assert _entries(store)[1][1] == dead
    assert store.get_meta(b"changelog_offset\x00x") == b"1"


def test_depth_and_sequences_survive_a_restart(tmp_path: Path, registry: Registry) -> None:
    """A reopened store's outbox knows its depth, and new entries sort after the old ones."""
    path = tmp_path / "store"
    with SignalStore(path, list(registry.galaxies)) as store:
        outbox = Outbox(store, registry, KafkaSettings())
        outbox.apply_with_events([_write(registry, dhash_record(i, i)) for i in range(3)])
        first = [k for k, _ in _entries(store)]
        outbox.removed(first[:1])
        assert outbox.depth == 2
    with SignalStore(path, list(registry.galaxies)) as store:
        outbox = Outbox(store, registry, KafkaSettings())
        assert outbox.depth == 2
        outbox.apply_with_events([_write(registry, dhash_record(9, 9))])
        keys = [k for k, _ in _entries(store)]
        assert keys == sorted(keys)
        assert outbox_sequence(keys[-1]) > outbox_sequence(first[-1])
