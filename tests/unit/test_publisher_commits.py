"""What the outbox publisher commits for the other replicas (gss.kafka.election): never past an
event the broker has not acknowledged, whatever order the acknowledgements come in."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from helpers import dhash_record

from contract.registry import Registry
from contract.settings import KafkaSettings
from contract.v1 import envelope_pb2, events_pb2
from gss.kafka import publisher as publisher_module
from gss.kafka.outbox import Outbox
from gss.writes import to_write
from store.db import SignalStore

_TOPIC = "gss.images.changelog"


class _Election:
    """Owns partition 0 of the changelog; remembers the commits (as PublisherElection does)."""

    def __init__(self) -> None:
        self.commits: dict[tuple[str, int], int] = {}

    def owned(self) -> tuple[int, set[tuple[str, int]]]:
        return 1, {(_TOPIC, 0)}

    def committed(self, topic: str, partition: int) -> int:
        return self.commits.get((topic, partition), 0)

    def published(self, offsets: Mapping[tuple[str, int], int]) -> None:
        for key, offset in offsets.items():
            self.commits[key] = max(self.commits.get(key, 0), offset + 1)


class _Producer:
    """Acknowledges, at each poll, only the events whose changelog offsets it is told to."""

    def __init__(self) -> None:
        self.waiting: dict[int, Any] = {}
        self.ack: set[int] = set()

    def produce(
        self, topic: str, *, value: bytes, key: Any, headers: Any, on_delivery: Any
    ) -> None:
        self.waiting[events_pb2.SignalAvailable.FromString(value).position.offset] = on_delivery

    def poll(self, _timeout: float) -> int:
        done = [offset for offset in self.waiting if offset in self.ack]
        for offset in done:
            self.waiting.pop(offset)(None, None)
        return len(done)


def _writes(registry: Registry, offsets: range, *, backfill: bool = False) -> list[Any]:
    """dhash writes of entities ``offsets``, each at that offset of partition 0."""
    writes = []
    for n in offsets:
        record = dhash_record(n, n, seconds=1)
        record.envelope.backfill = backfill
        writes.append(
            to_write(
                registry,
                record,
                write_time_us=1,
                position=envelope_pb2.ChangelogPosition(topic=_TOPIC, partition=0, offset=n),
            )
        )
    return writes


def test_commits_stop_at_the_oldest_unacknowledged_event(
    store: SignalStore, registry: Registry
) -> None:
    """Offsets 0-5 of one changelog partition, acknowledged 0, 1, then 4 and 5 before 2 and 3:
    the commit stays at 2 until 2 and 3 are acknowledged, then reaches 6. (It once followed the
    highest acknowledged offset: a replica taking over would never have sent 2 and 3.)"""
    kafka = KafkaSettings()
    outbox = Outbox(store, registry, kafka)
    outbox.apply_with_events(_writes(registry, range(6)))
    election = _Election()
    publisher = publisher_module.OutboxPublisher(outbox, kafka, registry, election)  # type: ignore[arg-type]
    producer = _Producer()
    publisher._new_producer = lambda: producer  # type: ignore[method-assign]

    def step(state: tuple[Any, ...], ack: set[int]) -> tuple[Any, ...]:
        producer.ack |= ack
        publisher._next_prune = 0.0  # commit at every step
        state = publisher._step(*state)
        publisher._next_prune = 0.0
        return publisher._step(*state)

    state: tuple[Any, ...] = step((None, None, set(), 0.5), {0, 1})
    assert sorted(producer.waiting) == [2, 3, 4, 5]
    assert election.committed(_TOPIC, 0) == 2
    state = step(state, {4, 5})
    assert outbox.depth == 2
    assert election.committed(_TOPIC, 0) == 2  # not 6: 2 and 3 are not acknowledged
    state = step(state, {3})
    assert election.committed(_TOPIC, 0) == 2
    state = step(state, {2})
    assert outbox.depth == 0
    assert election.committed(_TOPIC, 0) == 6


def test_entries_committed_while_the_outbox_is_scanned_are_not_skipped(
    store: SignalStore, registry: Registry
) -> None:
    """Offsets 0-2 published; while the commit's scan runs, one batch adds live offset 3 and
    backfilled offset 4 (the live and backfill queues). The commit stays at 3: the scan is one
    view of both queues. (With a scan per queue, the second saw 4 but the first had not seen 3,
    and the commit skipped 3.)"""
    kafka = KafkaSettings(backfill_events_per_second=1.0)
    outbox = Outbox(store, registry, kafka)
    outbox.apply_with_events(_writes(registry, range(3)))
    election = _Election()
    publisher = publisher_module.OutboxPublisher(outbox, kafka, registry, election)  # type: ignore[arg-type]
    producer = _Producer()
    producer.ack = {0, 1, 2}
    publisher._new_producer = lambda: producer  # type: ignore[method-assign]
    state: tuple[Any, ...] = publisher._step(None, None, set(), 0.5)
    state = publisher._step(*state)
    assert outbox.depth == 0

    scan = store.scan_meta
    late = _writes(registry, range(3, 4)) + _writes(registry, range(4, 5), backfill=True)

    def scan_meta(prefix: bytes, *args: Any, **kwargs: Any) -> Iterator[tuple[bytes, bytes]]:
        entries = scan(prefix, *args, **kwargs)
        first = next(entries, None)  # the scan has begun
        if late:
            outbox.apply_with_events(late)
            late.clear()
        if first is not None:
            yield first
        yield from entries

    store.scan_meta = scan_meta  # type: ignore[method-assign]
    publisher._next_prune = 0.0
    publisher._step(*state)
    assert outbox.depth == 2
    assert election.committed(_TOPIC, 0) == 3
