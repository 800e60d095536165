"""Test support for compute: one scenario API over both execution modes.

A *runner* sends content events and answers "what would GSS serve now?". ``HarnessRunner``
runs the plugins in-process (compute.harness); ``FlinkRunner`` produces to a real broker,
where a Flink MiniCluster job runs them, and reads the changelog and dead-letter topics
back. Tests written against the runner API run unchanged in both modes (the
``compute_runner`` fixture of the compute test modules is parametrised over them).
"""

from __future__ import annotations

import gc
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from google.protobuf.message import Message

from compute.execution import ms_of
from compute.harness import LocalHarness
from contract import deadletter
from contract.registry import DEFAULT_REGISTRY_PATH, Registry, load_registry
from contract.settings import Settings
from contract.v1 import dead_letter_pb2, envelope_pb2

WAIT_SECONDS = 60.0

# A galaxy for test-only plugins, keyed by int64, every value a DHash.
TEST_GALAXY = {
    "description": "Test-only signals of the compute tests.",
    "key": {"type": "int64"},
    "partitions": 2,
    "signals": [
        {"name": name, "version": 1, "value_type": "gss.v1.DHash"}
        for name in ("left", "right", "both", "flaky", "crashy", "sliding", "early", "trailing")
    ],
}


def write_test_registry(directory: Path) -> Path:
    """The example registry plus the ``tests`` galaxy, as a file in ``directory``."""
    data = yaml.safe_load(DEFAULT_REGISTRY_PATH.read_text())
    data["galaxies"]["tests"] = TEST_GALAXY
    path = directory / "registry.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def entity_key(registry: Registry, galaxy: str, entity_id: str | int | bytes) -> bytes:
    return registry.galaxy(galaxy).codec.to_bytes(entity_id)


