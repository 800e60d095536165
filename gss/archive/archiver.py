"""The archiver: copies Kafka topics into the archive, each offset exactly once.

One consumer reads every partition of the archived topics with explicit ``assign()`` (no
group membership, so no rebalances and no start-up delay), starting where the archive's own
commit markers say (:func:`gss.archive.commits.recover`), never from Kafka's committed offsets.
Records are buffered per partition; a buffer becomes a batch when it reaches
``max_file_records`` or ``max_file_bytes``, or ``max_file_seconds`` after its first record.
A batch is written as one file per UTC hour of its records' timestamps, then committed with
a marker (gss/archive/commits.py); only then is the offset committed to the consumer group
``archive.group_id``, which serves lag monitoring alone.

Failures: an unreachable broker is retried by the client (and topics listed again with a
bounded backoff); a failed write stops consumption and retries the same batch with a
bounded backoff, so the buffered records and the file names stay the same. A topic whose id
differs from the one its markers recorded (deleted and created again, or a local broker
that restarted empty) is refused: its offsets start over, and archiving them beside the old
ones would put two records under one offset (docs/history.md, recreated topics).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from contract.archive import FileEntry, Marker, Totals, check_topic, data_path
from contract.kafka import admin_config, consume_available, consumer_config
from contract.registry import Registry
from contract.settings import ArchiveSettings, KafkaSettings
from contract.topics import TopicKind, position_of, topic_ids, topic_name
from gss.archive import commits, layout, metrics
from gss.archive.layout import ArchivedRecord
from gss.archive.storage import ArchiveStorage

log = structlog.get_logger(__name__)

_CONSUME_MAX = 10_000
_RECORD_OVERHEAD = 160  # JSON field names, numbers and base64 growth, roughly, per record


def archive_topics(archive: ArchiveSettings, kafka: KafkaSettings, registry: Registry) -> list[str]:
    """The topics to archive: ``archive.topics``, or every galaxy's changelog and the
    content topics."""
    if archive.topics is not None:
        topics = list(archive.topics)
    else:
        topics = [topic_name(kafka, TopicKind.CHANGELOG, g.name) for g in registry]
        topics += archive.content_topics
    for topic in topics:
        check_topic(topic)
    return list(dict.fromkeys(topics))


def to_archived(msg: Message) -> ArchivedRecord:
    topic, partition, offset = position_of(msg)
    ts_type, ts = msg.timestamp()
    return ArchivedRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp_ms=ts if ts_type else -1,
        timestamp_type=layout.TIMESTAMP_TYPES.get(ts_type, "none"),
        key=msg.key(),
        value=msg.value(),
        headers=_headers(msg),
    )


def _headers(msg: Message) -> tuple[tuple[str, bytes | None], ...]:
    raw = msg.headers() or ()
    items = raw.items() if isinstance(raw, dict) else raw
    return tuple((k, v.encode() if isinstance(v, str) else v) for k, v in items)


def _size(record: ArchivedRecord) -> int:
    n = len(record.key or b"") + len(record.value or b"")
    n += sum(len(k) + len(v or b"") + 8 for k, v in record.headers)
    return n * 4 // 3 + _RECORD_OVERHEAD


def batch_files(
    records: list[ArchivedRecord], compression_level: int
) -> list[tuple[FileEntry, bytes]]:
    """The files of a batch (records in offset order): one per UTC hour of their timestamps,
    each holding that hour's records in offset order."""
    by_hour: dict[datetime, list[ArchivedRecord]] = defaultdict(list)
    for record in records:
        by_hour[record.hour].append(record)
    out = []
    for hour, recs in sorted(by_hour.items()):
        data = layout.encode_file(recs, compression_level)
        first, last = recs[0], recs[-1]
        entry = FileEntry(
            path=data_path(first.topic, hour, first.partition, first.offset, last.offset),
            first_offset=first.offset,
            last_offset=last.offset,
            records=len(recs),
            bytes=len(data),
            min_timestamp_ms=min(r.timestamp_ms for r in recs),
            max_timestamp_ms=max(r.timestamp_ms for r in recs),
        )
        out.append((entry, data))
    return out


