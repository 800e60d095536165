"""Writing signal records to a galaxy's changelog topic.

A changelog record is a serialized ``gss.v1.SignalRecord``; its Kafka key is the entity's
canonical bytes (:mod:`contract.keys`), and producers partition keys with murmur2 like Java clients
(Flink's KafkaSink), so an entity's records share one partition whoever wrote them.

:class:`ChangelogWriter` is PutSignals' path when a broker is configured: validate the whole
batch with :func:`gss.writes.to_writes` (the one validation), append it to the changelog,
and optionally wait until the ingester has made it readable.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from contract import headers
from contract.errors import UnavailableError, WrongNodeError
from contract.kafka import producer_config
from contract.partitions import partition_of
from contract.registry import Registry
from contract.settings import KafkaSettings
from contract.topics import TopicKind, position_of, topic_name
from contract.v1 import envelope_pb2, signal_service_pb2
from gss.kafka.ingester import Ingester
from gss.writes import to_writes
from store import records as stored_records
from store.db import SignalStore

log = structlog.get_logger(__name__)

DeliveryCallback = Callable[[KafkaError | None, Message], None]

HEADERS: list[tuple[str, str | bytes | None]] = [
    (headers.CONTENT_TYPE, headers.SIGNAL_RECORD_CONTENT_TYPE)
]


def changelog_key(registry: Registry, record: envelope_pb2.SignalRecord) -> bytes:
    """The Kafka key of a changelog record: its entity's canonical bytes."""
    return registry.galaxy(record.galaxy).codec.to_bytes(record.entity_id)


