"""Helpers for the Kafka tests: per-test topic names, a changelog producer, an event collector."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import Producer

from contract.registry import Registry
from contract.settings import KafkaSettings
from contract.v1 import envelope_pb2
from gss.kafka.changelog import changelog_key
from gss.kafka.watch import AvailableReader, WatchedEvent

_names = itertools.count()


def kafka_overrides(bootstrap_servers: str, **extra: Any) -> dict[str, Any]:
    """Kafka settings with topics of their own (``t<N>.<galaxy>.*``), so tests sharing one
    broker never see each other's records, and short timeouts for fault tests."""
    prefix = f"t{next(_names)}-{int(time.time() * 1000) % 100000}"
    return {
        "bootstrap_servers": bootstrap_servers,
        "changelog_topic": prefix + ".{galaxy}.changelog",
        "available_topic": prefix + ".{galaxy}.available",
        "dlq_topic": prefix + ".{galaxy}.dlq",
        "topic_check_interval_seconds": 0.5,
        "publish_timeout_seconds": 3.0,
        "put_timeout_seconds": 3.0,
        **extra,
    }


def produce(
    kafka: KafkaSettings,
    registry: Registry,
    records: Iterable[envelope_pb2.SignalRecord | tuple[bytes | None, bytes]],
    *,
    galaxy: str = "images",
) -> list[tuple[int, int]]:
    """Write records to the galaxy's changelog as an outside producer would (murmur2 keys);
    (key, raw value) pairs are written as given. Returns the acknowledged (partition, offset)s."""
    producer = Producer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
    )
    topic = kafka.topic(kafka.changelog_topic, galaxy)
    acked: list[tuple[int, int]] = []
    errors: list[str] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            acked.append((msg.partition(), msg.offset()))

    for item in records:
        if isinstance(item, tuple):
            key, value = item
        else:
            key, value = changelog_key(registry, item), item.SerializeToString()
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(30)
    assert left == 0, f"{left} records unsent"
    assert not errors, f"delivery errors: {errors[:3]}"
    return acked


class Collector:
    """Reads a galaxy's availability topic from the beginning in a thread, keeping every
    event; survives a restarted broker (the reader starts the new topic over)."""

    def __init__(self, kafka: KafkaSettings, registry: Registry, galaxy: str = "images") -> None:
        self.events: list[WatchedEvent] = []
        self._reader = AvailableReader(
            kafka, registry.galaxy(galaxy), from_beginning=True, client_id="test-collector"
        )
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                got = self._reader.poll(0.2)
                with self._lock:
                    self.events.extend(got)
        finally:
            self._reader.close()

    def snapshot(self) -> list[WatchedEvent]:
        with self._lock:
            return list(self.events)

    def wait_for(
        self, done: Callable[[list[WatchedEvent]], bool], timeout: float = 60.0
    ) -> list[WatchedEvent]:
        """Wait (bounded) until ``done(events)``; returns the events either way."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.snapshot()
            if done(events):
                return events
            time.sleep(0.05)
        return self.snapshot()

    def entities(self) -> set[str]:
        return {w.event.entity_id for w in self.snapshot()}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
