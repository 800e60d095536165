"""Replaying archived traffic into a topic (``gss replay``, docs/history.md "Replay").

The archived records of a topic whose Kafka timestamps fall in [from, until) are read
partition by partition (committed batches only, :mod:`gss.archive.reader`) and merged into
one order: each partition in its own offset order, the partitions interleaved by
(timestamp, partition, offset). When every partition's timestamps rise with its offsets
(log-append time, or ordinary create time) that is exactly the total order by
(timestamp, partition, offset); a late record (create time older than its predecessors') is
never moved ahead of its partition's earlier offsets, so per-partition — hence per-key — order
always holds.

Records are produced with :func:`contract.kafka.producer_config` (idempotent, acks=all, the
murmur2 partitioner): a keyed record goes to the partition its key hashes to, so every record
of one key lands on one partition in archive order. A record without a key goes to its
source partition number modulo the target's partition count (the murmur2 partitioner would
pick one at random), so the same replay over the same archive produces the same records in the
same order on every partition: key, value and headers as archived, plus ``gss-replay-of``
(``topic:partition:offset`` of the original).

Timing: record ``i`` is due ``(t_i - t_0) / speed`` seconds after the first was sent (``t_0``
the first record's timestamp; a late record is due when its predecessor was), measured on a
monotonic clock from the start, so waiting never accumulates drift; ``speed=None`` sends as
fast as the producer takes records.
"""

from __future__ import annotations

import heapq
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from contract import headers as gss_headers
from contract.errors import GssError
from contract.kafka import admin_config, producer_config
from contract.settings import KafkaSettings
from gss.archive import commits
from gss.archive.layout import ArchivedRecord
from gss.archive.reader import read_partition
from gss.archive.storage import ArchiveStorage

TIME_FORMS = (
    "ISO-8601 in UTC (2026-11-01, 2026-11-01T00:00Z, 2026-11-01T00:00:00.250+00:00; "
    "without an offset the time is taken as UTC), 'now', or a time relative to now "
    "(-90m, now-2h, -1d; units s, m, h, d)"
)
_RELATIVE = re.compile(r"^(?:now)?\s*-\s*(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
T = TypeVar("T")
_SPEED = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)x?$")


class ReplayError(GssError):
    """A replay that cannot start as asked (no such archived or target topic, a bad target)."""


# -- arguments --------------------------------------------------------------------------------


