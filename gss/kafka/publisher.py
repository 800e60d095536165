"""The outbox publisher: sends committed outbox entries to Kafka, deletes them once acknowledged.

One idempotent producer (acks=all) sends entries in commit order, so the events of one entity
reach its partition of ``gss.<galaxy>.available`` in the order their values were written.
An entry is deleted only after its delivery report says the broker has it: a crash or a broker
outage leaves it in the outbox, and it is sent again (at-least-once; consumers dedupe by event
id). When a delivery fails (broker down longer than ``publish_timeout_seconds``, topic gone),
the producer is thrown away, missing topics are created again, and a fresh producer re-sends
everything still in the outbox, in order.

Events of backfilled values wait in a queue of their own (``BACKFILL_OUTBOX_PREFIX``): each
round sends the live entries first, then backfill entries as a token bucket allows
(``kafka.backfill_events_per_second``, bursts of one second's worth), so a backfill never
delays or floods live events. The two queues are each in commit order; an entity's backfill
event may reach the topic after a later live event of it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

import structlog
from confluent_kafka import KafkaError, Message, Producer

from contract.errors import UnavailableError
from contract.kafka import producer_config
from contract.registry import Registry
from contract.settings import KafkaSettings
from contract.topics import TopicKind, ensure_topics, topic_name
from contract.v1 import dead_letter_pb2, events_pb2
from gss.kafka import metrics
from gss.kafka.election import PublisherElection
from gss.kafka.meta import (
    BACKFILL_OUTBOX_PREFIX,
    OUTBOX_PREFIX,
    OUTBOX_QUEUES_PREFIX,
    EntryKind,
    OutboxEntry,
    outbox_sequence,
)
from gss.kafka.outbox import Outbox

log = structlog.get_logger(__name__)

_KIND_TOPIC = {EntryKind.AVAILABLE: TopicKind.AVAILABLE, EntryKind.DLQ: TopicKind.DLQ}
_MAX_BACKOFF_SECONDS = 5.0


# A delivery report: producer generation, outbox key, galaxy, kind, error (None: acknowledged).
_Report = tuple[int, bytes, str, EntryKind, KafkaError | None]


class OutboxPublisher:
    """A background thread publishing the outbox. ``start()``, then ``stop()``."""

    def __init__(
        self,
        outbox: Outbox,
        kafka: KafkaSettings,
        registry: Registry,
        election: PublisherElection | None = None,
    ) -> None:
        """``election``: among replicas, publish only the partitions this node was elected for
        (gss.kafka.election); None publishes everything (one replica per partition)."""
        self.outbox = outbox
        self.election = election
        self._election_generation = -1
        self._positions: dict[bytes, tuple[str, int, int]] = {}
        # Per changelog partition, the highest offset whose events the broker acknowledged:
        # committed (by _prune) only up to the oldest entry of the partition still unsent.
        self._acked: dict[tuple[str, int], int] = {}
        self._next_prune = 0.0
        self._skipped = 0  # entries of the last round left to other replicas
        # The partitions this node publishes, fixed for a whole round: an entity's events must
        # not overtake each other when ownership changes mid-scan (the next round rescans).
        self._owned: set[tuple[str, int]] = set()
        self.kafka = kafka
        self.registry = registry
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reports: list[_Report] = []
        self._generation = 0
        self._topics: dict[tuple[EntryKind, str], str] = {}
        self.published = 0
        self.failures = 0
        self._backfill_cursor: bytes | None = None
        self._backfill_rate = kafka.backfill_events_per_second
        self._tokens = max(1.0, self._backfill_rate)
        self._tokens_at = time.monotonic()
        # With several serving processes (gss.readers): blocks until every one of them reads
        # at least the given store sequence number, so nothing is announced before it is
        # readable through every process that serves.
        self.readable_gate: Callable[[int], None] | None = None

    def start(self) -> OutboxPublisher:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="gss-outbox-publisher", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout_seconds: float = 10.0) -> None:
        """Stop after a last attempt (up to ``timeout_seconds``) to send what is in flight."""
        self._stop.set()
        self.outbox.wake()
        if self._thread is not None:
            self._thread.join(timeout_seconds + 5)
            self._thread = None

    def wait_empty(self, timeout_seconds: float) -> bool:
        """Wait until the outbox is empty (every entry acknowledged); False on timeout."""
        deadline = time.monotonic() + timeout_seconds
        while self.outbox.depth and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.outbox.depth == 0

    def _topic(self, kind: EntryKind, galaxy: str) -> str:
        cache_key = (kind, galaxy)
        topic = self._topics.get(cache_key)
        if topic is None:
            topic = topic_name(self.kafka, _KIND_TOPIC[kind], galaxy)
            self._topics[cache_key] = topic
        return topic

    def _new_producer(self) -> Producer:
        self._generation += 1
        return Producer(
            producer_config(
                self.kafka,
                "gss-outbox-publisher",
                delivery_timeout_seconds=self.kafka.publish_timeout_seconds,
            )
        )

    def _run(self) -> None:
        log.info("outbox_publisher_started", outbox_entries=self.outbox.depth)
        producer: Producer | None = None
        cursor: bytes | None = None  # the last key handed to the current producer
        in_flight: set[bytes] = set()
        backoff = 0.5
        while not self._stop.is_set():
            try:
                producer, cursor, in_flight, backoff = self._step(
                    producer, cursor, in_flight, backoff
                )
            except Exception:
                log.exception("outbox_publisher_failed", action="resending the outbox in 1 s")
                if producer is not None:
                    producer.purge()
                    producer = None
                self._generation += 1
                self._stop.wait(1.0)
        if producer is not None:
            producer.flush(min(5.0, self.kafka.publish_timeout_seconds))
            acked, _ = self._collect(in_flight)
            self.outbox.removed(acked)
        log.info(
            "outbox_publisher_stopped", outbox_entries=self.outbox.depth, published=self.published
        )

    def _step(
        self, producer: Producer | None, cursor: bytes | None, in_flight: set[bytes], backoff: float
    ) -> tuple[Producer | None, bytes | None, set[bytes], float]:
        """One round: send what fits, collect reports, delete what was acknowledged."""
        if producer is None:
            producer = self._new_producer()
            cursor, in_flight = None, set()
            self._backfill_cursor = None
            self._positions.clear()
        if self.election is not None:
            generation, self._owned = self.election.owned()
            if generation != self._election_generation:
                # Partitions were won or lost: look at the whole outbox again, and forget
                # acknowledgements of partitions lost (won back, a stale one could move the
                # group's offset back before the other owner's newer commit is read).
                self._election_generation = generation
                cursor, self._backfill_cursor = None, None
                self._acked = {p: o for p, o in self._acked.items() if p in self._owned}
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + 1.0
                self._prune()
        room = self.kafka.outbox_max_in_flight - len(in_flight)
        sent = 0
        self._skipped = 0
        if room > 0:
            cursor, sent = self._send(producer, OUTBOX_PREFIX, cursor, room, in_flight)
        idle_wait = 0.5
        room -= sent
        if room > 0:
            now = time.monotonic()
            burst = max(1.0, self._backfill_rate)
            self._tokens = min(burst, self._tokens + (now - self._tokens_at) * self._backfill_rate)
            self._tokens_at = now
            allowance = min(room, int(self._tokens))
            if allowance > 0:
                self._backfill_cursor, sent_backfill = self._send(
                    producer, BACKFILL_OUTBOX_PREFIX, self._backfill_cursor, allowance, in_flight
                )
                self._tokens -= sent_backfill
                sent += sent_backfill
            else:  # backfill entries may be waiting for the next token
                idle_wait = min(idle_wait, max(0.001, (1.0 - self._tokens) / self._backfill_rate))
        if in_flight:
            producer.poll(0.01)
        acked, failure = self._collect(in_flight)
        if acked:
            self.outbox.removed(acked)
            backoff = 0.5
        if failure is not None:
            self._recover(producer, failure)
            self._stop.wait(backoff)
            return None, None, set(), min(backoff * 2, _MAX_BACKOFF_SECONDS)
        if not in_flight and not sent and not self._skipped:
            self.outbox.wait(idle_wait)
        return producer, cursor, in_flight, backoff

    def _send(
        self,
        producer: Producer,
        prefix: bytes,
        cursor: bytes | None,
        limit: int,
        in_flight: set[bytes],
    ) -> tuple[bytes | None, int]:
        """Hand up to ``limit`` entries of one queue after ``cursor`` to the producer; the new
        cursor and how many were handed over."""
        sent = 0
        start = cursor + b"\x00" if cursor is not None else None
        entries = list(self.outbox.store.scan_meta(prefix, limit, start=start))
        if entries and self.readable_gate is not None:
            # Read after the scan, the store's sequence covers every entry (and its value,
            # committed in the same batch): wait until every serving process reads it.
            self.readable_gate(self.outbox.store.sequence())
        pending = self.outbox.pending
        for key, raw in entries:
            # The entry as the ingester made it, when it is still at hand (the store's copy
            # is what says that it is committed, and in which order). With an election
            # (replicas), entries are decoded from the store as they always were.
            ready = pending.pop(key, None)
            if key in in_flight:
                cursor = key
                continue
            if ready is not None and self.election is None:
                if not self._produce(producer, key, *ready):
                    pending[key] = ready
                    break
                cursor = key
                in_flight.add(key)
                sent += 1
                continue
            try:
                entry = OutboxEntry.decode(raw)
            except ValueError as exc:
                # Never written by this GSS (or damaged): it can never be sent.
                log.error("outbox_entry_unreadable", error=str(exc), outbox_key=key.hex())
                self.outbox.removed([key])
                continue
            if self.election is not None:
                position = entry_position(entry)
                if position is not None:
                    topic, partition, offset = position
                    if (topic, partition) not in self._owned or offset < (
                        self.election.committed(topic, partition)
                    ):
                        cursor = key  # another replica's to send (or sent already)
                        self._skipped += 1
                        continue
                    self._positions[key] = position
            if not self._produce(
                producer, key, entry.kind, entry.galaxy, entry.key, entry.value, entry.headers
            ):
                break
            cursor = key
            in_flight.add(key)
            sent += 1
        return cursor, sent

    def _produce(
        self,
        producer: Producer,
        key: bytes,
        kind: EntryKind,
        galaxy: str,
        kafka_key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]],
    ) -> bool:
        generation = self._generation

        def report(err: KafkaError | None, _msg: Message) -> None:
            # self._reports, not a local: _collect swaps the list
            self._reports.append((generation, key, galaxy, kind, err))

        try:
            producer.produce(
                self._topic(kind, galaxy),
                value=value,
                key=kafka_key,
                headers=headers if isinstance(headers, list) else list(headers),
                on_delivery=report,
            )
        except BufferError:
            return False  # the local queue is full: send the rest after some reports
        return True

    def _collect(self, in_flight: set[bytes]) -> tuple[list[bytes], KafkaError | None]:
        reports, self._reports = self._reports, []
        acked: list[bytes] = []
        failure: KafkaError | None = None
        counts: Counter[tuple[str, EntryKind]] = Counter()
        current = self._generation
        positions = self._positions
        for generation, key, galaxy, kind, error in reports:
            if generation != current:
                continue  # a discarded producer's report: its entries are being sent again
            in_flight.discard(key)
            position = positions.pop(key, None) if positions else None
            if error is None:
                acked.append(key)
                counts[(galaxy, kind)] += 1
                if position is not None:
                    topic, partition, offset = position
                    self._acked[(topic, partition)] = max(
                        offset, self._acked.get((topic, partition), -1)
                    )
            elif failure is None:
                failure = error
        for (galaxy, kind), n in counts.items():
            metrics.OUTBOX_PUBLISHED.labels(galaxy, kind.name.lower()).inc(n)
        if acked:
            oldest = min(outbox_sequence(key) for key in acked)
            metrics.EVENT_PUBLISH_DELAY.observe(max(0.0, time.time() - oldest / 1e9))
        self.published += len(acked)
        return acked, failure

    def _prune(self) -> None:
        """Commit, for the partitions this node publishes, the offset before which every
        event was acknowledged; delete entries whose partition's publisher (this node or
        another replica) has committed past them.

        Acknowledgements arrive out of changelog order (an entity's events go to its own
        partition of the events topic, and backfill entries wait for tokens), so the highest
        acknowledged offset is not what can be committed: a replica taking over would start
        after it and never send the older entries still unsent. What is committed is the
        oldest offset of an entry still in the outbox, or, when none is, the highest
        acknowledged. The acknowledgements are read before the scan, and the scan is one
        iterator over both queues (one view of the store): the ingester applies a partition
        in offset order, so an entry older than one the scan sees was already in the outbox
        when the iterator was made. (Two iterators, one a queue, would not do: a live entry
        committed between them with a backfill entry after it would be skipped.)

        A partition's backfill entries, waiting for their rate, hold its commit back: the
        other replicas keep the partition's later live entries until they are sent.
        """
        assert self.election is not None
        acked = dict(self._acked)
        oldest: dict[tuple[str, int], int] = {}
        done: list[bytes] = []
        for key, raw in self.outbox.store.scan_meta(OUTBOX_QUEUES_PREFIX):
            try:
                position = entry_position(OutboxEntry.decode(raw))
            except ValueError:
                continue  # _send reports and removes it
            if position is None:
                continue
            topic, partition, offset = position
            if offset < self.election.committed(topic, partition):
                done.append(key)
            elif offset < oldest.get((topic, partition), offset + 1):
                oldest[(topic, partition)] = offset
        if done:
            self.outbox.removed(done)
            log.debug("outbox_pruned", outbox_entries=len(done))
        _, owned = self.election.owned()
        commit = {p: offset for p, offset in acked.items() if p in owned and p not in oldest}
        commit.update({p: offset - 1 for p, offset in oldest.items() if p in owned})
        if commit:
            self.election.published(commit)

    def _recover(self, producer: Producer, failure: KafkaError) -> None:
        self.failures += 1
        metrics.OUTBOX_PUBLISH_FAILURES.inc()
        log.warning(
            "outbox_publish_failed",
            error=failure.str(),
            error_code=failure.name(),
            outbox_entries=self.outbox.depth,
            action="resending the outbox with a fresh producer",
        )
        producer.purge()
        producer.flush(0)
        self._generation += 1  # ignore whatever the old producer still reports
        if self.kafka.create_topics:
            try:
                ensure_topics(self.kafka, self.registry, timeout_seconds=5.0)
            except UnavailableError as exc:
                log.info("outbox_topics_unavailable", error=str(exc))


def entry_position(entry: OutboxEntry) -> tuple[str, int, int] | None:
    """(changelog topic, partition, offset) an outbox entry comes from; None for a direct
    write (no changelog) or a dead letter without a position."""
    if entry.kind is EntryKind.AVAILABLE:
        position = events_pb2.SignalAvailable.FromString(entry.value).position
        if not position.topic:
            return None
        return position.topic, position.partition, position.offset
    letter = dead_letter_pb2.DeadLetter.FromString(entry.value)
    if not letter.HasField("input_partition") or not letter.HasField("input_offset"):
        return None
    return letter.input_topic, letter.input_partition, letter.input_offset
