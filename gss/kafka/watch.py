"""Reading a galaxy's availability events without a consumer group: WatchSignals and ``gss watch``.

:class:`AvailableReader` assigns every partition of ``gss.<galaxy>.available`` itself and starts
each one after a position it was given, at the beginning, or at the live end. The live end is
the broker's end offset plus a timestamp filter (events published before the reader started
are dropped): a broker whose end offsets are too small (the local one: docs/events.md, the local broker's quirks) then cannot
replay old events as new ones. If the topic is created anew (a restarted local broker), the
reader starts the new topic from its beginning.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from google.protobuf.message import DecodeError

from contract import headers
from contract.kafka import admin_config, consume_available, consumer_config
from contract.registry import GalaxySpec, Registry
from contract.settings import KafkaSettings
from contract.topics import TopicKind, position_of, topic_ids, topic_name
from contract.v1 import events_pb2, signal_service_pb2

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class WatchedEvent:
    event: events_pb2.SignalAvailable
    partition: int
    offset: int


def signal_filter(
    galaxy: GalaxySpec, signals: Mapping[str, int] | None
) -> Callable[[bytes], bool] | None:
    """A test on an event's ``gss-signal`` header (``name@version``); None lets all through.
    ``signals`` maps names to a version, 0 meaning the pinned default version of the name
    (resolved once, here: a stream keeps the version it started with). Unknown signals raise
    NotFoundError."""
    if not signals:
        return None
    wanted = {galaxy.signal(name, version).ref.encode() for name, version in signals.items()}
    return wanted.__contains__


class AvailableReader:
    """Tails one galaxy's availability topic. Not thread-safe: one reader per caller."""

    def __init__(
        self,
        kafka: KafkaSettings,
        galaxy: GalaxySpec,
        *,
        signals: Mapping[str, int] | None = None,
        resume_after: Mapping[int, int] | None = None,
        from_beginning: bool = False,
        client_id: str = "gss-watch",
    ) -> None:
        self.kafka = kafka
        self.galaxy = galaxy
        self.topic = topic_name(kafka, TopicKind.AVAILABLE, galaxy.name)
        self._accept = signal_filter(galaxy, signals)
        self._resume_after = dict(resume_after or {})
        self._from_beginning = from_beginning
        self._started_ms = int(time.time() * 1000)
        self._live_end: set[int] = set()
        self._consumer = Consumer(consumer_config(kafka, client_id, f"{client_id}-{galaxy.name}"))
        self._admin = AdminClient(admin_config(kafka, f"{client_id}-admin"))
        self._topic_id: str | None = None
        self._assigned = False
        self._next_check = 0.0

    def _assign(self, *, new_topic: bool = False) -> bool:
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=5.0).topics.get(self.topic)
        except KafkaException as exc:
            log.info("watch_topic_unavailable", topic=self.topic, error=str(exc))
            return False
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return False
        assignment = []
        self._live_end = set()
        for partition in sorted(metadata.partitions):
            if new_topic or self._from_beginning:
                offset = OFFSET_BEGINNING
            elif partition in self._resume_after:
                offset = self._resume_after[partition] + 1
            else:
                offset = OFFSET_END
                self._live_end.add(partition)
            assignment.append(TopicPartition(self.topic, partition, offset))
        self._consumer.assign(assignment)
        self._assigned = True
        return True

    def _topic_recreated(self) -> bool:
        try:
            current = topic_ids(self._admin, [self.topic]).get(self.topic)
        except KafkaException:
            return False
        if current is None:
            return False
        previous, self._topic_id = self._topic_id, current
        return previous is not None and previous != current

    def poll(self, timeout_seconds: float = 0.5, max_events: int = 500) -> list[WatchedEvent]:
        """Events that arrived, at most ``max_events``, waiting up to ``timeout_seconds``."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.kafka.topic_check_interval_seconds
            if self._topic_recreated():
                log.warning(
                    "watch_topic_recreated",
                    topic=self.topic,
                    action="reading it from its beginning",
                )
                self._assigned = self._assign(new_topic=True)
        if not self._assigned and not self._assign():
            time.sleep(min(timeout_seconds, 0.5))
            self._next_check = 0.0
            return []
        out = []
        for msg in consume_available(self._consumer, max_events, timeout_seconds):
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.info("watch_consume_error", topic=self.topic, error=err.str())
                continue
            _, partition, offset = position_of(msg)
            if partition in self._live_end and msg.timestamp()[1] < self._started_ms:
                continue
            headers_ = dict(headers.header_items(msg))
            signal = headers_.get(headers.SIGNAL)
            if self._accept is not None and (signal is None or not self._accept(signal)):
                continue
            try:
                event = events_pb2.SignalAvailable.FromString(msg.value() or b"")
            except DecodeError:
                log.warning(
                    "watch_event_undecodable",
                    topic=self.topic,
                    partition=partition,
                    offset=offset,
                )
                continue
            out.append(WatchedEvent(event, partition, offset))
        return out

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> AvailableReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WatchSource:
    """The WatchSignals stream for the gRPC servicer: ``yield from source.stream(request, context.is_active)``."""

    def __init__(self, kafka: KafkaSettings, registry: Registry) -> None:
        self.kafka = kafka
        self.registry = registry
        self._closed = threading.Event()

    def close(self) -> None:
        """End every open stream (server shutdown)."""
        self._closed.set()

    def reader(self, request: signal_service_pb2.WatchSignalsRequest) -> AvailableReader:
        """A reader for ``request``; raises NotFoundError for an unknown galaxy or signal."""
        galaxy = self.registry.galaxy(request.galaxy)
        signals: dict[str, int] = {}
        for ref in request.signals:
            signals[ref.name] = ref.version
        return AvailableReader(
            self.kafka,
            galaxy,
            signals=signals,
            resume_after={p.partition: p.offset for p in request.resume_after},
            from_beginning=request.from_beginning,
            client_id="gss-watch-signals",
        )

    async def stream_async(
        self, request: signal_service_pb2.WatchSignalsRequest
    ) -> AsyncIterator[signal_service_pb2.WatchSignalsResponse]:
        """The asyncio form for grpc.aio servicers: ``async for r in source.stream_async(req)``.

        A thread per stream reads Kafka and hands events over through a bounded queue, so a
        slow client holds back only its own stream (never the ingester, the publisher or the
        event loop). Raises NotFoundError before the first event for an unknown galaxy/signal.
        """
        reader = self.reader(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[signal_service_pb2.WatchSignalsResponse | None] = asyncio.Queue(1000)
        done = threading.Event()

        def pump() -> None:
            try:
                while not done.is_set() and not self._closed.is_set():
                    for watched in reader.poll(0.5):
                        response = _response(watched)
                        while not done.is_set():
                            future = asyncio.run_coroutine_threadsafe(queue.put(response), loop)
                            try:
                                future.result(timeout=0.5)
                                break
                            except concurrent.futures.TimeoutError:
                                future.cancel()
            except Exception:
                log.exception("watch_failed", galaxy=request.galaxy)
            finally:
                reader.close()
                if not loop.is_closed():
                    loop.call_soon_threadsafe(queue.put_nowait, None)

        thread = threading.Thread(target=pump, name=f"gss-watch-{request.galaxy}", daemon=True)
        thread.start()
        log.info("watch_started", galaxy=request.galaxy, signals=[r.name for r in request.signals])
        sent = 0
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                sent += 1
                yield item
        finally:
            done.set()
            log.info("watch_ended", galaxy=request.galaxy, events_sent=sent)

    def stream(
        self, request: signal_service_pb2.WatchSignalsRequest, is_active: Callable[[], bool]
    ) -> Iterator[signal_service_pb2.WatchSignalsResponse]:
        """Events of ``request.galaxy`` until ``is_active()`` turns false (a blocking servicer's
        ``context.is_active``). Raises NotFoundError for an unknown galaxy or signal."""
        galaxy = self.registry.galaxy(request.galaxy)
        reader = self.reader(request)
        log.info("watch_started", galaxy=galaxy.name, signals=[r.name for r in request.signals])
        sent = 0
        try:
            while is_active() and not self._closed.is_set():
                for watched in reader.poll(0.5):
                    sent += 1
                    yield _response(watched)
        finally:
            reader.close()
            log.info("watch_ended", galaxy=galaxy.name, events_sent=sent)


def _response(watched: WatchedEvent) -> signal_service_pb2.WatchSignalsResponse:
    return signal_service_pb2.WatchSignalsResponse(
        event=watched.event,
        position=signal_service_pb2.WatchPosition(
            partition=watched.partition, offset=watched.offset
        ),
    )