def write_batch(
    storage: ArchiveStorage,
    records: list[ArchivedRecord],
    *,
    topic_id: str,
    from_offset: int,
    previous: Totals | None,
    compression_level: int = 6,
) -> Marker:
    """Write one batch of a partition: pending record, data files, commit marker."""
    files = batch_files(records, compression_level)
    first = records[0]
    marker = commits.new_marker(
        first.topic, first.partition, topic_id, from_offset, [f for f, _ in files], previous
    )
    commits.write_pending(storage, marker)
    for entry, data in files:
        storage.write(entry.path, data)
    commits.write_marker(storage, marker)
    return marker


@dataclass
class _Partition:
    topic: str
    partition: int
    topic_id: str
    next_offset: int | None
    totals: Totals | None
    buffer: list[ArchivedRecord] = field(default_factory=list)
    buffer_bytes: int = 0
    opened_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ArchiveStats:
    records: int
    batches: int
    files: int


class Archiver:
    """Archives ``topics`` into ``storage`` until :meth:`stop` (or :meth:`run`'s duration)."""

    def __init__(
        self,
        archive: ArchiveSettings,
        kafka: KafkaSettings,
        topics: Iterable[str],
        storage: ArchiveStorage,
        *,
        stop_event: threading.Event | None = None,
    ) -> None:
        """``stop_event``: setting it stops :meth:`run` (as :meth:`stop` does)."""
        self.archive = archive
        self.kafka = kafka
        self.topics = list(topics)
        self.storage = storage
        self._stop = stop_event or threading.Event()
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._refused: dict[str, str] = {}  # topic -> the id it has now
        self._consumer: Consumer | None = None
        self._admin: AdminClient | None = None
        self._backoff = 0.0
        self._records = self._batches = self._files = 0

    @property
    def stats(self) -> ArchiveStats:
        return ArchiveStats(self._records, self._batches, self._files)

    def stop(self) -> None:
        self._stop.set()

    def _wait_backoff(self, reason: str) -> None:
        self._backoff = min(self.archive.retry_backoff_max_seconds, max(0.2, self._backoff * 2))
        metrics.ARCHIVE_ERRORS.labels(reason).inc()
        self._stop.wait(self._backoff)

    def run(self, duration_seconds: float | None = None) -> ArchiveStats:
        """Archive until stopped or ``duration_seconds`` have passed; buffered records are
        written and committed before returning (when the archive root is reachable)."""
        deadline = None if duration_seconds is None else time.monotonic() + duration_seconds
        self._admin = AdminClient(admin_config(self.kafka, "gss-archive-admin"))
        next_check = 0.0
        try:
            while not self._stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if self._consumer is None:
                    if not self._connect():
                        self._wait_backoff("broker")
                        continue
                    next_check = time.monotonic() + self.archive.topic_check_interval_seconds
                if not self._flush(force=False):
                    self._wait_backoff("storage")
                    continue
                self._consume()
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.archive.topic_check_interval_seconds
                    if self._topics_changed():
                        self._disconnect(flush=True)
        finally:
            self._disconnect(flush=True)
            log.info("archive_stopped", records=self._records, batches=self._batches)
        return self.stats

    # -- assignment ----------------------------------------------------------------------------

    def _connect(self) -> bool:
        assert self._admin is not None
        try:
            metadata = self._admin.list_topics(timeout=5.0).topics
            present = [t for t in self.topics if t in metadata and metadata[t].error is None]
            ids = topic_ids(self._admin, present)
        except KafkaException as exc:
            log.warning("archive_broker_unavailable", error=str(exc), action="retrying")
            return False
        missing = [t for t in self.topics if t not in ids]
        if missing:
            log.warning("archive_topics_missing", topics=missing, action="checking again later")
        parts: dict[tuple[str, int], _Partition] = {}
        try:
            for topic in ids:
                if topic in self._refused and self._refused[topic] == ids[topic]:
                    continue
                for partition in sorted(metadata[topic].partitions):
                    recovered = commits.recover(self.storage, topic, partition)
                    if recovered.removed_files:
                        log.warning(
                            "archive_uncommitted_removed",
                            topic=topic,
                            partition=partition,
                            files=list(recovered.removed_files),
                        )
                    newest = recovered.newest
                    if newest is not None and newest.topic_id != ids[topic]:
                        self._refuse(topic, ids[topic], newest.topic_id)
                        break
                    parts[(topic, partition)] = _Partition(
                        topic,
                        partition,
                        ids[topic],
                        recovered.next_offset,
                        newest.totals if newest else None,
                    )
                    if newest is not None:
                        metrics.ARCHIVE_COMMITTED_OFFSET.labels(topic, str(partition)).set(
                            newest.last_offset
                        )
        except OSError as exc:
            log.warning("archive_storage_unavailable", error=str(exc), action="retrying")
            return False
        parts = {k: v for k, v in parts.items() if k[0] not in self._refused}
        consumer = Consumer(consumer_config(self.kafka, "gss-archive", self.archive.group_id))
        consumer.assign(
            [
                TopicPartition(
                    p.topic,
                    p.partition,
                    p.next_offset if p.next_offset is not None else OFFSET_BEGINNING,
                )
                for p in parts.values()
            ]
        )
        self._consumer, self._parts = consumer, parts
        self._backoff = 0.0
        log.info(
            "archive_assigned",
            topics=sorted({t for t, _ in parts}),
            partitions=len(parts),
            archive_offsets={
                f"{p.topic}:{p.partition}": p.next_offset
                for p in parts.values()
                if p.next_offset is not None
            },
        )
        return True

    def _refuse(self, topic: str, topic_id: str, archived_id: str) -> None:
        if self._refused.get(topic) != topic_id:
            log.error(
                "archive_topic_recreated",
                topic=topic,
                topic_id=topic_id,
                archived_topic_id=archived_id,
                action=(
                    "not archiving this topic: its offsets started over; move its archive "
                    "aside (or use a new archive root) to archive the new topic"
                ),
            )
            metrics.ARCHIVE_ERRORS.labels("topic_recreated").inc()
        self._refused[topic] = topic_id

    def _topics_changed(self) -> bool:
        assert self._admin is not None
        try:
            metadata = self._admin.list_topics(timeout=5.0).topics
            present = [t for t in self.topics if t in metadata and metadata[t].error is None]
            ids = topic_ids(self._admin, present)
        except KafkaException as exc:
            log.warning("archive_broker_unavailable", error=str(exc))
            return False
        assigned = {p.topic: p.topic_id for p in self._parts.values()}
        counts: dict[str, int] = defaultdict(int)
        for topic, _ in self._parts:
            counts[topic] += 1
        for topic, topic_id in ids.items():
            if topic in self._refused and self._refused[topic] == topic_id:
                continue
            if assigned.get(topic) != topic_id or counts[topic] != len(metadata[topic].partitions):
                log.info("archive_topics_changed", topic=topic)
                return True
        return False

    def _disconnect(self, *, flush: bool) -> None:
        if flush and self._consumer is not None:
            self._flush(force=True)
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        self._parts = {}

    # -- consuming and writing -----------------------------------------------------------------

    def _consume(self) -> None:
        assert self._consumer is not None
        msgs = consume_available(self._consumer, _CONSUME_MAX, 0.2)
        now = time.monotonic()
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("archive_consume_error", error=err.str(), error_code=err.name())
                    metrics.ARCHIVE_ERRORS.labels("broker").inc()
                continue
            record = to_archived(msg)
            part = self._parts.get((record.topic, record.partition))
            if part is None:
                continue
            expected = part.buffer[-1].offset + 1 if part.buffer else part.next_offset
            if expected is not None and record.offset < expected:
                # Only a topic whose offsets started over gives an offset already archived.
                log.error(
                    "archive_offset_went_back",
                    topic=record.topic,
                    partition=record.partition,
                    archive_offset=expected - 1,
                    offset=record.offset,
                    action="not archiving the topic any more (recreated?)",
                )
                metrics.ARCHIVE_ERRORS.labels("offset_reset").inc()
                self._refused[record.topic] = "?"
                self._parts = {k: v for k, v in self._parts.items() if k[0] != record.topic}
                continue
            if not part.buffer:
                part.opened_at = now
            part.buffer.append(record)
            part.buffer_bytes += _size(record)

    def _due(self, part: _Partition, now: float, force: bool) -> bool:
        return bool(part.buffer) and (
            force
            or len(part.buffer) >= self.archive.max_file_records
            or part.buffer_bytes >= self.archive.max_file_bytes
            or now - part.opened_at >= self.archive.max_file_seconds
        )

    def _flush(self, *, force: bool) -> bool:
        """Write the partitions' batches that are due (all with ``force``); False if a write
        failed (the batch stays buffered and is written again)."""
        now = time.monotonic()
        committed: list[TopicPartition] = []
        ok = True
        for part in list(self._parts.values()):
            flushed = False
            try:
                while self._due(part, now, force):
                    self._flush_partition(part)
                    flushed = True
            except OSError:
                ok = False
            if flushed:
                assert part.next_offset is not None
                committed.append(TopicPartition(part.topic, part.partition, part.next_offset))
            if not ok:
                break
        self._commit_kafka(committed)
        return ok

    def _flush_partition(self, part: _Partition) -> None:
        """Write and commit the partition's oldest buffered records as one batch (at most
        max_file_records and about max_file_bytes)."""
        count, size = 0, 0
        for record in part.buffer:
            if count >= self.archive.max_file_records or (
                count and size + _size(record) > self.archive.max_file_bytes
            ):
                break
            count += 1
            size += _size(record)
        records = part.buffer[:count]
        from_offset = part.next_offset if part.next_offset is not None else records[0].offset
        try:
            marker = write_batch(
                self.storage,
                records,
                topic_id=part.topic_id,
                from_offset=from_offset,
                previous=part.totals,
                compression_level=self.archive.compression_level,
            )
        except OSError as exc:
            log.warning(
                "archive_write_failed",
                topic=part.topic,
                partition=part.partition,
                records=len(records),
                error=str(exc),
                action="retrying the same batch",
            )
            raise
        del part.buffer[:count]
        part.buffer_bytes = max(0, part.buffer_bytes - size) if part.buffer else 0
        part.totals = marker.totals
        part.next_offset = marker.last_offset + 1
        self._records += marker.records
        self._batches += 1
        self._files += len(marker.files)
        metrics.ARCHIVE_RECORDS.labels(part.topic).inc(marker.records)
        metrics.ARCHIVE_FILES.inc(len(marker.files))
        metrics.ARCHIVE_COMMITTED_OFFSET.labels(part.topic, str(part.partition)).set(
            marker.last_offset
        )
        metrics.ARCHIVE_LAST_RECORD_TIMESTAMP.labels(part.topic).set(marker.max_timestamp_ms / 1000)
        log.info(
            "archive_batch_committed",
            topic=part.topic,
            partition=part.partition,
            archive_offset=marker.last_offset,
            first_offset=marker.first_offset,
            records=marker.records,
            files=len(marker.files),
        )

    def _commit_kafka(self, offsets: list[TopicPartition]) -> None:
        if not offsets or not self.archive.commit_to_kafka or self._consumer is None:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Monitoring only: the archive's markers say where to resume.
            log.info("archive_kafka_commit_failed", error=str(exc))
            metrics.ARCHIVE_ERRORS.labels("kafka_commit").inc()
