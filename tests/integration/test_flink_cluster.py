"""The compute job on a real Flink standalone cluster (a JobManager and two TaskManagers as
processes of their own, started from PyFlink's bundled scripts), submitted in ``remote`` mode.

- A TaskManager running the job is killed with -9 after at least 3 completed checkpoints:
  Flink restarts the job on the other TaskManager from its last checkpoint, and the changelog
  holds every image's dhash, equal to the plugin applied directly (the oracle); at-least-once
  may repeat values written after the last checkpoint, never lose or change one. Window
  state is restored with the source offsets it goes with: every closed hour's save count is
  exactly the saves sent in it, none counted twice by the replay.
- Stop with a savepoint, events arrive while it is stopped, and a new job started from the
  savepoint computes exactly those: nothing lost, nothing computed twice.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from compute.content import pin_event
from compute.examples.images.dhash import dhash
from compute.examples.pins.save_count_1h import save_count_1h
from compute.flink import gateway
from compute.flink.run import ComputeJob, bound_plugins, ensure_topics
from contract.registry import load_registry
from contract.settings import Settings, load_settings
from contract.v1.content_pb2 import PinEngagementEvent
from contract.v1.envelope_pb2 import SignalRecord
from contract.v1.signals_pb2 import DHash, WindowedCount
from gss.local.generator import ContentGenerator

pytestmark = pytest.mark.integration

T0 = datetime(2030, 1, 1, tzinfo=UTC)
HOUR_MS = 3_600_000
PLUGINS = [dhash, save_count_1h]


def _settings(tmp: Path, bootstrap: str, rest_address: str, **compute: Any) -> Settings:
    return load_settings(
        kafka={"bootstrap_servers": bootstrap},
        compute={
            "mode": "remote",
            "jobmanager_address": rest_address,
            "job_name": "gss-cluster-test",
            "checkpoint_interval_seconds": 1.0,
            "checkpoint_dir": (tmp / "checkpoints").as_uri(),
            "restart_delay_seconds": 1.0,
            **compute,
        },
    )


def _changelog(bootstrap: str, topic: str, partitions: int) -> list[SignalRecord]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "cluster-test", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[SignalRecord] = []
    try:
        idle = 0
        while idle < 4:
            msgs = consumer.consume(500, 0.2)
            idle = 0 if msgs else idle + 1
            out.extend(SignalRecord.FromString(m.value()) for m in msgs if not m.error())
    finally:
        consumer.close()
    return out


class Images:
    """Produces image events, remembering the oracle: each entity's dhash."""

    def __init__(self, bootstrap: str, seed: int) -> None:
        from confluent_kafka import Producer

        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.generator = ContentGenerator(seed=seed, duplicate_fraction=0.0)
        self.expected: dict[str, DHash] = {}
        self.sent = 0

    def send(self, count: int, pause: float = 0.0) -> list[str]:
        entities = []
        for _ in range(count):
            _, key, event = self.generator.next_image(T0 + timedelta(seconds=self.sent))
            self.sent += 1
            entity = key.hex()
            expected = dhash(event)  # type: ignore[arg-type]
            assert expected is not None
            self.expected[entity] = expected
            entities.append(entity)
            self.producer.produce("content.images", key=key, value=event.SerializeToString())
            if pause:
                self.producer.poll(0)
                time.sleep(pause)
        assert self.producer.flush(30) == 0
        return entities


class Saves:
    """Produces pin saves 40 s of event time apart (in order: none late), remembering the
    oracle: the saves per (pin, hour window)."""

    def __init__(self, bootstrap: str, pins: int = 5) -> None:
        from confluent_kafka import Producer

        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.pins = pins
        self.expected: Counter[tuple[str, int]] = Counter()
        self.sent = 0

    def send(self, count: int, pause: float = 0.0) -> None:
        for _ in range(count):
            at = T0 + timedelta(seconds=40 * self.sent)
            pin_id = 1 + self.sent % self.pins
            self.sent += 1
            event = pin_event(pin_id, PinEngagementEvent.SAVE, self.sent, at)
            window = int(at.timestamp() * 1000) // HOUR_MS * HOUR_MS
            self.expected[(str(pin_id), window)] += 1
            self.producer.produce(
                "content.pins", key=pin_id.to_bytes(8, "big"), value=event.SerializeToString()
            )
            if pause:
                self.producer.poll(0)
                time.sleep(pause)
        assert self.producer.flush(30) == 0

    def close_windows(self, partitions: int) -> None:
        """A save 75 minutes after the last on every partition (pins of their own, not
        counted): the watermark passes every window sent so far and its allowed lateness."""
        at = T0 + timedelta(seconds=40 * self.sent, minutes=75)
        for partition in range(partitions):
            pin_id = 900 + partition
            event = pin_event(pin_id, PinEngagementEvent.SAVE, 1, at)
            self.producer.produce(
                "content.pins",
                key=pin_id.to_bytes(8, "big"),
                value=event.SerializeToString(),
                partition=partition,
            )
        assert self.producer.flush(30) == 0


