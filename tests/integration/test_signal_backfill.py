"""Backfill (docs/history.md, "Backfill") end to end: real broker, real archiver, a GSS server
whose ingester applies the changelog, and Flink MiniCluster jobs.

Image and pin events are archived; ``images/dhash@1`` (a map) and ``pins/save_count_1h@1``
(a one-hour window over two partitions) are backfilled over them through the changelog into
the store. Every backfilled record, stored value and availability event is marked
``backfill``; a second backfill writes no value and announces nothing; a live job over the
same events produces the same facts (value bytes and event times), which the store then skips
as repeats. Then the images changelog is archived and ``images/near_duplicate_of@1`` (a Match
join of dhash values) is backfilled over it: twice, the second announcing nothing, and its
values equal those a live job computes from the same changelog.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import server_settings
from kafka_support import kafka_overrides

from compute.examples.images.dhash import dhash
from compute.examples.images.near_duplicate_of import near_duplicate_of
from compute.examples.pins.save_count_1h import save_count_1h
from compute.flink import backfill as plan
from compute.flink import gateway
from compute.flink.run import ComputeJob, bound_plugins, ensure_topics
from compute.plugin import Plugin
from contract.settings import Settings
from contract.v1.envelope_pb2 import SignalRecord
from contract.v1.events_pb2 import SignalAvailable
from gss.archive.archiver import Archiver
from gss.archive.storage import open_storage
from gss.local.generator import ContentGenerator
from gss.server import GssServer, start_server
from store.records import StoredRecord
from tests.archive_support import wait_archived

pytestmark = pytest.mark.integration

IMAGES, PINS = "content.images", "content.pins"
N_IMAGES, N_PINS = 24, 60
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _settings(tmp: Path, kafka: dict[str, Any], **compute: Any) -> Settings:
    return server_settings(
        tmp,
        kafka={**kafka, "backfill_events_per_second": 200.0},
        archive={
            "root": str(tmp / "archive"),
            "metrics_port": -1,
            "max_file_records": 9,
            "max_file_seconds": 0.3,
            "content_topics": [IMAGES, PINS],
        },
        compute={
            "checkpoint_interval_seconds": 1.0,
            "checkpoint_dir": (tmp / "checkpoints").as_uri(),
            "idle_source_seconds": 1.0,
            "metrics_port": 0,
            **compute,
        },
    )


def _read(bootstrap: str, topic: str, partitions: int) -> list[bytes]:
    return sorted(_read_all(bootstrap, topic, partitions))


def _consume_all(bootstrap: str, topic: str, partitions: int) -> list[Any]:
    """Every record of ``topic`` from offset 0 until idle (offsets read, not end offsets: the
    local broker misreports high watermarks)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "backfill-test", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[Any] = []
    try:
        idle = 0
        while idle < 4:
            msgs = consumer.consume(500, 0.2)
            idle = 0 if msgs else idle + 1
            out.extend(m for m in msgs if not m.error())
    finally:
        consumer.close()
    return out


def _read_all(bootstrap: str, topic: str, partitions: int) -> list[bytes]:
    """Every record value of ``topic``, tombstones aside."""
    return [m.value() for m in _consume_all(bootstrap, topic, partitions) if m.value()]


def _facts(records: list[SignalRecord]) -> set[tuple[str, str, bytes, int]]:
    return {
        (r.signal.name, r.entity_id, r.value.value, r.envelope.event_time.ToMilliseconds())
        for r in records
    }


def _backfill(settings: Settings, plugin: Plugin, since_ms: int) -> None:
    compute = plan.compute_overrides(
        settings,
        plugin,
        since=datetime.fromtimestamp(since_ms / 1000, UTC),
        until=None,
        rate_per_second=2000.0,
        continue_live=False,
    )
    job_settings = settings.model_copy(
        update={"compute": settings.compute.model_copy(update=compute)}
    )
    with ComputeJob(job_settings, [plugin], create_topics=False) as job:
        assert job.wait(timeout_seconds=60) == "FINISHED"
    plan.clear_checkpoints(compute["checkpoint_dir"])  # as `gss signal backfill` does


