"""The changelog ingester: materialises each galaxy's changelog topic into the store.

One consumer reads every partition this node hosts (all of them, unless the node is one of a
cluster: docs/cluster.md) of every galaxy's changelog with explicit ``assign()``
(no consumer group: each GSS replica materialises its partitions on its own), starting from
the offsets stored in RocksDB, not from offsets committed to Kafka. Each batch of records
becomes ONE :meth:`gss.kafka.outbox.Outbox.apply_with_events` call: the values that win, their
availability events, the dead letters of the batch and the next offsets of every partition it
touched are one WriteBatch. After a crash the ingester resumes exactly after the last batch
that was committed: nothing applied twice, nothing skipped.

Malformed records (undecodable, naming another galaxy, an unknown signal, a value of the wrong
type, a Kafka key that is not the record's entity) become dead letters in the same batch, so
their offsets advance with everything else and the partition never stalls.

Throughput (docs/events.md, "What bounds ingest"): a well-formed record takes a hot path that
splices its stored record and its event from serialized parts (:class:`_FastPath`,
:class:`gss.kafka.outbox.WriteFacts`); anything else takes :func:`decode_record`, the
reference, which gives the same writes and dead letters.

Readiness: a partition is *caught up* once the consumer has reached its end at least once
since it was assigned (librdkafka's partition EOF); its lag is the end offset the broker
reported in its last fetch response minus the next offset to apply (no extra round trip).
:meth:`Ingester.caught_up` is what the server's gRPC health follows.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

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
from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError

from contract import deadletter, headers, protowire
from contract.deadletter import Reason
from contract.errors import InvalidArgumentError, NotFoundError, UnavailableError
from contract.kafka import admin_config, consume_available, consumer_config
from contract.registry import GalaxySpec, Registry
from contract.settings import KafkaSettings
from contract.topics import (
    TopicKind,
    ensure_topics,
    position_of,
    topic_ids,
    topic_name,
)
from contract.v1 import envelope_pb2
from gss.kafka import metrics
from gss.kafka.meta import (
    EntryKind,
    OutboxEntry,
    encode_offset,
    offset_key,
    offset_prefix,
    parse_offset_entry,
    topic_id_key,
)
from gss.kafka.outbox import Outbox, WriteFacts
from gss.writes import now_us, to_write
from store import records
from store.db import SignalStore, Write

log = structlog.get_logger(__name__)
# How often the per-partition end offsets (and the lag gauges) are refreshed.
_LAG_REFRESH_SECONDS = 0.5


class DeadLetter(Exception):
    """A changelog record that can never be applied: why (a ``contract.deadletter.Reason``),
    the underlying error's type, and the record when it decoded (its signal, entity and event
    time go into the dead letter)."""

    def __init__(
        self,
        reason: int,
        detail: str,
        *,
        error_type: str = "",
        record: envelope_pb2.SignalRecord | None = None,
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.error_type = error_type
        self.record = record


@dataclass(frozen=True, slots=True)
class IngestStats:
    """Counts since this ingester started."""

    consumed: int
    applied: int
    skipped: int
    dead_lettered: int
    batches: int


@dataclass(frozen=True, slots=True)
class ReplicaPartition:
    """One changelog partition as this replica has it (a row of the cluster map)."""

    galaxy: str
    partition: int
    # The next offset to apply (everything before it is applied); -1: nothing applied yet.
    next_offset: int
    # The partition's end from the last fetch response; -1: not known yet.
    end_offset: int
    lag: int
    # Read to its end at least once since it was assigned.
    caught_up: bool


def stored_offsets(store: SignalStore, topic: str) -> dict[int, int]:
    """Next offset to read of each partition of ``topic``, as committed in the store."""
    out = {}
    for key, value in store.scan_meta(offset_prefix(topic)):
        _, partition, next_offset = parse_offset_entry(key, value)
        out[partition] = next_offset
    return out


def decode_record(
    galaxy: GalaxySpec, registry: Registry, msg: Message, write_time_us: int
) -> Write:
    """Validate one changelog record into a store write; raises :class:`DeadLetter`."""
    raw = msg.value()
    if not raw:
        raise DeadLetter(Reason.EMPTY, "the record has no value")
    try:
        record = envelope_pb2.SignalRecord.FromString(raw)
    except DecodeError as exc:
        raise DeadLetter(
            Reason.UNDECODABLE,
            f"not a gss.v1.SignalRecord: {exc}",
            error_type=type(exc).__name__,
        ) from None
    if record.galaxy != galaxy.name:
        raise DeadLetter(
            Reason.WRONG_GALAXY,
            f"the record names galaxy {record.galaxy!r} but is on the changelog of {galaxy.name!r}",
            record=record,
        )
    topic, partition, offset = position_of(msg)
    position = envelope_pb2.ChangelogPosition(topic=topic, partition=partition, offset=offset)
    try:
        write = to_write(registry, record, write_time_us=write_time_us, position=position)
    except NotFoundError as exc:
        raise DeadLetter(
            Reason.UNKNOWN_SIGNAL, str(exc), error_type=type(exc).__name__, record=record
        ) from None
    except InvalidArgumentError as exc:
        reason = Reason.INVALID_RECORD
        try:
            spec = galaxy.signal(record.signal.name, record.signal.version)
            if record.value.type_url != spec.type_url:
                reason = Reason.WRONG_TYPE
        except NotFoundError:
            pass
        raise DeadLetter(reason, str(exc), error_type=type(exc).__name__, record=record) from None
    entity = write.key[: galaxy.codec.length]
    key = msg.key()
    if key != entity:
        got = key.hex() if key is not None else "none"
        raise DeadLetter(
            Reason.KEY_MISMATCH,
            f"the Kafka key ({got}) is not the canonical bytes of entity {record.entity_id!r} "
            f"({entity.hex()}); producers must key records by entity so per-entity order holds",
            record=record,
        )
    return write


def dead_letter_entry(galaxy: GalaxySpec, msg: Message, error: DeadLetter) -> OutboxEntry:
    """The outbox entry of a record's dead letter (contract/deadletter.py: the record as read,
    its position, the reason and error), keyed by the record's entity when it names one of
    ``galaxy``, else by the record's own key."""
    entity = None
    record = error.record
    if record is not None and record.galaxy == galaxy.name:
        with contextlib.suppress(ValueError):
            entity = galaxy.codec.to_bytes(record.entity_id)
    letter = deadletter.from_record(
        msg,
        error.reason,
        galaxy=galaxy.name,
        error=error.detail,
        error_type=error.error_type,
        record=record,
        entity_id=galaxy.codec.to_text(entity) if entity else "",
    )
    return OutboxEntry(
        EntryKind.DLQ,
        galaxy.name,
        deadletter.kafka_key(entity, msg.key()),
        deadletter.serialize(letter),
        ((headers.CONTENT_TYPE, deadletter.CONTENT_TYPE),),
    )


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record of a batch that became a dead letter: its galaxy, position and why."""

    galaxy: str
    position: str  # topic:partition:offset
    error: DeadLetter


@dataclass(slots=True)
class DecodedBatch:
    """What one batch of changelog records turns into (:func:`decode_batch`): the writes to
    store, the dead letters, and the next offset of every partition the batch touched."""

    writes: list[Write] = field(default_factory=list)
    # facts[i]: what the hot path knew of writes[i] (None: decoded by the reference path).
    facts: list[WriteFacts | None] = field(default_factory=list)
    dead_letters: list[OutboxEntry] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    # Kafka timestamps (seconds) of the oldest and newest good record per galaxy.
    oldest: dict[str, float] = field(default_factory=dict)
    newest: dict[str, float] = field(default_factory=dict)

    def offset_meta(self) -> dict[bytes, bytes]:
        """The meta entries storing :attr:`next_offsets` (commit them with the writes)."""
        return {offset_key(t, p): encode_offset(o) for (t, p), o in self.next_offsets.items()}


# The range of google.protobuf.Timestamp seconds (as gss.writes checks it).
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


class _Plan(NamedTuple):
    """What the hot path needs of one signal version, looked up once per batch."""

    version: int
    type_url: str
    parse: Callable[[bytes], object]  # the value type's FromString: the value must decode
    key_suffix: bytes


class _FastPath:
    """The batch step's hot path for a well-formed record (most of them): the same checks as
    :func:`decode_record`, with the stored record spliced from serialized parts
    (:func:`store.records.encode_serialized`) instead of built message by message. Anything
    unusual (a tombstone, a producer-set write time or source, a failed check) returns None,
    and :func:`decode_record`, the reference, decides: the same write or the same dead letter."""

    def __init__(self, write_time_us: int) -> None:
        self._plans: dict[tuple[str, str, int], _Plan | None] = {}
        write_time = timestamp_pb2.Timestamp()
        write_time.FromMicroseconds(write_time_us)
        self.write_time = write_time.SerializeToString()
        self._write_time_field = protowire.length_delimited(2, self.write_time)
        self._positions: dict[tuple[str, int], bytes] = {}

    def _plan(self, galaxy: GalaxySpec, name: str, version: int) -> _Plan | None:
        key = (galaxy.name, name, version)
        try:
            return self._plans[key]
        except KeyError:
            pass
        plan = None
        if version:  # a write names its version (gss.writes.resolve)
            with contextlib.suppress(NotFoundError):
                spec = galaxy.signal(name, version)
                plan = _Plan(
                    spec.version, spec.type_url, spec.message_class.FromString, spec.key_suffix
                )
        self._plans[key] = plan
        return plan

    def decode(
        self, galaxy: GalaxySpec, msg: Message, topic: str, partition: int, offset: int
    ) -> tuple[Write, WriteFacts] | None:
        raw = msg.value()
        if not raw:
            return None
        try:
            record = envelope_pb2.SignalRecord.FromString(raw)
        except DecodeError:
            return None
        if record.galaxy != galaxy.name or record.tombstone:
            return None
        signal = record.signal
        plan = self._plan(galaxy, signal.name, signal.version)
        value = record.value
        if plan is None or value.type_url != plan.type_url:
            return None
        value_bytes = value.value
        try:
            plan.parse(value_bytes)
        except DecodeError:
            return None
        envelope = record.envelope
        has = envelope.HasField
        if not has("event_time") or has("write_time") or has("source"):
            return None
        event_time = envelope.event_time
        seconds, nanos = event_time.seconds, event_time.nanos
        if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < 1_000_000_000):
            return None
        codec = galaxy.codec
        try:
            entity = codec.to_bytes(record.entity_id)
        except InvalidArgumentError:
            return None
        if msg.key() != entity:
            return None
        head = self._positions.get((topic, partition))
        if head is None:
            head = protowire.length_delimited(1, topic.encode()) + protowire.varint_field(
                2, partition
            )
            self._positions[(topic, partition)] = head
        position = head + protowire.varint_field(3, offset)
        any_bytes = value.SerializeToString()
        envelope_bytes = envelope.SerializeToString()
        # The envelope's first field is its event time (fields serialize in number order).
        if envelope_bytes[0] == 0x0A and envelope_bytes[1] < 0x80:
            event_time_bytes = envelope_bytes[2 : 2 + envelope_bytes[1]]
        else:
            event_time_bytes = event_time.SerializeToString()
        event_us = seconds * 1_000_000 + nanos // 1000
        stored = records.encode_serialized(
            plan.version,
            any_bytes,
            b"".join(
                (
                    envelope_bytes,
                    self._write_time_field,
                    b"\x32",  # Envelope.source
                    protowire.varint(len(position)),
                    position,
                )
            ),
            event_us,
            offset,
        )
        facts = WriteFacts(
            codec.to_text(entity),
            event_us,
            event_time_bytes,
            self.write_time,
            position,
            partition,
            offset,
            any_bytes,
            value_bytes,
            envelope,
        )
        return Write(galaxy.name, entity + plan.key_suffix, stored, record.override_ordering), facts


def decode_batch(
    galaxy_of: Mapping[str, GalaxySpec],
    registry: Registry,
    msgs: Iterable[Message],
    write_time_us: int,
) -> DecodedBatch:
    """The ingester's batch step, shared by the live ingester and the store rebuild
    (gss/rebuild.py): each record (of a topic in ``galaxy_of``, changelog topic → galaxy)
    becomes a write or a dead letter, and its partition's next offset advances past it."""
    batch = DecodedBatch()
    fast = _FastPath(write_time_us)
    writes, facts, next_offsets = batch.writes, batch.facts, batch.next_offsets
    # Kafka timestamps (ms) of the good records, per galaxy: the oldest and newest are kept.
    stamps: dict[str, list[int]] = {}
    for msg in msgs:
        topic, partition, offset = position_of(msg)
        galaxy = galaxy_of[topic]
        next_offsets[(topic, partition)] = offset + 1
        decoded = fast.decode(galaxy, msg, topic, partition, offset)
        if decoded is not None:
            writes.append(decoded[0])
            facts.append(decoded[1])
        else:
            try:
                writes.append(decode_record(galaxy, registry, msg, write_time_us))
                facts.append(None)
            except DeadLetter as exc:
                batch.dead_letters.append(dead_letter_entry(galaxy, msg, exc))
                batch.rejected.append(Rejected(galaxy.name, f"{topic}:{partition}:{offset}", exc))
                continue
        galaxy_stamps = stamps.get(galaxy.name)
        if galaxy_stamps is None:
            galaxy_stamps = stamps[galaxy.name] = []
        galaxy_stamps.append(msg.timestamp()[1])
    batch.oldest = {name: min(ts) / 1000 for name, ts in stamps.items()}
    batch.newest = {name: max(ts) / 1000 for name, ts in stamps.items()}
    return batch


