"""One source for history and live (docs/history.md, "Unified source"), end to end.

Content events go to a real local broker; the real archiver (in-process) archives the first
part; more events follow live. A Flink MiniCluster job started ``--from`` a time reads the
archive, then Kafka from the next offset; its changelog records must equal those of a
live-only job over the same events: each exactly once, each content partition's in order.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from compute.examples.images.dhash import dhash
from compute.examples.pins.save_count_1h import save_count_1h
from compute.flink import gateway
from compute.flink.run import ComputeJob, bound_plugins, ensure_topics
from contract.registry import load_registry
from contract.settings import Settings, load_settings
from contract.v1.envelope_pb2 import SignalRecord
from gss.archive.archiver import Archiver
from gss.archive.storage import open_storage
from gss.local.generator import ContentGenerator
from tests.archive_support import wait_archived

pytestmark = pytest.mark.integration

TOPIC = "content.images"
PARTITIONS = 2
BEFORE, ARCHIVED, LIVE = 6, 40, 30  # before the start (filtered), archived, live only
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _settings(tmp: Path, bootstrap: str, job: str, **compute: Any) -> Settings:
    return load_settings(
        kafka={"bootstrap_servers": bootstrap},
        archive={
            "root": str(tmp / "archive"),
            "metrics_port": -1,
            "max_file_records": 7,
            "max_file_seconds": 0.3,
            "content_topics": [TOPIC],
        },
        compute={
            "job_name": job,
            "checkpoint_interval_seconds": 1.0,
            "checkpoint_dir": (tmp / f"checkpoints-{job}").as_uri(),
            "idle_source_seconds": 1.0,
            "metrics_port": 0,
            **compute,
        },
    )


def _changelog(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, SignalRecord]]:
    """Every record of the changelog: (partition, record), in offset order per partition."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "history-test", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[tuple[int, SignalRecord]] = []
    try:
        idle = 0
        while idle < 5:
            msgs = consumer.consume(500, 0.2)
            idle = 0 if msgs else idle + 1
            out.extend(
                (m.partition(), SignalRecord.FromString(m.value())) for m in msgs if not m.error()
            )
    finally:
        consumer.close()
    return out


def _wait_records(bootstrap: str, topic: str, partitions: int, want: int, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = _changelog(bootstrap, topic, partitions)
        if len(got) >= want or time.monotonic() > deadline:
            return got
        time.sleep(1.0)


def test_history_then_live_equals_live_only(tmp_path: Path) -> None:
    from confluent_kafka import Producer

    from gss.local.broker import LocalBroker

    started = time.monotonic()
    with LocalBroker() as broker:
        bootstrap = broker.bootstrap_servers
        settings = _settings(tmp_path, bootstrap, "gss-history-test")
        registry = load_registry(settings.registry_path)
        galaxy = registry.galaxy("images")
        changelog = settings.kafka.topic(settings.kafka.changelog_topic, "images")
        plugins = [dhash, save_count_1h]  # two topics: their sources' watermarks aligned
        ensure_topics(settings, bound_plugins(settings, plugins, registry), registry)

        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        generator = ContentGenerator(seed=11, duplicate_fraction=0.0)
        origin: dict[str, tuple[int, int]] = {}  # entity -> (content partition, offset)
        now_ms = int(time.time() * 1000)
        start_ms = now_ms - 600_000

        def produce(n: int, first: int, ts_ms: int) -> list[str]:
            entities = []
            for i in range(first, first + n):
                _, key, event = generator.next_image(T0 + timedelta(seconds=i))
                entity = galaxy.codec.canonical_text(key)
                entities.append(entity)

                def report(err: Any, msg: Any, entity: str = entity) -> None:
                    assert err is None, err
                    origin[entity] = (msg.partition(), msg.offset())

                producer.produce(
                    TOPIC,
                    key=key,
                    value=event.SerializeToString(),
                    partition=i % PARTITIONS,
                    timestamp=ts_ms + i * 100,
                    on_delivery=report,
                )
            assert producer.flush(30) == 0
            return entities

        early = produce(BEFORE, 0, start_ms - 3_600_000)  # an hour before the start
        produce(ARCHIVED, BEFORE, start_ms)

        storage = open_storage(settings.archive)
        archiver = Archiver(settings.archive, settings.kafka, [TOPIC], storage)
        thread = threading.Thread(target=archiver.run, kwargs={"duration_seconds": 60}, daemon=True)
        thread.start()
        try:
            last = {(TOPIC, p): max(o for q, o in origin.values() if q == p) for p in range(2)}
            assert wait_archived(storage, last, timeout=30), "the archiver did not catch up"
        finally:
            archiver.stop()
            thread.join(20)
        produce(LIVE, BEFORE + ARCHIVED, start_ms)  # only in Kafka

        expected = BEFORE + ARCHIVED + LIVE
        # 1. --from the start: history (rate-limited) then live.
        history = _settings(
            tmp_path,
            bootstrap,
            "gss-history-test",
            history_from=datetime.fromtimestamp(start_ms / 1000, UTC),
            history_rate_per_second=500.0,
        )
        with ComputeJob(history, plugins, registry=registry, create_topics=False):
            _wait_records(bootstrap, changelog, galaxy.partitions, ARCHIVED + LIVE, 40)
            time.sleep(3.0)  # anything repeated would show up now
            first = _changelog(bootstrap, changelog, galaxy.partitions)
        # The archive leg read the committed files, one manifest per partition.
        manifests = sorted((tmp_path / "archive" / "_manifests").rglob("*.manifest"))
        assert [m.name for m in manifests] == ["partition-0.manifest", "partition-1.manifest"]
        assert all(".jsonl.gz" in m.read_text() for m in manifests)
        # 2. The same events, live only, from the topic's beginning.
        live = _settings(tmp_path, bootstrap, "gss-live-test")
        with ComputeJob(live, [dhash], registry=registry, create_topics=False):
            _wait_records(bootstrap, changelog, galaxy.partitions, len(first) + expected, 40)
        all_records = _changelog(bootstrap, changelog, galaxy.partitions)
        gateway.shutdown()

    seen_first = {(p, r.SerializeToString()) for p, r in first}
    history_records = [r for _, r in first]
    live_records = [r for p, r in all_records if (p, r.SerializeToString()) not in seen_first]

    def facts(records: list[SignalRecord]) -> list[tuple[str, bytes, int]]:
        return sorted(
            (r.entity_id, r.value, r.envelope.event_time.ToMilliseconds()) for r in records
        )

    # (content.pins has no history and no events: its source is Kafka only, idle.)
    # Exactly once: every event from the start on, none before it, no repeats.
    entities = [r.entity_id for r in history_records]
    assert len(entities) == len(set(entities)) == ARCHIVED + LIVE, (
        len(entities),
        len(set(entities)),
    )
    assert not set(entities) & set(early)
    # The same values as a live-only run over the same events.
    live_after = [r for r in live_records if r.entity_id not in set(early)]
    assert facts(history_records) == facts(live_after)
    # Each content partition's records in offset order (per changelog partition).
    by_changelog: dict[tuple[int, int], list[int]] = defaultdict(list)
    for p, r in first:
        content_partition, offset = origin[r.entity_id]
        by_changelog[(p, content_partition)].append(offset)
    for key, offsets in by_changelog.items():
        assert offsets == sorted(offsets), (key, offsets)
    assert time.monotonic() - started < 90