class Runner:
    """What a compute scenario can do, in either mode."""

    mode = ""
    registry: Registry

    def send(
        self, topic: str, events: Sequence[Message], *, key: Callable[[Message], bytes]
    ) -> None:
        raise NotImplementedError

    def records(self) -> list[envelope_pb2.SignalRecord]:
        """Every signal record written so far, in changelog order per partition."""
        raise NotImplementedError

    def dead_letters(self) -> list[dead_letter_pb2.DeadLetter]:
        raise NotImplementedError

    def settle(self) -> None:
        """Give the job a moment to catch up (nothing to do in-process)."""

    # -- shared answers ---------------------------------------------------------------------

    def latest(self, galaxy: str, entity_id: str | int | bytes, signal: str) -> Message | None:
        """The value GSS would serve: newest event time, then latest position."""
        spec, text = self._ref(galaxy, entity_id, signal)
        best = None
        for position, record in enumerate(self.records()):
            if (record.galaxy, record.entity_id, record.signal.name, record.signal.version) != (
                galaxy,
                text,
                spec.name,
                spec.version,
            ):
                continue
            order = (ms_of(record.envelope.event_time), position)
            if best is None or order >= best[0]:
                best = (order, record)
        return spec.unpack(best[1].value) if best is not None else None

    def values(self, galaxy: str, entity_id: str | int | bytes, signal: str) -> list[Message]:
        spec, text = self._ref(galaxy, entity_id, signal)
        return [
            spec.unpack(r.value)
            for r in self.records()
            if (r.galaxy, r.entity_id, r.signal.name, r.signal.version)
            == (galaxy, text, spec.name, spec.version)
        ]

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = WAIT_SECONDS) -> Any:
        """``check()`` once it is truthy; AssertionError naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{self.mode}: gave up waiting for {what} after {timeout:.0f} s"
                )
            time.sleep(0.1)

    def wait_latest(
        self,
        galaxy: str,
        entity_id: str | int | bytes,
        signal: str,
        predicate: Callable[[Any], bool] = lambda v: True,
        timeout: float = WAIT_SECONDS,
    ) -> Any:
        def check() -> Any:
            value = self.latest(galaxy, entity_id, signal)
            return value if value is not None and predicate(value) else None

        return self.wait_for(f"{galaxy}/{entity_id} {signal}", check, timeout)

    def wait_dead_letter(
        self,
        predicate: Callable[[dead_letter_pb2.DeadLetter], bool],
        timeout: float = WAIT_SECONDS,
    ) -> dead_letter_pb2.DeadLetter:
        def check() -> Any:
            return next((d for d in self.dead_letters() if predicate(d)), None)

        return self.wait_for("a dead letter", check, timeout)  # type: ignore[no-any-return]

    def _ref(self, galaxy: str, entity_id: str | int | bytes, signal: str) -> tuple[Any, str]:
        name, _, version = signal.partition("@")
        g = self.registry.galaxy(galaxy)
        return g.signal(name, int(version or 0)), g.codec.canonical_text(entity_id)


class HarnessRunner(Runner):
    mode = "harness"

    def __init__(self, harness: LocalHarness) -> None:
        self.harness = harness
        self.registry = harness.registry

    def send(
        self, topic: str, events: Sequence[Message], *, key: Callable[[Message], bytes]
    ) -> None:
        for event in events:
            self.harness.send(topic, event)

    def records(self) -> list[envelope_pb2.SignalRecord]:
        return self.harness.records

    def dead_letters(self) -> list[dead_letter_pb2.DeadLetter]:
        return self.harness.dead_letters


class TopicReader:
    """Reads topics from the start into memory, in a background thread (assign, no group)."""

    def __init__(self, bootstrap_servers: str, topics: dict[str, int]) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                "group.id": "compute-tests-reader",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        self._consumer.assign(
            [TopicPartition(t, p, 0) for t, n in topics.items() for p in range(n)]
        )
        self._lock = threading.Lock()
        self.by_topic: dict[str, list[bytes]] = defaultdict(list)
        self.keys_by_topic: dict[str, list[bytes | None]] = defaultdict(list)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="compute-tests-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._consumer.poll(0.1)
            if message is None or message.error():
                continue
            with self._lock:
                self.by_topic[message.topic()].append(message.value())
                self.keys_by_topic[message.topic()].append(message.key())

    def read(self, topic: str) -> list[bytes]:
        with self._lock:
            return list(self.by_topic.get(topic, ()))

    def read_keyed(self, topic: str) -> list[tuple[bytes | None, bytes]]:
        """(key, value) of each record read from ``topic``."""
        with self._lock:
            return list(zip(self.keys_by_topic[topic], self.by_topic[topic], strict=True))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()


class FlinkRunner(Runner):
    """Produces to the broker the Flink job reads; answers ``latest`` through GSS lookups
    (a server whose ingester materialises the changelogs) and history from the changelogs."""

    mode = "flink"

    def __init__(
        self, settings: Settings, registry: Registry, reader: TopicReader, gss_target: str
    ) -> None:
        from confluent_kafka import Producer

        from clients.lookup import GssClient
        from contract.kafka import producer_config

        self.settings = settings
        self.registry = registry
        self.reader = reader
        self._producer = Producer(
            producer_config(settings.kafka, "compute-tests", delivery_timeout_seconds=30.0)
        )
        self.gss_target = gss_target
        self._gss = GssClient(gss_target)
        kafka = settings.kafka
        self._changelogs = [kafka.topic(kafka.changelog_topic, g) for g in registry.galaxies]
        self._dlqs = [kafka.topic(kafka.dlq_topic, g) for g in registry.galaxies]

    def latest(self, galaxy: str, entity_id: str | int | bytes, signal: str) -> Message | None:
        """What GSS serves for the entity's signal now (GetSignals)."""
        (row,) = self._gss.get(galaxy, [entity_id], [signal])
        cell = row.signals[signal]
        return cell.value if cell.found else None

    def send(
        self, topic: str, events: Sequence[Message], *, key: Callable[[Message], bytes]
    ) -> None:
        for event in events:
            self._producer.produce(topic, key=key(event), value=event.SerializeToString())
        if self._producer.flush(10) != 0:
            raise AssertionError("content events were not delivered within 10 s")

    def records(self) -> list[envelope_pb2.SignalRecord]:
        return [
            envelope_pb2.SignalRecord.FromString(v)
            for t in self._changelogs
            for v in self.reader.read(t)
        ]

    def dead_letters(self) -> list[dead_letter_pb2.DeadLetter]:
        """Every dead letter on the galaxies' DLQs: the compute job's and the ingester's."""
        return [deadletter.parse(v) for t in self._dlqs for v in self.reader.read(t)]

    def settle(self) -> None:
        time.sleep(2.0)

    def close(self) -> None:
        """Drop the producer before the broker goes (it would keep reconnecting)."""
        self._producer.flush(5)
        del self._producer
        gc.collect()
        self._gss.close()


def load_test_registry(path: Path) -> Registry:
    return load_registry(path)


def all_topics(settings: Settings, registry: Registry, extra: Iterable[str] = ()) -> dict[str, int]:
    """Changelog and dead-letter topics of every galaxy (and ``extra``)."""
    kafka = settings.kafka
    topics = {}
    for galaxy in registry:
        topics[kafka.topic(kafka.changelog_topic, galaxy.name)] = galaxy.partitions
        topics[kafka.topic(kafka.dlq_topic, galaxy.name)] = galaxy.partitions
    for topic in extra:
        topics[topic] = 1
    return topics