def _final_counts(records: list[SignalRecord]) -> dict[tuple[str, int], int]:
    """Per (pin, window): the count of its last record (a closed window's final firing)."""
    out: dict[tuple[str, int], int] = {}
    for r in records:
        if r.signal.name == "save_count_1h":
            count = WindowedCount()
            r.value.Unpack(count)
            out[(r.entity_id, count.window_start.ToMilliseconds())] = count.count
    return out


def _dhash_values(records: list[SignalRecord]) -> list[tuple[str, bytes]]:
    return [(r.entity_id, r.value.value) for r in records if r.signal.name == "dhash"]


def _wait_values(bootstrap: str, topic: str, entities: set[str], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = _dhash_values(_changelog(bootstrap, topic, 4))
        if entities <= {e for e, _ in got} or time.monotonic() > deadline:
            return got
        time.sleep(1.0)


def _partitions(bootstrap: str, topic: str) -> int:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    return len(admin.list_topics(topic, timeout=10).topics[topic].partitions)


def _wait(what: str, check: Any, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting for {what}")


def test_a_killed_task_manager_loses_nothing_and_savepoints_resume_exactly(
    tmp_path: Path,
) -> None:
    from gss.local.broker import LocalBroker
    from gss.local.flink_cluster import LocalFlinkCluster

    # Two slots each: windows take a slot of their own (compute.stateful_slot_sharing_group),
    # and the job must fit on the TaskManager that survives.
    with (
        LocalBroker() as broker,
        LocalFlinkCluster(tmp_path / "flink", task_managers=2, slots=2) as cluster,
    ):
        bootstrap = broker.bootstrap_servers
        settings = _settings(tmp_path, bootstrap, cluster.rest_address)
        registry = load_registry(settings.registry_path)
        ensure_topics(settings, bound_plugins(settings, PLUGINS, registry), registry)
        changelog = settings.kafka.topic(settings.kafka.changelog_topic, "images")
        pins_changelog = settings.kafka.topic(settings.kafka.changelog_topic, "pins")
        pins_partitions = registry.galaxy("pins").partitions
        images = Images(bootstrap, seed=41)
        saves = Saves(bootstrap)
        job = ComputeJob(settings, PLUGINS, registry=registry, create_topics=False)
        try:
            job.start()
            job_id = job.job_id
            assert job_id is not None
            # Events flow while the TaskManager dies and the job restarts elsewhere.
            feeder = threading.Thread(target=images.send, args=(150, 0.1), daemon=True)
            feeder.start()
            pin_feeder = threading.Thread(target=saves.send, args=(150, 0.1), daemon=True)
            pin_feeder.start()
            _wait("3 completed checkpoints", lambda: cluster.completed_checkpoints(job_id) >= 3)
            (victim,) = _wait("the job's TaskManager", lambda: cluster.task_managers_of(job_id))
            cluster.kill_task_manager(victim)
            _wait(
                "the job running on the other TaskManager",
                lambda: (
                    job.status() == "RUNNING" and cluster.task_managers_of(job_id) == {1 - victim}
                ),
            )
            cluster.start_task_manager(victim)  # the replacement node
            feeder.join(60)
            got = _wait_values(bootstrap, changelog, set(images.expected), timeout=90)
            # The oracle: every image's dhash, each value the plugin's own.
            assert {e for e, _ in got} == set(images.expected)
            assert all(value == images.expected[e].SerializeToString() for e, value in got)
            repeated = sum(n - 1 for n in Counter(e for e, _ in got).values())
            assert repeated <= len(images.expected)  # at-least-once: replays, never losses
            # Window state: every closed window's count exact across the kill and the replay.
            pin_feeder.join(60)
            saves.close_windows(_partitions(bootstrap, "content.pins"))
            want = dict(saves.expected)
            assert len(want) >= 2 * saves.pins  # 150 saves 40 s apart: 100 minutes, 2+ hours

            def counted() -> dict[tuple[str, int], int] | None:
                found = _final_counts(_changelog(bootstrap, pins_changelog, pins_partitions))
                done = all(found.get(k, 0) >= n for k, n in want.items())
                return found if done else None

            counts = _wait("every window's count", counted)
            assert {k: counts[k] for k in want} == want

            # Upgrade path: stop with a savepoint, events arrive meanwhile, resume from it.
            savepoint = job.stop_with_savepoint((tmp_path / "savepoints").as_uri())
            before = Counter(e for e, _ in _dhash_values(_changelog(bootstrap, changelog, 4)))
            later = images.send(40)
            resumed = settings.model_copy(
                update={
                    "compute": settings.compute.model_copy(
                        update={"flink_config": {"execution.state-recovery.path": savepoint}}
                    )
                }
            )
            job = ComputeJob(resumed, PLUGINS, registry=registry, create_topics=False)
            job.start()
            got = _wait_values(bootstrap, changelog, set(later), timeout=90)
            time.sleep(3.0)  # anything repeated would show up now
            after = Counter(e for e, _ in _dhash_values(_changelog(bootstrap, changelog, 4)))
            new = after - before
            assert set(new) == set(later)  # only the events that came while it was stopped
            assert all(n == 1 for n in new.values())  # each once
        finally:
            job.stop()
            gateway.shutdown()