def _cli_backfill(settings: Settings, target: str, since_ms: int) -> str:
    """`gss signal backfill` in-process (its stderr: the progress lines)."""
    import signal

    from click.testing import CliRunner

    from gss.cli import main

    kafka, compute = settings.kafka, settings.compute
    env = {
        "GSS_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers or "",
        "GSS_KAFKA__CHANGELOG_TOPIC": kafka.changelog_topic,
        "GSS_KAFKA__AVAILABLE_TOPIC": kafka.available_topic,
        "GSS_KAFKA__DLQ_TOPIC": kafka.dlq_topic,
        "GSS_KAFKA__CREATE_TOPICS": "false",
        "GSS_ARCHIVE__ROOT": str(settings.archive.root),
        "GSS_COMPUTE__CHECKPOINT_DIR": compute.checkpoint_dir or "",
        "GSS_COMPUTE__CHECKPOINT_INTERVAL_SECONDS": "1",
        "GSS_COMPUTE__IDLE_SOURCE_SECONDS": "1",
        "GSS_COMPUTE__METRICS_PORT": "0",
        "GSS_LOG_LEVEL": "WARNING",
    }
    since = datetime.fromtimestamp(since_ms / 1000, UTC).isoformat()
    args = ["signal", "backfill", target, "--since", since, "--rate", "2000/s"]
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = CliRunner().invoke(
            main, [*args, "--progress-seconds", "1"], env=env, catch_exceptions=False
        )
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert result.exit_code == 0, result.output
    return result.output


def _stored(server: GssServer, galaxy: str) -> dict[bytes, StoredRecord]:
    return {k: StoredRecord.decode(v) for k, v in server.store.scan(galaxy)}


