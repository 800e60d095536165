"""Store rebuild: a wiped or new store materialised again from the topic archive.

The store is a materialised view of the changelogs, so it can be made again from them:
:func:`rebuild_store` reads every galaxy's changelog from the archive (committed batches only,
partition by partition, in offset order) and applies it through the ingester's own batch step
(:func:`gss.kafka.ingester.decode_batch`: the same validation, the same dead letters, the same
newer-wins write path), committing the values of each batch with the next offset of its
partition in ONE WriteBatch, as the live ingester does. At the end each archived partition's
stored next offset is its last archived offset + 1, and each changelog topic's id is the id
the archive recorded, so the live ingester (``gss serve``) continues with the tail that is in
Kafka only — or, if the topic was created anew since, starts it over as it always does.

What a rebuild does NOT do: announce. It writes no outbox entries — no availability events,
no dead letters — since subscribers saw that history when it happened. Values differ from the
original store's only in their write time (when this store applied them).

Re-running a rebuild over a partial one (``--force``) is harmless: a write replaces a value
only if its (event time, changelog offset) is greater, so re-applied records are skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import structlog
from confluent_kafka import Message

from contract.errors import GssError
from contract.registry import GalaxySpec, Registry
from contract.settings import KafkaSettings
from contract.topics import TopicKind, topic_name
from gss.archive import commits
from gss.archive.layout import TIMESTAMP_TYPES, ArchivedRecord
from gss.archive.reader import read_partition
from gss.archive.storage import ArchiveStorage
from gss.kafka.ingester import decode_batch, stored_offsets
from gss.kafka.meta import OFFSET_PREFIX, topic_id_key
from gss.writes import now_us
from store.compare import Comparison, compare_stores
from store.db import SignalStore

log = structlog.get_logger(__name__)

_TIMESTAMP_CODES = {name: code for code, name in TIMESTAMP_TYPES.items()}


class StoreNotEmptyError(GssError):
    """The rebuild's target store already holds values or offsets."""


def archived_message(record: ArchivedRecord) -> Message:
    """An archived record as the consumed Kafka message it was (position, key, value,
    headers, timestamp), for code that takes messages: the ingester's batch step."""
    return Message(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        timestamp=(_TIMESTAMP_CODES[record.timestamp_type], record.timestamp_ms),
        headers=list(record.headers),
    )


def store_is_empty(store: SignalStore) -> bool:
    """True if no galaxy holds a value and no changelog offset is stored."""
    if any(True for _ in store.scan_meta(OFFSET_PREFIX, limit=1)):
        return False
    return not any(any(True for _ in store.scan(g)) for g in store.galaxies)


@dataclass(slots=True)
class RebuildStats:
    """Progress (and, at the end, the outcome) of a rebuild."""

    records: int = 0
    applied: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    batches: int = 0
    partitions: int = 0
    partitions_done: int = 0
    seconds: float = 0.0
    # Next offset stored for each (topic, partition) rebuilt.
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


Progress = Callable[[RebuildStats], None]


def _topic_id(storage: ArchiveStorage, topic: str, partitions: Iterable[int]) -> str | None:
    """The broker's id of ``topic`` as the archive recorded it (None if it has none)."""
    ids = set()
    for partition in partitions:
        newest = commits.newest_marker(storage, topic, partition)
        if newest is not None and newest.topic_id:
            ids.add(newest.topic_id)
    if len(ids) > 1:
        raise GssError(f"the archive of {topic} names several topic ids: {sorted(ids)}")
    return ids.pop() if ids else None


def _apply(
    store: SignalStore,
    galaxy_of: dict[str, GalaxySpec],
    registry: Registry,
    msgs: Sequence[Message],
    stats: RebuildStats,
) -> None:
    batch = decode_batch(galaxy_of, registry, msgs, now_us())
    # No outbox entries: the batch's events and dead letters were announced when it was new.
    result = store.apply(batch.writes, meta=batch.offset_meta())
    stats.records += len(msgs)
    stats.applied += result.applied_count
    stats.skipped += result.skipped_count
    stats.dead_lettered += len(batch.rejected)
    stats.batches += 1
    stats.next_offsets.update(batch.next_offsets)


def rebuild_store(
    store: SignalStore,
    registry: Registry,
    kafka: KafkaSettings,
    storage: ArchiveStorage,
    *,
    batch_records: int = 10_000,
    progress: Progress | None = None,
) -> RebuildStats:
    """Apply every galaxy's archived changelog to ``store`` (see the module docstring);
    ``progress`` is called with the running totals after every batch."""
    galaxy_of = {topic_name(kafka, TopicKind.CHANGELOG, g.name): g for g in registry}
    plan = {topic: commits.archived_partitions(storage, topic) for topic in galaxy_of}
    stats = RebuildStats(partitions=sum(len(p) for p in plan.values()))
    start = time.perf_counter()
    log.info("rebuild_started", store_path=str(store.path), partitions=stats.partitions)
    for topic, partitions in plan.items():
        topic_id = _topic_id(storage, topic, partitions)
        for partition in partitions:
            msgs: list[Message] = []
            for record in read_partition(storage, topic, partition):
                msgs.append(archived_message(record))
                if len(msgs) >= batch_records:
                    _apply(store, galaxy_of, registry, msgs, stats)
                    msgs = []
                    stats.seconds = time.perf_counter() - start
                    if progress is not None:
                        progress(stats)
            if msgs:
                _apply(store, galaxy_of, registry, msgs, stats)
            stats.partitions_done += 1
            stats.seconds = time.perf_counter() - start
            if progress is not None:
                progress(stats)
        if topic_id is not None:
            # The live ingester keeps these offsets only while the topic keeps this id.
            store.apply([], meta={topic_id_key(topic): topic_id.encode()})
    store.flush()
    stats.seconds = time.perf_counter() - start
    log.info(
        "rebuild_finished",
        store_path=str(store.path),
        records=stats.records,
        applied=stats.applied,
        skipped=stats.skipped,
        dead_lettered=stats.dead_lettered,
        partitions=stats.partitions,
        seconds=round(stats.seconds, 3),
    )
    return stats


@dataclass(slots=True)
class Verification:
    """Two stores compared: their values (:class:`store.compare.Comparison`) and the next
    offset each holds for every changelog partition."""

    values: Comparison
    offset_differences: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return self.values.equal and not self.offset_differences


def verify_stores(
    a: SignalStore,
    b: SignalStore,
    registry: Registry,
    kafka: KafkaSettings,
    *,
    max_differences: int = 20,
) -> Verification:
    """Compare every galaxy's values key by key (write times aside) and the stored changelog
    offsets of two stores."""
    values = compare_stores(a, b, registry.galaxies, max_differences=max_differences)
    offsets = []
    for g in registry:
        topic = topic_name(kafka, TopicKind.CHANGELOG, g.name)
        oa, ob = stored_offsets(a, topic), stored_offsets(b, topic)
        for partition in sorted(set(oa) | set(ob)):
            if oa.get(partition) != ob.get(partition):
                offsets.append(
                    f"{topic}:{partition}: next offset {oa.get(partition)} != {ob.get(partition)}"
                )
    return Verification(values, offsets)
