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
from contract import deadletter
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
    return [
        (m.partition(), SignalRecord.FromString(m.value()))
        for m in _records(bootstrap, topic, partitions)
    ]


def _records(bootstrap: str, topic: str, partitions: int) -> list[Any]:
    """Every record of ``topic`` from offset 0 until idle."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "history-test", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[Any] = []
    try:
        idle = 0
        while idle < 5:
            msgs = consumer.consume(500, 0.2)
            idle = 0 if msgs else idle + 1
            out.extend(m for m in msgs if not m.error())
    finally:
        consumer.close()
    return out


def _values(bootstrap: str, topic: str, partitions: int) -> list[bytes]:
    return [m.value() for m in _records(bootstrap, topic, partitions)]


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
        # The archive leg read the committed files: one manifest per reader (parallelism 1),
        # a line per batch of either partition.
        manifests = sorted((tmp_path / "archive" / "_manifests").rglob("*.manifest"))
        assert [m.name for m in manifests] == ["group-0.manifest"]
        lines = manifests[0].read_text().splitlines()
        assert {line.split("\t")[0] for line in lines} == {"0", "1"}
        assert all(".jsonl.gz" in line for line in lines)
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


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The offsets ``group`` (a Flink job: its Kafka leg commits on checkpoints) committed."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 10)
        return {tp.partition: tp.offset for tp in found}
    finally:
        consumer.close()


def _latest(records: list[SignalRecord]) -> dict[tuple[str, str, int], bytes]:
    """What GSS serves from these records: per (signal, entity, window) the newest by event
    time, then by order (a window's late events fire it again with a larger count)."""
    from contract.v1.signals_pb2 import WindowedCount

    best: dict[tuple[str, str, int], tuple[int, int, bytes]] = {}
    for n, r in enumerate(records):
        window = 0
        if r.signal.name == "save_count_1h":
            count = WindowedCount()
            r.value.Unpack(count)
            window = count.window_start.ToMilliseconds()
        key = (r.signal.name, r.entity_id, window)
        order = (r.envelope.event_time.ToMilliseconds(), n, r.value.value)
        best[key] = max(best.get(key, order), order)
    return {k: v[2] for k, v in best.items()}


@pytest.mark.parametrize("parallelism", [1, 2])
def test_switch_over_under_concurrent_live_writes_equals_an_oracle(
    tmp_path: Path, parallelism: int
) -> None:
    """Events go on arriving while the job reads history and switches to Kafka, and the
    archiver goes on archiving them: the job's output equals the in-process harness run over
    the full input — every image's dhash exactly once, every pin window's final count. Two
    undecodable records (one archived, one live) are dead-lettered with their positions, and
    the job goes on. At parallelism 2 each partition's history has a reader of its own."""
    from confluent_kafka import Producer

    from compute.harness import LocalHarness
    from gss.local.broker import LocalBroker

    pins_topic, events_per_topic, archived_share = "content.pins", 160, 0.5
    step_ms = 45_000  # 160 events span two hours of event time: three one-hour windows
    with LocalBroker() as broker:
        bootstrap = broker.bootstrap_servers
        settings = _settings(tmp_path, bootstrap, "gss-switch-test")
        settings = settings.model_copy(
            update={
                "archive": settings.archive.model_copy(
                    update={"content_topics": [TOPIC, pins_topic]}
                )
            }
        )
        registry = load_registry(settings.registry_path)
        plugins = [dhash, save_count_1h]
        ensure_topics(settings, bound_plugins(settings, plugins, registry), registry)
        oracle = LocalHarness(plugins, settings=settings)

        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        generator = ContentGenerator(seed=23, duplicate_fraction=0.0, pins=6)
        base_ms = int(time.time() * 1000) - 4 * 3_600_000
        last: dict[tuple[str, int], int] = {}
        garbage: dict[bytes, tuple[int, int]] = {}  # value -> (partition, offset)

        def report(err: Any, msg: Any) -> None:
            assert err is None, err
            key = (msg.topic(), msg.partition())
            last[key] = max(last.get(key, -1), msg.offset())
            if msg.value().startswith(b"\xffgarbage"):
                garbage[msg.value()] = (msg.partition(), msg.offset())

        def produce(first: int, count: int, pause: float = 0.0, images: bool = True) -> None:
            for i in range(first, first + count):
                ts = base_ms + i * step_ms
                moment = datetime.fromtimestamp(ts / 1000, UTC)
                made = [generator.next_image(moment)] if images else []
                for topic, key, event in (*made, generator.next_pin(moment)):
                    producer.produce(
                        topic,
                        key=key,
                        value=event.SerializeToString(),
                        partition=i % PARTITIONS,
                        timestamp=ts,
                        on_delivery=report,
                    )
                    oracle.send(topic, event)
                if images and i in (archived // 2, archived + 10):
                    junk = b"\xffgarbage %d" % i
                    producer.produce(
                        TOPIC, key=b"junk", value=junk, partition=i % 2, on_delivery=report
                    )
                    oracle.send(TOPIC, junk)
                if pause:
                    producer.poll(0)
                    time.sleep(pause)
            assert producer.flush(30) == 0

        archived = int(events_per_topic * archived_share)
        produce(0, archived)
        storage = open_storage(settings.archive)
        archiver = Archiver(settings.archive, settings.kafka, [TOPIC, pins_topic], storage)
        thread = threading.Thread(
            target=archiver.run, kwargs={"duration_seconds": 120}, daemon=True
        )
        thread.start()
        try:
            assert wait_archived(storage, dict(last), timeout=30), "the archiver did not catch up"
            job_settings = _settings(
                tmp_path,
                bootstrap,
                "gss-switch-test",
                history_from=datetime.fromtimestamp(base_ms / 1000, UTC),
                history_rate_per_second=60.0,  # the history leg takes ~3 s per topic
                parallelism=parallelism,
            )
            with ComputeJob(job_settings, plugins, registry=registry, create_topics=False) as job:
                # Live writes while the job reads history, switches, and the archiver archives.
                produce(archived, events_per_topic - archived, pause=0.04)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    done = _committed(bootstrap, "gss-switch-test", pins_topic, PARTITIONS)
                    if all(done.get(p, -1) > last[(pins_topic, p)] for p in range(PARTITIONS)):
                        break
                    time.sleep(0.5)
                else:
                    raise AssertionError(f"the job did not read all pins: {done} vs {last}")
                # Close every window: a pin event 75 minutes later on each partition.
                produce(events_per_topic + 100, 2, images=False)
                expected = {
                    k: v
                    for k, v in _latest(oracle.records).items()
                    if k[0] == "dhash" or k[2] < base_ms + events_per_topic * step_ms
                }
                changelogs = {
                    g: settings.kafka.topic(settings.kafka.changelog_topic, g)
                    for g in ("images", "pins")
                }

                def output() -> list[SignalRecord]:
                    return [
                        r
                        for g, topic in changelogs.items()
                        for _, r in _changelog(bootstrap, topic, registry.galaxy(g).partitions)
                    ]

                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    got = {k: v for k, v in _latest(output()).items() if k in expected}
                    if got == expected:
                        break
                    time.sleep(1.0)
                time.sleep(2.0)  # anything repeated would show up now
                records = output()
                job_state = f"job {job.status()}, failure: {job.failure()}"
        finally:
            archiver.stop()
            thread.join(20)
        dead = [
            deadletter.parse(v)
            for g in ("images", "pins")
            for v in _values(
                bootstrap,
                settings.kafka.topic(settings.kafka.dlq_topic, g),
                registry.galaxy(g).partitions,
            )
        ]
        gateway.shutdown()

    assert sum(k[0] == "save_count_1h" for k in expected) >= 6  # pins x windows
    served = {k: v for k, v in _latest(records).items() if k in expected}
    missing = sorted({k[0] for k in expected.keys() - served.keys()})
    assert served == expected, f"{len(expected) - len(served)} missing ({missing}); {job_state}"
    # Exactly once: one dhash record per image, none repeated across the switch.
    hashes = [r.entity_id for r in records if r.signal.name == "dhash"]
    assert len(hashes) == len(set(hashes)) == events_per_topic
    # The undecodable records, and nothing else: no event came after its window closed (the
    # archive leg merges partitions by time).
    assert sorted((d.input, d.input_partition, d.input_offset) for d in dead) == sorted(
        (value, p, o) for value, (p, o) in garbage.items()
    )
    assert {(d.reason, d.input_topic, d.input_key) for d in dead} == {
        (deadletter.Reason.BAD_INPUT, TOPIC, b"junk")
    }
    assert len(garbage) == 2


def test_a_damaged_archive_file_fails_the_job_naming_the_file(tmp_path: Path) -> None:
    """A truncated archive file stops a history read with an error that names the file and
    its offset range (Flink's restarts would only meet it again)."""
    import gzip

    from confluent_kafka import Producer

    from contract.archive import archive_root, partition_history
    from gss.local.broker import LocalBroker

    with LocalBroker() as broker:
        bootstrap = broker.bootstrap_servers
        settings = _settings(tmp_path, bootstrap, "gss-damaged-test")
        registry = load_registry(settings.registry_path)
        ensure_topics(settings, bound_plugins(settings, [dhash], registry), registry)
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        generator = ContentGenerator(seed=31, duplicate_fraction=0.0)
        start_ms = int(time.time() * 1000) - 60_000
        last: dict[tuple[str, int], int] = {}

        def report(err: Any, msg: Any) -> None:
            assert err is None, err
            last[(msg.topic(), msg.partition())] = msg.offset()

        for i in range(20):
            _, key, event = generator.next_image(T0 + timedelta(seconds=i))
            producer.produce(
                TOPIC,
                key=key,
                value=event.SerializeToString(),
                partition=0,
                timestamp=start_ms + i,
                on_delivery=report,
            )
        assert producer.flush(30) == 0
        storage = open_storage(settings.archive)
        archiver = Archiver(settings.archive, settings.kafka, [TOPIC], storage)
        thread = threading.Thread(target=archiver.run, kwargs={"duration_seconds": 60}, daemon=True)
        thread.start()
        try:
            assert wait_archived(storage, last, timeout=30), "the archiver did not catch up"
        finally:
            archiver.stop()
            thread.join(20)
        history = partition_history(archive_root(settings.archive), TOPIC, 0)
        assert history is not None
        damaged = history.batches[1][0]
        path = tmp_path / "archive" / damaged.path
        data = gzip.compress(gzip.decompress(path.read_bytes())[:-40])  # a cut last line
        path.write_bytes(data)

        job_settings = _settings(
            tmp_path,
            bootstrap,
            "gss-damaged-test",
            history_from=datetime.fromtimestamp(start_ms / 1000, UTC),
            history_bounded=True,
            restart_attempts=0,
        )
        with ComputeJob(job_settings, [dhash], registry=registry, create_topics=False) as job:
            assert job.wait(timeout_seconds=60) == "FAILED"
            cause = job.failure()
        gateway.shutdown()
    assert cause is not None
    assert f"{damaged.first_offset}-{damaged.last_offset}" in cause, cause
    assert path.name in cause, cause
