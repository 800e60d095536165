"""Subscribing to "signal available" events: a Kafka consumer-group member for downstream services.

    with Subscriber("kafka:9092", "images", group_id="thumbnailer", signals=["dominant_colors"]) as sub:
        for batch in sub.batches():
            values = sub.fetch_values(gss_client, batch)   # one GetSignals per signal in the batch
            ...

Delivery is at-least-once: an event can arrive more than once (after a crash of GSS or of the
subscriber, or a rebalance). Every event carries a stable ``event_id``; the subscriber drops
repeats it has seen recently (``dedupe_window`` ids), and a consumer that must never process
a value twice keeps its own record of ids or makes its processing idempotent. Offsets are
committed only for events the caller has finished with: an event is finished when the caller
asks for the next batch (or calls :meth:`Subscriber.commit`).

Events of one entity arrive in the order their values were written (one partition per entity).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from clients.lookup import GssClient, SignalValue, decode_value, parse_signal_ref
from contract import headers
from contract.kafka import consume_available, security_config
from contract.settings import KafkaSettings
from contract.topics import AVAILABLE_TOPIC, galaxy_topic
from contract.v1 import events_pb2


@dataclass(frozen=True, slots=True)
class Event:
    """One availability event and where it was read from."""

    event: events_pb2.SignalAvailable
    partition: int
    offset: int

    @property
    def event_id(self) -> str:
        return self.event.event_id

    @property
    def entity_id(self) -> str:
        return self.event.entity_id

    @property
    def signal(self) -> str:
        """``name@version``."""
        return f"{self.event.signal.name}@{self.event.signal.version}"

    @property
    def deleted(self) -> bool:
        """True if the event announces a deletion: the value is gone (GetSignals: NOT_FOUND)."""
        return self.event.deleted

    @property
    def value(self) -> ProtoMessage | None:
        """The value, decoded, when the event carries it inline (small values of signals that
        allow it); otherwise None: fetch it with :meth:`Subscriber.fetch_values`."""
        return decode_value(self.event.value) if self.event.HasField("value") else None


def _signal_test(signals: Iterable[str]) -> set[tuple[str, int]] | None:
    wanted = {(ref.name, ref.version) for ref in map(parse_signal_ref, signals)}
    return wanted or None


class Subscriber:
    """A member of consumer group ``group_id`` on one galaxy's availability topic.

    ``config`` goes to librdkafka as is (security.protocol, sasl.*, ssl.* ...). A new group
    starts at the earliest retained event (``start="earliest"``) or only sees new ones
    (``"latest"``; Kafka resolves it on the broker).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        galaxy: str,
        group_id: str,
        *,
        signals: Iterable[str] = (),
        topic: str | None = None,
        config: Mapping[str, str] | None = None,
        start: Literal["earliest", "latest"] = "earliest",
        dedupe_window: int = 100_000,
    ) -> None:
        self.galaxy = galaxy
        self.topic = topic or galaxy_topic(AVAILABLE_TOPIC, galaxy)
        self._wanted = _signal_test(signals)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._dedupe_window = dedupe_window
        self._finished: list[Message] = []
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                "group.id": group_id,
                "auto.offset.reset": start,
                "enable.auto.commit": True,
                "enable.auto.offset.store": False,
                # Members get partitions within seconds instead of ~20 s (docs/events.md).
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 500,
                # Kafka answers a waiting fetch as soon as an event arrives; some
                # Kafka-protocol brokers (the local tansu) only when this runs out.
                "fetch.wait.max.ms": 50,
                **(config or {}),
            }
        )
        self._consumer.subscribe([self.topic])

    @classmethod
    def from_settings(
        cls,
        kafka: KafkaSettings,
        galaxy: str,
        group_id: str,
        *,
        signals: Iterable[str] = (),
        start: Literal["earliest", "latest"] = "earliest",
        dedupe_window: int = 100_000,
    ) -> Subscriber:
        """A subscriber on the cluster of ``kafka``, with its TLS and SASL settings
        (``kafka.security``, then ``kafka.client_config``) and its availability topic name:
        the same settings shape every GSS Kafka client takes."""
        return cls(
            kafka.bootstrap_servers or "",
            galaxy,
            group_id,
            signals=signals,
            topic=kafka.topic(kafka.available_topic, galaxy),
            config={**security_config(kafka), **kafka.client_config},
            start=start,
            dedupe_window=dedupe_window,
        )

    def _accept(self, msg: Message) -> bool:
        if self._wanted is None:
            return True
        header = headers.header_value(msg, headers.SIGNAL)
        if header is None:
            return False
        name, _, version = header.decode().partition("@")
        return (name, 0) in self._wanted or (name, int(version or 0)) in self._wanted

    def _mark_finished(self) -> None:
        for msg in self._finished:
            self._consumer.store_offsets(message=msg)
        self._finished = []

    def poll(self, timeout: float = 1.0, max_events: int = 500) -> list[Event]:
        """The next events (possibly none), waiting up to ``timeout`` seconds. Calling it marks
        the events of the previous call as finished (their offsets get committed)."""
        self._mark_finished()
        events = []
        msgs = consume_available(self._consumer, max_events, timeout)
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF and err.fatal():
                    raise RuntimeError(f"subscriber on {self.topic} failed: {err.str()}")
                continue
            self._finished.append(msg)
            if not self._accept(msg):
                continue
            try:
                event = events_pb2.SignalAvailable.FromString(msg.value() or b"")
            except DecodeError:
                continue  # not an availability event: nothing a subscriber can do with it
            if event.event_id in self._seen:
                continue
            self._seen[event.event_id] = None
            if len(self._seen) > self._dedupe_window:
                self._seen.popitem(last=False)
            partition, offset = msg.partition(), msg.offset()
            events.append(
                Event(
                    event,
                    partition if partition is not None else -1,
                    offset if offset is not None else -1,
                )
            )
        return events

    def batches(
        self, *, timeout: float = 1.0, max_events: int = 500, idle_timeout: float | None = None
    ) -> Iterator[list[Event]]:
        """Non-empty batches of events, forever, or until nothing arrived for ``idle_timeout``."""
        idle = 0.0
        while True:
            events = self.poll(timeout, max_events)
            if events:
                idle = 0.0
                yield events
                continue
            idle += timeout
            if idle_timeout is not None and idle >= idle_timeout:
                return

    def __iter__(self) -> Iterator[Event]:
        for batch in self.batches():
            yield from batch

    def fetch_values(self, client: GssClient, events: Sequence[Event]) -> list[SignalValue]:
        """The current value of each event's (entity, signal), in order, with one GetSignals
        call per distinct signal version. A value can be newer than the event announcing it
        (a later write won): compare ``envelope.event_time`` when that matters."""
        by_signal: dict[str, list[int]] = {}
        for i, event in enumerate(events):
            by_signal.setdefault(event.signal, []).append(i)
        out: list[SignalValue | None] = [None] * len(events)
        for signal, indexes in by_signal.items():
            rows = client.get(self.galaxy, [events[i].entity_id for i in indexes], [signal])
            for i, row in zip(indexes, rows, strict=True):
                out[i] = row.signals[signal]
        return [value for value in out if value is not None]

    def commit(self) -> None:
        """Mark every event handed out so far as finished and commit now (synchronously)."""
        self._mark_finished()
        try:
            self._consumer.commit(asynchronous=False)
        except Exception as exc:  # nothing to commit yet is not an error
            if "NO_OFFSET" not in str(exc):
                raise

    def assignment(self) -> list[TopicPartition]:
        return list(self._consumer.assignment())

    def close(self) -> None:
        """Commit finished events and leave the group."""
        self._mark_finished()
        self._consumer.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