class _Pending:
    """Delivery reports of one put call."""

    def __init__(self, count: int) -> None:
        self.positions: list[envelope_pb2.ChangelogPosition | None] = [None] * count
        self.errors: list[KafkaError] = []
        self.left = count
        self.done = threading.Event()
        if count == 0:
            self.done.set()

    def report(self, index: int, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(err)
        else:
            topic, partition, offset = position_of(msg)
            self.positions[index] = envelope_pb2.ChangelogPosition(
                topic=topic, partition=partition, offset=offset
            )
        self.left -= 1
        if self.left == 0:
            self.done.set()


class ChangelogWriter:
    """Appends validated records to the changelog; thread-safe (gRPC worker threads share one).

    A background thread serves the producer's delivery reports. ``ingester`` (the one in this
    process) is needed only for ``wait_readable``.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        registry: Registry,
        *,
        store: SignalStore | None = None,
        ingester: Ingester | None = None,
    ) -> None:
        self.kafka = kafka
        self.registry = registry
        self.store = store
        self.ingester = ingester
        self._lock = threading.Lock()
        self._producer = self._new_producer()
        self._warm_up(self._producer)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="gss-changelog-writer", daemon=True)
        self._poller.start()

    def _new_producer(self) -> Producer:
        return Producer(
            producer_config(
                self.kafka,
                "gss-changelog-writer",
                delivery_timeout_seconds=self.kafka.put_timeout_seconds,
            )
        )

    def _warm_up(self, producer: Producer) -> None:
        # Fetch the changelog topics' metadata now rather than in the first PutSignals call.
        for galaxy in self.registry:
            try:
                producer.list_topics(
                    topic_name(self.kafka, TopicKind.CHANGELOG, galaxy.name), timeout=2
                )
            except KafkaException as exc:
                log.info("changelog_metadata_unavailable", galaxy=galaxy.name, error=str(exc))

    def _poll(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                producer = self._producer
            producer.poll(0.05)

    def close(self, timeout_seconds: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout_seconds``), then stop."""
        self._stop.set()
        self._poller.join(2)
        self._producer.flush(timeout_seconds)

    def put(
        self,
        records: Sequence[envelope_pb2.SignalRecord],
        *,
        wait_readable: bool = False,
        timeout_seconds: float | None = None,
    ) -> signal_service_pb2.PutSignalsResponse:
        """Validate all of ``records`` (nothing is sent if one is bad), append them to the
        changelog and wait for the broker's acknowledgements (at most ``timeout_seconds``).

        Outcomes are ACCEPTED; with ``wait_readable``, APPLIED if the value now stored is this
        record's, SKIPPED_NOT_NEWER if the stored value is newer. Raises UnavailableError if
        the broker does not acknowledge in time (some records may be in the changelog then:
        retrying is safe; a record appended twice stores the same value twice, the later copy
        winning by its changelog offset).
        """
        deadline = time.monotonic() + (timeout_seconds or self.kafka.put_timeout_seconds + 5)
        to_writes(self.registry, records)  # the one validation; raises naming the bad record
        if wait_readable:
            self._check_hosted(records)
        pending = _Pending(len(records))
        with self._lock:
            producer = self._producer
        for i, record in enumerate(records):
            topic = topic_name(self.kafka, TopicKind.CHANGELOG, record.galaxy)
            self._produce(
                producer,
                topic,
                changelog_key(self.registry, record),
                record.SerializeToString(),
                functools.partial(pending.report, i),
            )
        if not pending.done.wait(max(0.0, deadline - time.monotonic())):
            raise UnavailableError(
                f"the broker did not acknowledge {pending.left} of {len(records)} records in time; "
                "retry (a repeated record stores the same value again)"
            )
        if pending.errors:
            self._replace(producer, pending.errors[0])
            raise UnavailableError(
                f"{len(pending.errors)} of {len(records)} records were not appended to the changelog "
                f"({pending.errors[0].str()}); retry (a repeated record stores the same value again)"
            )
        positions = [p for p in pending.positions if p is not None]
        if wait_readable:
            outcomes = self._wait_readable(records, positions, deadline)
        else:
            outcomes = [signal_service_pb2.WRITE_OUTCOME_ACCEPTED for _ in records]
        return signal_service_pb2.PutSignalsResponse(outcomes=outcomes, positions=positions)

    def _check_hosted(self, records: Sequence[envelope_pb2.SignalRecord]) -> None:
        """wait_readable waits for this node's ingester: refuse records it will never apply."""
        if self.ingester is None:
            return
        for i, record in enumerate(records):
            galaxy = self.registry.galaxy(record.galaxy)
            partition = partition_of(changelog_key(self.registry, record), galaxy.partitions)
            topic = topic_name(self.kafka, TopicKind.CHANGELOG, record.galaxy)
            if not self.ingester.hosts(topic, partition):
                raise WrongNodeError(
                    f"records[{i}] is on partition {partition} of galaxy {record.galaxy}, which "
                    "this node does not host, so it cannot wait until the record is readable: "
                    "send it to a node hosting the partition (clients.cluster.ClusterClient "
                    "routes writes), or write without wait_readable"
                )

    def _produce(
        self, producer: Producer, topic: str, key: bytes, value: bytes, callback: DeliveryCallback
    ) -> None:
        deadline = time.monotonic() + self.kafka.put_timeout_seconds
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=HEADERS, on_delivery=callback)
                return
            except BufferError:
                if time.monotonic() > deadline:
                    raise UnavailableError(
                        "the changelog producer's queue stayed full; retry later"
                    ) from None
                time.sleep(0.01)

    def _replace(self, producer: Producer, error: KafkaError) -> None:
        """An idempotent producer that lost a record must not keep going: start a fresh one."""
        with self._lock:
            if self._producer is not producer:
                return
            self._producer = self._new_producer()
        log.warning("changelog_producer_replaced", error=error.str(), error_code=error.name())
        producer.purge()
        producer.flush(0)

    def _wait_readable(
        self,
        batch: Sequence[envelope_pb2.SignalRecord],
        positions: list[envelope_pb2.ChangelogPosition],
        deadline: float,
    ) -> list[signal_service_pb2.WriteOutcome.ValueType]:
        if self.ingester is None or self.store is None:
            raise UnavailableError(
                "wait_readable needs the changelog ingester running in this server"
            )
        wait = min(self.kafka.wait_readable_timeout_seconds, max(0.0, deadline - time.monotonic()))
        if not self.ingester.wait_applied(positions, wait):
            raise UnavailableError(
                f"the records are in the changelog ({_describe(positions)}) but were not readable "
                f"within {wait:.1f} s; they will be applied"
            )
        outcomes = []
        for record, position in zip(batch, positions, strict=True):
            galaxy = self.registry.galaxy(record.galaxy)
            spec = galaxy.signal(record.signal.name, record.signal.version)
            key = spec.store_key(galaxy.codec.to_bytes(record.entity_id))
            (stored,) = self.store.get_many(galaxy.name, [key])
            mine = stored is not None and stored_records.order_of(stored) == (
                stored_records.timestamp_us(record.envelope.event_time),
                position.offset,
            )
            outcomes.append(
                signal_service_pb2.WRITE_OUTCOME_APPLIED
                if mine
                else signal_service_pb2.WRITE_OUTCOME_SKIPPED_NOT_NEWER
            )
        return outcomes


def _describe(positions: Sequence[envelope_pb2.ChangelogPosition]) -> str:
    shown = ", ".join(f"{p.topic}:{p.partition}:{p.offset}" for p in positions[:3])
    return shown + (f" and {len(positions) - 3} more" if len(positions) > 3 else "")