def _settle(server: GssServer, want: dict[str, int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(_stored(server, g)) >= n for g, n in want.items()):
            break
        time.sleep(0.3)
    time.sleep(1.5)  # anything more would arrive now
    assert server.events is not None
    assert server.events.publisher.wait_empty(30)


def test_backfill_marks_is_idempotent_and_equals_live(tmp_path: Path) -> None:
    from confluent_kafka import Producer

    from gss.local.broker import LocalBroker

    started = time.monotonic()
    with LocalBroker() as broker:
        bootstrap = broker.bootstrap_servers
        kafka = kafka_overrides(bootstrap)
        settings = _settings(tmp_path, kafka)
        server = start_server(settings)
        try:
            registry = server.registry
            plugins: list[Plugin] = [dhash, save_count_1h]
            ensure_topics(settings, bound_plugins(settings, plugins, registry), registry)
            changelogs = {
                g: settings.kafka.topic(settings.kafka.changelog_topic, g)
                for g in ("images", "pins")
            }
            available = {
                g: settings.kafka.topic(settings.kafka.available_topic, g)
                for g in ("images", "pins")
            }
            parts = {g: registry.galaxy(g).partitions for g in ("images", "pins")}

            producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
            generator = ContentGenerator(seed=5, duplicate_fraction=0.4)
            since_ms = int(time.time() * 1000) - 600_000
            last: dict[tuple[str, int], int] = {}

            def report(err: Any, msg: Any) -> None:
                assert err is None, err
                key = (msg.topic(), msg.partition())
                last[key] = max(last.get(key, -1), msg.offset())

            for i in range(N_IMAGES):
                topic, key, event = generator.next_image(T0 + timedelta(seconds=i))
                producer.produce(
                    topic,
                    key=key,
                    value=event.SerializeToString(),
                    timestamp=since_ms + i * 100,
                    on_delivery=report,
                )
            for i in range(N_PINS):
                topic, key, event = generator.next_pin(T0 + timedelta(minutes=3 * i))
                producer.produce(
                    topic,
                    partition=i % 2,
                    key=key,
                    value=event.SerializeToString(),
                    timestamp=since_ms + i * 100,
                    on_delivery=report,
                )
            assert producer.flush(30) == 0

            storage = open_storage(settings.archive)
            archiver = Archiver(settings.archive, settings.kafka, [IMAGES, PINS], storage)
            thread = threading.Thread(
                target=archiver.run, kwargs={"duration_seconds": 60}, daemon=True
            )
            thread.start()
            try:
                assert wait_archived(storage, dict(last), timeout=30), "the archiver lagged"
            finally:
                archiver.stop()
                thread.join(20)

            # 1. Backfill both signals: bounded jobs that finish at the archive's end.
            for plugin in plugins:
                _backfill(settings, plugin, since_ms)
            _settle(server, {"images": N_IMAGES, "pins": 1})
            first = {g: _stored(server, g) for g in ("images", "pins")}
            events_1 = {g: _read(bootstrap, available[g], parts[g]) for g in ("images", "pins")}
            records_1 = [
                SignalRecord.FromString(v)
                for g in changelogs
                for v in _read(bootstrap, changelogs[g], parts[g])
            ]

            assert len(first["images"]) == N_IMAGES
            assert first["pins"]
            for galaxy in ("images", "pins"):
                assert all(s.envelope.backfill for s in first[galaxy].values())
                events = [SignalAvailable.FromString(v) for v in events_1[galaxy]]
                assert len(events) == len(first[galaxy]), (galaxy, len(events))
                assert all(e.backfill for e in events)
            assert all(r.envelope.backfill for r in records_1)
            assert {r.envelope.producer for r in records_1} == {
                "flink:gss-backfill-images-dhash-v1",
                "flink:gss-backfill-pins-save_count_1h-v1",
            }

            # 2. Again (dhash through the verb): the same records reach the changelog; no value,
            # no event is new.
            output = _cli_backfill(settings, "images/dhash@1", since_ms)
            # Progress lines; the count starts at the changelog's high watermark, which the
            # local broker misreports (1), so it may include the first run's records.
            finished = re.search(r"backfill finished: (\d+) values", output)
            assert finished, output
            assert N_IMAGES <= int(finished.group(1)) <= 2 * N_IMAGES, output
            assert f"of {N_IMAGES} archived records in range" in output
            _backfill(settings, save_count_1h, since_ms)
            time.sleep(3.0)
            _settle(server, {})
            records_2 = [
                SignalRecord.FromString(v)
                for g in changelogs
                for v in _read(bootstrap, changelogs[g], parts[g])
            ]
            assert len(records_2) == 2 * len(records_1)
            assert _facts(records_2) == _facts(records_1)
            for galaxy in ("images", "pins"):
                assert _stored(server, galaxy) == first[galaxy]
                assert _read(bootstrap, available[galaxy], parts[galaxy]) == events_1[galaxy]

            # 3. Live processing of the same events (from the topics' beginning).
            live = settings.model_copy(
                update={
                    "compute": settings.compute.model_copy(
                        update={
                            "job_name": "gss-live-backfill-test",
                            "checkpoint_dir": (tmp_path / "live").as_uri(),
                        }
                    )
                }
            )
            with ComputeJob(live, plugins, registry=registry, create_topics=False):
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    got = [
                        SignalRecord.FromString(v)
                        for g in changelogs
                        for v in _read(bootstrap, changelogs[g], parts[g])
                    ]
                    live_records = [
                        r for r in got if r.envelope.producer == "flink:gss-live-backfill-test"
                    ]
                    if sum(r.signal.name == "dhash" for r in live_records) >= N_IMAGES and any(
                        r.signal.name == "save_count_1h" for r in live_records
                    ):
                        break
                    time.sleep(1.0)
                time.sleep(3.0)
                got = [
                    SignalRecord.FromString(v)
                    for g in changelogs
                    for v in _read(bootstrap, changelogs[g], parts[g])
                ]
            _settle(server, {})
            # Live values equal the backfilled ones: the store skips them, nothing is announced.
            for galaxy in ("images", "pins"):
                assert _stored(server, galaxy) == first[galaxy]
                assert _read(bootstrap, available[galaxy], parts[galaxy]) == events_1[galaxy]

            # 4. A join: near_duplicate_of reads dhash values from the archived changelog.
            join_facts = _join_backfill_equals_live(
                tmp_path, settings, server, changelogs["images"], available["images"], since_ms
            )
        finally:
            server.stop(grace=0.5)
            gateway.shutdown()
        assert join_facts

    live_records = [r for r in got if r.envelope.producer == "flink:gss-live-backfill-test"]
    assert not any(r.envelope.backfill for r in live_records)
    backfilled = _facts(records_1)
    live_facts = _facts(live_records)
    dhash_of = lambda facts: {f for f in facts if f[0] == "dhash"}  # noqa: E731
    assert dhash_of(live_facts) == dhash_of(backfilled)
    assert len(dhash_of(live_facts)) == N_IMAGES
    # The window: every window the live job closed, the backfill wrote alike; the backfill
    # also closes the last windows at the end of its (bounded) input.
    counts_live = live_facts - dhash_of(live_facts)
    assert counts_live
    assert counts_live <= backfilled - dhash_of(backfilled)
    assert time.monotonic() - started < 180


def _latest_by_entity(records: list[SignalRecord]) -> dict[str, tuple[int, bytes]]:
    """What GSS serves of these records: per entity the newest by event time, then order."""
    best: dict[str, tuple[int, int, bytes]] = {}
    for n, r in enumerate(records):
        order = (r.envelope.event_time.ToMilliseconds(), n, r.value.value)
        best[r.entity_id] = max(best.get(r.entity_id, order), order)
    return {entity: (ms, value) for entity, (ms, _, value) in best.items()}


def _join_backfill_equals_live(
    tmp: Path,
    settings: Settings,
    server: GssServer,
    changelog: str,
    available: str,
    since_ms: int,
) -> dict[str, tuple[int, bytes]]:
    """Archive the images changelog, backfill near_duplicate_of@1 over it twice, run it live
    over the same changelog; the values each run leaves served per entity are equal. (The
    job's records carry their input's Kafka timestamp: the dhash values are as old as their
    images.)"""
    bootstrap = settings.kafka.bootstrap_servers or ""
    parts = server.registry.galaxy("images").partitions
    storage = open_storage(settings.archive)
    archived = _last_offsets(bootstrap, changelog, parts)
    archiver = Archiver(settings.archive, settings.kafka, [changelog], storage)
    thread = threading.Thread(target=archiver.run, kwargs={"duration_seconds": 60}, daemon=True)
    thread.start()
    try:
        assert wait_archived(storage, archived, timeout=30), "the archiver lagged"
    finally:
        archiver.stop()
        thread.join(20)

    def joined(producer: str) -> list[SignalRecord]:
        return [
            r
            for r in (SignalRecord.FromString(v) for v in _read_all(bootstrap, changelog, parts))
            if r.signal.name == "near_duplicate_of" and r.envelope.producer == producer
        ]

    backfill_producer = "flink:gss-backfill-images-near_duplicate_of-v1"
    _backfill(settings, near_duplicate_of, since_ms)
    _settle(server, {})
    backfilled = _latest_by_entity(joined(backfill_producer))
    stored, events = _stored(server, "images"), _read(bootstrap, available, parts)
    assert all(r.envelope.backfill for r in joined(backfill_producer))
    # Again: the same values reach the changelog; the store and the events stay as they were.
    _backfill(settings, near_duplicate_of, since_ms)
    time.sleep(2.0)
    _settle(server, {})
    assert _latest_by_entity(joined(backfill_producer)) == backfilled
    assert _stored(server, "images") == stored
    assert _read(bootstrap, available, parts) == events

    live = settings.model_copy(
        update={
            "compute": settings.compute.model_copy(
                update={
                    "job_name": "gss-live-join-test",
                    "checkpoint_dir": (tmp / "live-join").as_uri(),
                    "start_from": "earliest",
                }
            )
        }
    )
    with ComputeJob(live, [near_duplicate_of], registry=server.registry, create_topics=False):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if _latest_by_entity(joined("flink:gss-live-join-test")) == backfilled:
                break
            time.sleep(1.0)
    assert _latest_by_entity(joined("flink:gss-live-join-test")) == backfilled
    # Real matches among them: the generator's near duplicates found their originals.
    from contract.v1.signals_pb2 import NearDuplicate

    canonical = {
        e: NearDuplicate.FromString(v).canonical_entity_id for e, (_, v) in backfilled.items()
    }
    assert any(c != e for e, c in canonical.items()), canonical
    return backfilled


def _last_offsets(bootstrap: str, topic: str, partitions: int) -> dict[tuple[str, int], int]:
    """The last offset read of each non-empty partition."""
    last: dict[tuple[str, int], int] = {}
    for m in _consume_all(bootstrap, topic, partitions):
        last[(topic, m.partition())] = max(last.get((topic, m.partition()), -1), m.offset())
    return last


def test_a_killed_backfill_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """The MiniCluster's JVM is killed mid-backfill (as when `gss signal backfill` is killed:
    its JVM dies with it); started again, the job restores its newest retained checkpoint and
    reads on from there: every value once in the store, every event once, and the second run
    writes fewer records than a run from the beginning would."""
    from confluent_kafka import Producer

    from compute.flink.job import latest_checkpoint
    from gss.local.broker import LocalBroker

    n = 40
    with LocalBroker() as broker:
        bootstrap = broker.bootstrap_servers
        settings = _settings(tmp_path, kafka_overrides(bootstrap))
        server = start_server(settings)
        try:
            registry = server.registry
            ensure_topics(settings, bound_plugins(settings, [dhash], registry), registry)
            changelog = settings.kafka.topic(settings.kafka.changelog_topic, "images")
            available = settings.kafka.topic(settings.kafka.available_topic, "images")
            parts = registry.galaxy("images").partitions
            producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
            generator = ContentGenerator(seed=7, duplicate_fraction=0.0)
            since_ms = int(time.time() * 1000) - 600_000
            last: dict[tuple[str, int], int] = {}

            def report(err: Any, msg: Any) -> None:
                assert err is None, err
                key = (msg.topic(), msg.partition())
                last[key] = max(last.get(key, -1), msg.offset())

            for i in range(n):
                topic, key, event = generator.next_image(T0 + timedelta(seconds=i))
                producer.produce(
                    topic,
                    key=key,
                    value=event.SerializeToString(),
                    timestamp=since_ms + i * 100,
                    on_delivery=report,
                )
            assert producer.flush(30) == 0
            storage = open_storage(settings.archive)
            archiver = Archiver(settings.archive, settings.kafka, [IMAGES], storage)
            thread = threading.Thread(
                target=archiver.run, kwargs={"duration_seconds": 60}, daemon=True
            )
            thread.start()
            try:
                assert wait_archived(storage, dict(last), timeout=30), "the archiver lagged"
            finally:
                archiver.stop()
                thread.join(20)

            compute = plan.compute_overrides(
                settings,
                dhash,
                since=datetime.fromtimestamp(since_ms / 1000, UTC),
                until=None,
                rate_per_second=4.0,  # 10 s of history: time to kill it halfway
                continue_live=False,
            )
            job_settings = settings.model_copy(
                update={"compute": settings.compute.model_copy(update=compute)}
            )
            checkpoints = compute["checkpoint_dir"]
            job = ComputeJob(job_settings, [dhash], create_topics=False).start()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if latest_checkpoint(checkpoints) and len(_stored(server, "images")) >= 10:
                    break
                time.sleep(0.2)
            assert latest_checkpoint(checkpoints), "no checkpoint completed"
            gateway.shutdown()  # the JVM goes, and the MiniCluster with it: no cancellation
            job._client = None
            killed_at = len(_read_all(bootstrap, changelog, parts))
            assert 0 < killed_at < n
            resume = latest_checkpoint(checkpoints)
            assert resume is not None

            with ComputeJob(job_settings, [dhash], create_topics=False) as again:
                assert again.wait(timeout_seconds=60) == "FINISHED"
            _settle(server, {"images": n})
            records = [SignalRecord.FromString(v) for v in _read_all(bootstrap, changelog, parts)]
            assert len(records) - killed_at < n, (killed_at, len(records))  # resumed, not redone
            assert len({r.entity_id for r in records}) == n
            stored = _stored(server, "images")
            assert len(stored) == n
            assert all(s.envelope.backfill for s in stored.values())
            events = [SignalAvailable.FromString(v) for v in _read(bootstrap, available, parts)]
            assert len(events) == n
            assert len({e.entity_id for e in events}) == n
        finally:
            server.stop(grace=0.5)
            gateway.shutdown()