class Ingester:
    """A background thread materialising the changelogs of ``registry``'s galaxies."""

    def __init__(
        self,
        store: SignalStore,
        registry: Registry,
        kafka: KafkaSettings,
        outbox: Outbox,
        *,
        hosted: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        """``hosted``: the partitions to ingest per galaxy name (None: every partition)."""
        self.store = store
        self.registry = registry
        self.kafka = kafka
        self.outbox = outbox
        self._galaxy_of = {topic_name(kafka, TopicKind.CHANGELOG, g.name): g for g in registry}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._applied_cond = threading.Condition()
        self._next: dict[tuple[str, int], int] = {}
        self._partitions: dict[str, int] = {}
        self._hosted = (
            None
            if hosted is None
            else {
                topic_name(kafka, TopicKind.CHANGELOG, galaxy): set(partitions)
                for galaxy, partitions in hosted.items()
            }
        )
        self._assigned: list[tuple[str, int]] = []
        self._end: dict[tuple[str, int], int] = {}
        self._eof: set[tuple[str, int]] = set()
        self.ready = threading.Event()
        self._counts: Counter[str] = Counter()

    @property
    def topics(self) -> list[str]:
        return list(self._galaxy_of)

    @property
    def stats(self) -> IngestStats:
        c = self._counts
        return IngestStats(
            c["consumed"], c["applied"], c["skipped"], c["dead_lettered"], c["batches"]
        )

    def start(self) -> Ingester:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gss-ingester", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_seconds: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_seconds)
            self._thread = None

    def replica_partitions(self) -> list[ReplicaPartition]:
        """Each assigned partition's applied position, end and lag, in (galaxy, partition) order."""
        with self._applied_cond:
            rows = []
            for topic, partition in self._assigned:
                next_offset = self._next.get((topic, partition), -1)
                end = self._end.get((topic, partition), -1)
                lag = max(0, end - max(next_offset, 0)) if end >= 0 else 0
                rows.append(
                    ReplicaPartition(
                        self._galaxy_of[topic].name,
                        partition,
                        next_offset,
                        end,
                        lag,
                        (topic, partition) in self._eof,
                    )
                )
        return sorted(rows, key=lambda r: (r.galaxy, r.partition))

    def caught_up(self, max_lag_records: int) -> bool:
        """True once every assigned partition was read to its end since it was assigned and is
        at most ``max_lag_records`` behind the end the broker last reported."""
        if not self.ready.is_set():
            return False
        return all(r.caught_up and r.lag <= max_lag_records for r in self.replica_partitions())

    def hosts(self, topic: str, partition: int) -> bool:
        """Whether this ingester materialises ``partition`` of ``topic``."""
        return self._hosted is None or partition in self._hosted.get(topic, ())

    def applied(self, positions: Iterable[envelope_pb2.ChangelogPosition]) -> bool:
        """Whether every given changelog position this ingester materialises (its topics, its
        hosted partitions; others are no concern of this node's) is applied or skipped here."""
        with self._applied_cond:
            return all(
                self._next.get((p.topic, p.partition), 0) > p.offset
                for p in positions
                if p.topic in self._galaxy_of and self.hosts(p.topic, p.partition)
            )

    def wait_applied(
        self, positions: Iterable[envelope_pb2.ChangelogPosition], timeout_seconds: float
    ) -> bool:
        """Wait until the ingester has committed every given changelog position; False on
        timeout. A committed record is readable (applied) or was not newer (skipped)."""
        wanted = [(p.topic, p.partition, p.offset) for p in positions]
        deadline = time.monotonic() + timeout_seconds
        with self._applied_cond:
            while True:
                if all(self._next.get((t, p), 0) > o for t, p, o in wanted):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._applied_cond.wait(left)

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        admin = AdminClient(admin_config(self.kafka, "gss-ingester-admin"))
        consumer: Consumer | None = None
        next_check = 0.0
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = Consumer(
                        {
                            **consumer_config(self.kafka, "gss-ingester", "gss-ingester"),
                            # The end of a partition is how readiness knows it caught up.
                            "enable.partition.eof": True,
                        }
                    )
                    if not self._assign(consumer, admin):
                        consumer.close()
                        consumer = None
                        self._stop.wait(1.0)
                        continue
                    next_check = time.monotonic() + self.kafka.topic_check_interval_seconds
                    next_lag = 0.0
                    self.ready.set()
                msgs = consume_available(consumer, self.kafka.ingest_batch_max_records, 0.1)
                good: list[Message] = []
                for msg in msgs:
                    err = msg.error()
                    if err is None:
                        good.append(msg)
                    elif err.code() in (
                        KafkaError.UNKNOWN_TOPIC_OR_PART,
                        KafkaError._UNKNOWN_TOPIC,
                    ):
                        next_check = 0.0
                    elif err.code() == KafkaError._PARTITION_EOF:
                        self._reached_end(msg)
                    else:
                        log.warning(
                            "changelog_consume_error", error=err.str(), error_code=err.name()
                        )
                if good:
                    self._apply(good)
                if time.monotonic() >= next_lag:
                    next_lag = time.monotonic() + _LAG_REFRESH_SECONDS
                    self._refresh_ends(consumer)
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.kafka.topic_check_interval_seconds
                    if self._topics_changed(admin):
                        consumer.close()
                        consumer = None
            except Exception:
                # Whatever failed, the batch was not committed: resume from the stored offsets.
                log.exception("ingester_failed", action="resuming from the stored offsets in 1 s")
                if consumer is not None:
                    consumer.close()
                    consumer = None
                self._stop.wait(1.0)
        if consumer is not None:
            consumer.close()
        log.info("ingester_stopped", **self._counts)

    def _assign(self, consumer: Consumer, admin: AdminClient) -> bool:
        """Assign every changelog partition at its stored offset; False if topics are missing."""
        try:
            if self.kafka.create_topics:
                ensure_topics(self.kafka, self.registry, admin=admin, timeout_seconds=5.0)
            metadata = admin.list_topics(timeout=5.0).topics
        except (UnavailableError, KafkaException) as exc:
            log.warning("changelog_unavailable", error=str(exc), action="retrying in 1 s")
            return False
        missing = [t for t in self._galaxy_of if t not in metadata or metadata[t].error is not None]
        if missing:
            log.warning("changelog_topics_missing", topics=missing, action="retrying in 1 s")
            return False
        self._check_topic_ids(admin)
        assignment = []
        with self._applied_cond:
            self._next.clear()
            for topic in self._galaxy_of:
                stored = stored_offsets(self.store, topic)
                partitions = sorted(metadata[topic].partitions)
                self._partitions[topic] = len(partitions)
                for partition in partitions:
                    if not self.hosts(topic, partition):
                        continue
                    start = stored.get(partition)
                    if start is not None:
                        self._next[(topic, partition)] = start
                    assignment.append(
                        TopicPartition(
                            topic, partition, start if start is not None else OFFSET_BEGINNING
                        )
                    )
        consumer.assign(assignment)
        with self._applied_cond:
            self._assigned = [(tp.topic, tp.partition) for tp in assignment]
            self._eof.clear()
            self._end.clear()
        log.info(
            "ingester_assigned",
            topics=list(self._galaxy_of),
            resumed_partitions=sum(1 for tp in assignment if tp.offset >= 0),
            changelog_positions={
                f"{tp.topic}:{tp.partition}": tp.offset for tp in assignment if tp.offset >= 0
            },
        )
        return True

    def _reached_end(self, msg: Message) -> None:
        topic, partition = msg.topic(), msg.partition()
        if topic is None or partition is None:
            return
        with self._applied_cond:
            first = (topic, partition) not in self._eof
            self._eof.add((topic, partition))
        if first:
            log.info(
                "changelog_partition_caught_up",
                galaxy=self._galaxy_of[topic].name,
                topic=topic,
                partition=partition,
                next_offset=msg.offset(),
            )

    def _refresh_ends(self, consumer: Consumer) -> None:
        """The end offsets from the last fetch responses (cached: no broker round trip)."""
        ends = {}
        for topic, partition in self._assigned:
            try:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
            except KafkaException:
                continue
            if high is not None and high >= 0:
                ends[(topic, partition)] = high
        with self._applied_cond:
            self._end.update(ends)
        for row in self.replica_partitions():
            metrics.CHANGELOG_LAG.labels(row.galaxy, str(row.partition)).set(row.lag)

    def _check_topic_ids(self, admin: AdminClient) -> bool:
        """Store each changelog topic's id; if a topic has a new id, its offsets start over.
        True if any offsets were reset."""
        try:
            ids = topic_ids(admin, self._galaxy_of)
        except KafkaException as exc:
            log.info("changelog_topic_ids_unavailable", error=str(exc))
            return False
        meta: dict[bytes, bytes] = {}
        reset = False
        for topic, topic_id in ids.items():
            stored = self.store.get_meta(topic_id_key(topic))
            if stored is not None and stored.decode() == topic_id:
                continue
            meta[topic_id_key(topic)] = topic_id.encode()
            old = stored_offsets(self.store, topic)
            if stored is not None and old:
                galaxy = self._galaxy_of[topic].name
                log.warning(
                    "changelog_topic_recreated",
                    galaxy=galaxy,
                    topic=topic,
                    topic_id=topic_id,
                    previous_topic_id=stored.decode(),
                    action="reading the new topic from its beginning",
                )
                metrics.CHANGELOG_OFFSET_RESETS.labels(galaxy).inc()
                meta.update({offset_key(topic, p): encode_offset(0) for p in old})
                reset = True
        if meta:
            self.store.apply([], meta=meta)
        return reset

    def _topics_changed(self, admin: AdminClient) -> bool:
        """True if the assignment must be rebuilt (a topic was recreated or resized)."""
        if self._check_topic_ids(admin):
            return True
        try:
            metadata = admin.list_topics(timeout=5.0).topics
        except KafkaException:
            return False
        for topic, count in self._partitions.items():
            meta = metadata.get(topic)
            if meta is None or meta.error is not None:
                return True  # gone: re-create and re-assign
            if len(meta.partitions) != count:
                log.info(
                    "changelog_partitions_changed", topic=topic, partitions=len(meta.partitions)
                )
                return True
        return False

    def _apply(self, msgs: Sequence[Message]) -> None:
        batch = decode_batch(self._galaxy_of, self.registry, msgs, now_us())
        dead_counts: Counter[tuple[str, str]] = Counter()
        for rejected in batch.rejected:
            reason = deadletter.reason_label(rejected.error.reason)
            dead_counts[(rejected.galaxy, reason)] += 1
            log.warning(
                "changelog_record_dead_lettered",
                galaxy=rejected.galaxy,
                reason=reason,
                error=rejected.error.detail,
                changelog_position=rejected.position,
            )
        writes, dead = batch.writes, batch.dead_letters
        next_offsets, oldest, newest = batch.next_offsets, batch.oldest, batch.newest
        result = self.outbox.apply_with_events(
            writes, meta=batch.offset_meta(), dead_letters=dead, facts=batch.facts
        )
        committed = time.time()
        with self._applied_cond:
            self._next.update(next_offsets)
            self._applied_cond.notify_all()
        outcomes: Counter[tuple[str, str]] = Counter()
        if len(oldest) == 1:  # the galaxies of the good records: one, the usual case
            (galaxy_name,) = oldest
            applied_count = result.applied_count
            outcomes[(galaxy_name, "applied")] = applied_count
            outcomes[(galaxy_name, "skipped")] = len(writes) - applied_count
        else:
            for write, applied in zip(writes, result.applied, strict=True):
                outcomes[(write.galaxy, "applied" if applied else "skipped")] += 1
        for (galaxy_name, outcome), n in outcomes.items():
            if n:
                metrics.CHANGELOG_RECORDS.labels(galaxy_name, outcome).inc(n)
        # One observation per batch and galaxy (its oldest record): per record would cost more
        # than the rest of the bookkeeping.
        for galaxy_name, ts in oldest.items():
            metrics.CHANGELOG_APPLY_DELAY.labels(galaxy_name).observe(max(0.0, committed - ts))
        for galaxy_name, ts in newest.items():
            metrics.CHANGELOG_LAST_RECORD_TIMESTAMP.labels(galaxy_name).set(ts)
        for (galaxy_name, reason), n in dead_counts.items():
            metrics.DEAD_LETTERS.labels(galaxy_name, reason).inc(n)
            metrics.CHANGELOG_RECORDS.labels(galaxy_name, "dead_lettered").inc(n)
        self._counts.update(
            consumed=len(msgs),
            applied=result.applied_count,
            skipped=result.skipped_count,
            dead_lettered=len(dead),
            batches=1,
        )