def parse_time(text: str, *, now_ms: int | None = None) -> int:
    """A time argument as Unix milliseconds (forms: :data:`TIME_FORMS`); ValueError otherwise."""
    raw = text.strip()
    lowered = raw.lower()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if lowered == "now":
        return now
    m = _RELATIVE.match(lowered)
    if m:
        return now - int(float(m[1]) * _UNITS[m[2]] * 1000)
    iso = raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw
    try:
        parsed = datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(f"bad time {text!r}: expected {TIME_FORMS}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
    return delta // timedelta(milliseconds=1)


def parse_speed(text: str) -> float | None:
    """``10x`` (or ``10``, ``0.5x``) -> 10.0; ``max`` -> None (as fast as possible)."""
    raw = text.strip().lower()
    if raw == "max":
        return None
    m = _SPEED.match(raw)
    speed = float(m[1]) if m else 0.0
    if not m or not math.isfinite(speed) or speed <= 0:
        raise ValueError(f"bad speed {text!r}: expected a positive factor like 10x, 0.5x, or max")
    return speed


def format_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


# -- order and schedule -----------------------------------------------------------------------


def _timestamp(record: ArchivedRecord) -> int:
    return record.timestamp_ms


def order_key(record: ArchivedRecord) -> tuple[int, int, int]:
    return (record.timestamp_ms, record.partition, record.offset)


def merge_partitions(streams: Iterable[Iterable[ArchivedRecord]]) -> Iterator[ArchivedRecord]:
    """One order over per-partition streams (each in offset order): by (timestamp, partition,
    offset), never reordering a stream (a merge, not a sort: streaming, order-preserving)."""
    return heapq.merge(*streams, key=order_key)


def paced(
    items: Iterable[T], speed: float | None, timestamp: Callable[[T], int]
) -> Iterator[tuple[T, float]]:
    """Each item with when it is due, in seconds after the first: ``(t - t0) / speed``, never
    earlier than the previous item (a late record goes out at once); 0 for all at
    ``speed=None``. Items without a timestamp (negative) go with their predecessor."""
    first: int | None = None
    previous = 0.0
    for item in items:
        ts = timestamp(item)
        if speed is not None and ts >= 0:
            if first is None:
                first = ts
            previous = max(previous, (ts - first) / 1000 / speed)
        yield item, previous


def send_offsets(timestamps: Iterable[int], speed: float | None) -> list[float]:
    """The send offsets (seconds after the first record) of records with these timestamps."""
    return [due for _, due in paced(timestamps, speed, lambda ts: ts)]


def schedule(records: Iterable[ArchivedRecord], speed: float | None) -> list[float]:
    """The send offsets (seconds) of ``records`` in replay order (pure; see :func:`paced`)."""
    return [due for _, due in paced(records, speed, _timestamp)]


def replay_headers(record: ArchivedRecord) -> list[tuple[str, bytes | None]]:
    """The archived headers in order, then ``gss-replay-of: topic:partition:offset``."""
    origin = f"{record.topic}:{record.partition}:{record.offset}".encode()
    return [*record.headers, (gss_headers.REPLAY_OF, origin)]


# -- the replay -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """What to replay: ``topic``'s archived records with timestamps in [from_ms, until_ms)
    (None: unbounded) into ``into``, at ``speed`` (None: max), at most ``limit`` records."""

    topic: str
    into: str
    from_ms: int | None = None
    until_ms: int | None = None
    speed: float | None = None
    limit: int | None = None
    keep_timestamps: bool = False
    allow_same_topic: bool = False


@dataclass(frozen=True, slots=True)
class Progress:
    records: int
    share: float  # of the time range (or of --limit, whichever is further)
    records_per_s: float
    eta_seconds: float | None
    elapsed_seconds: float


@dataclass
class ReplayStats:
    records: int = 0  # handed to the producer
    delivered: int = 0
    failed: int = 0
    first_error: str | None = None
    stopped: bool = False  # stopped early (stop event), after flushing
    unflushed: int = 0
    elapsed_seconds: float = 0.0
    target_partitions: int = 0
    created_topic: bool = False

    @property
    def records_per_s(self) -> float:
        return self.records / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0


def source_partitions(storage: ArchiveStorage, topic: str) -> list[int]:
    """The archived partitions of ``topic``; ReplayError naming the archived topics if none."""
    partitions = commits.archived_partitions(storage, topic)
    if not partitions:
        archived = ", ".join(commits.archived_topics(storage)) or "none"
        raise ReplayError(
            f"topic {topic!r} is not in the archive at {storage.location('')} "
            f"(archived topics: {archived})"
        )
    return partitions


def archived_time_range(
    storage: ArchiveStorage, topic: str, partitions: Iterable[int]
) -> tuple[int, int] | None:
    """[min, max] record timestamp of the archived partitions (their newest markers' totals)."""
    lows, highs = [], []
    for partition in partitions:
        newest = commits.newest_marker(storage, topic, partition)
        if newest is not None:
            lows.append(newest.totals.min_timestamp_ms)
            highs.append(newest.totals.max_timestamp_ms)
    return (min(lows), max(highs)) if lows else None


def prepare_target(
    admin: AdminClient,
    plan: ReplayPlan,
    partitions: int,
    *,
    create: bool,
    replication_factor: int = -1,
    timeout_seconds: float = 10.0,
) -> tuple[int, bool]:
    """The target's partition count (and whether it was created); refuses the archived topic
    itself unless ``plan.allow_same_topic``, and a missing target unless ``create``."""
    if plan.into == plan.topic and not plan.allow_same_topic:
        raise ReplayError(
            f"refusing to replay {plan.topic!r} into itself: that duplicates its production "
            "traffic for every consumer; pick another --into topic, or pass --allow-same-topic"
        )
    try:
        # All topics: a metadata request naming one may create it on brokers that auto-create.
        meta = admin.list_topics(timeout=timeout_seconds).topics.get(plan.into)
    except KafkaException as exc:
        raise ReplayError(f"cannot list topics to find {plan.into!r}: {exc}") from exc
    if meta is not None and meta.error is None and meta.partitions:
        return len(meta.partitions), False
    if not create:
        raise ReplayError(
            f"target topic {plan.into!r} does not exist: create it, or pass --create-topic "
            f"to create it with the archived topic's {partitions} partitions"
        )
    futures = admin.create_topics(
        [NewTopic(plan.into, partitions, replication_factor)], request_timeout=timeout_seconds
    )
    try:
        futures[plan.into].result()
    except KafkaException as exc:
        raise ReplayError(f"cannot create target topic {plan.into!r}: {exc}") from exc
    return partitions, True


class Replayer:
    """Produces ``plan``'s archived records into ``plan.into`` (see the module docstring).

    ``stop_event`` ends the replay early (after flushing what was handed to the producer);
    ``on_progress`` is called every ``progress_seconds`` and once at the end.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        storage: ArchiveStorage,
        plan: ReplayPlan,
        *,
        create_topic: bool = False,
        stop_event: threading.Event | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        progress_seconds: float = 5.0,
        flush_timeout_seconds: float = 60.0,
        client_id: str = "gss-replay",
    ) -> None:
        self.kafka = kafka
        self.storage = storage
        self.plan = plan
        self.create_topic = create_topic
        self.stop_event = stop_event or threading.Event()
        self.on_progress = on_progress
        self._progress_every = progress_seconds
        self._start = self._next_progress = 0.0
        self._span: tuple[int, int] | None = None
        self._last: ArchivedRecord | None = None
        self.flush_timeout_seconds = flush_timeout_seconds
        self.client_id = client_id
        self.stats = ReplayStats()

    def stop(self) -> None:
        self.stop_event.set()

    def records(self, partitions: list[int]) -> Iterator[ArchivedRecord]:
        """The records to replay, in replay order (``limit`` applied)."""
        plan = self.plan
        streams = [
            read_partition(
                self.storage,
                plan.topic,
                p,
                from_timestamp_ms=plan.from_ms,
                until_timestamp_ms=plan.until_ms,
            )
            for p in partitions
        ]
        for n, record in enumerate(merge_partitions(streams)):
            if plan.limit is not None and n >= plan.limit:
                return
            yield record

    def run(self) -> ReplayStats:
        plan = self.plan
        partitions = source_partitions(self.storage, plan.topic)
        target_partitions, created = prepare_target(
            AdminClient(admin_config(self.kafka, self.client_id)),
            plan,
            max(partitions) + 1,
            create=self.create_topic,
            replication_factor=self.kafka.replication_factor,
        )
        stats = self.stats
        stats.target_partitions, stats.created_topic = target_partitions, created
        producer = Producer(
            producer_config(
                self.kafka, self.client_id, delivery_timeout_seconds=self.flush_timeout_seconds
            )
        )

        def report(err: Any, _msg: Any) -> None:
            if err is None:
                stats.delivered += 1
                return
            stats.failed += 1
            if stats.first_error is None:
                stats.first_error = str(err)

        self._start = time.monotonic()
        self._next_progress = self._start + self._progress_every
        self._span = self._range(partitions)
        for record, due in paced(self.records(partitions), plan.speed, _timestamp):
            if self._wait_until(producer, self._start + due):
                break
            self._produce(producer, record, target_partitions, report)
            stats.records += 1
            self._last = record
            self._tick()
        stats.stopped = self.stop_event.is_set()
        stats.unflushed = producer.flush(self.flush_timeout_seconds)
        stats.elapsed_seconds = time.monotonic() - self._start
        self._report(time.monotonic(), done=True)
        return stats

    def _range(self, partitions: list[int]) -> tuple[int, int] | None:
        archived = archived_time_range(self.storage, self.plan.topic, partitions)
        low = self.plan.from_ms if self.plan.from_ms is not None else archived and archived[0]
        high = self.plan.until_ms if self.plan.until_ms is not None else archived and archived[1]
        if low is None or high is None or high <= low:
            return None
        return low, high

    def _wait_until(self, producer: Producer, deadline: float) -> bool:
        """Serve delivery reports until ``deadline`` (monotonic); True if asked to stop."""
        while True:
            if self.stop_event.is_set():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            producer.poll(min(left, 0.1))
            self._tick()

    def _produce(
        self,
        producer: Producer,
        record: ArchivedRecord,
        target_partitions: int,
        report: Callable[[Any, Any], None],
    ) -> None:
        kwargs: dict[str, Any] = {
            "value": record.value,
            "key": record.key,
            "headers": replay_headers(record),
            "on_delivery": report,
        }
        if record.key is None:
            # murmur2_random would pick a random partition: keep replays deterministic.
            kwargs["partition"] = record.partition % target_partitions
        if self.plan.keep_timestamps and record.timestamp_ms >= 0:
            kwargs["timestamp"] = record.timestamp_ms
        while True:
            try:
                producer.produce(self.plan.into, **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_progress:
            self._next_progress = now + self._progress_every
            self._report(now, done=False)

    def _report(self, now: float, *, done: bool) -> None:
        """A progress line: the share of the time range the last record sent reached (or of
        ``limit``, if further), the rate so far, and the time left (paced: the range left at
        ``speed``; max: extrapolated from the rate)."""
        if self.on_progress is None:
            return
        plan, sent, last = self.plan, self.stats.records, self._last
        elapsed = now - self._start
        share = 1.0 if done else 0.0
        eta: float | None = 0.0 if done else None
        if not done and last is not None and self._span is not None:
            low, high = self._span
            share = min(1.0, max(0.0, (last.timestamp_ms - low) / (high - low)))
            if plan.speed is not None:
                eta = max(0.0, (high - max(low, last.timestamp_ms)) / 1000 / plan.speed)
        if not done and plan.limit:
            share = max(share, min(1.0, sent / plan.limit))
        if not done and (eta is None or plan.speed is None) and share > 0:
            eta = elapsed * (1 - share) / share
        rate = sent / elapsed if elapsed > 0 else 0.0
        self.on_progress(Progress(sent, share, rate, eta, elapsed))
