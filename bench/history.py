"""History benchmark: the topic archive's rate against a raw consume of the same topic.

``GSS_BENCH_HISTORY_RECORDS`` (default 200,000) records (16-byte keys, 200-byte values, one
header, a tenth an hour late) are produced evenly to a 4-partition topic of a local broker. Then, same run:

1. raw consume: one consumer with explicit ``assign()`` (the archiver's consumer options)
   reads every record from the beginning and does nothing with it: records/s;
2. archive to a local directory: an :class:`gss.archive.archiver.Archiver` (batches of
   ``GSS_BENCH_HISTORY_BATCH`` records, default 25,000; a partition's last batch closes
   after 1 s) copies the topic into a fresh archive until its commit markers cover every
   produced offset: records/s from its start (start-up, recovery and fsyncs included);
3. archive to S3: the same into a local moto server (``GSS_BENCH_HISTORY_S3=0`` skips it).

And the store rebuild (``rebuild`` key): ``GSS_BENCH_HISTORY_REBUILD_RECORDS`` (default
100,000) valid ``images/dhash@1`` changelog records (a fifth of them superseding earlier
ones) on the 4-partition changelog of a local broker, archived to a local directory, then
materialised twice into fresh stores, same run, both with ``sync_writes=False`` (the rebuild's
setting; one WAL fsync at the end):

1. replaying the changelog from Kafka through the changelog ingester (from offset 0; it
   writes availability events to the outbox too, as it does live): records/s until it
   committed the last offset of every partition;
2. ``gss store rebuild`` from the archive (:func:`gss.rebuild.rebuild_store`, batches of
   10,000): records/s, reading, decoding and the final flush included.

And the replay (``replay`` key): ``GSS_BENCH_HISTORY_REPLAY_RECORDS`` (default 100,000)
records produced and archived to a local directory as above, then ``gss replay`` at
``--speed max`` (:class:`gss.archive.replay.Replayer`: reading and decoding the archive,
merging the partitions, producing with ``producer_config``, the final flush included) into a
fresh topic: records/s, against a raw produce of the same records (key, value, headers) from
memory with the same producer options into another fresh topic.

And the compute job over history (``unified_read`` and ``backfill`` keys, not run by
default): ``GSS_BENCH_HISTORY_UNIFIED_READ_RECORDS`` / ``GSS_BENCH_HISTORY_BACKFILL_RECORDS``
(default 20,000) image events on ``content.images`` (4 partitions) of a local broker, archived
to a local directory by the real archiver, then, same run, Flink MiniCluster jobs (parallelism
1) running ``images/dhash@1`` (a cheap map), each measured from its first changelog record to
its last (its own records, by producer):

1. live only (the baseline): the live job reading the same images from Kafka, from the
   beginning: records/s;
2. ``unified_read``: the job with ``compute.history_from`` before the images, reading them
   through the unified source (HybridSource: the archive, then Kafka after the last archived
   offset; no rate limit): records/s;
3. ``backfill``: the job ``gss signal backfill images/dhash@1 --since ...`` runs
   (:func:`compute.flink.backfill.compute_overrides`: the archive only, bounded, values marked
   backfill; no rate limit) until it finishes: images/s.

``GSS_BENCH_HISTORY_PARTS`` (default: all five, ``archive,rebuild,replay,unified_read,backfill``)
picks the parts; bench/run.py keeps the keys of this section that a run does not measure.

Returns the ``history`` section of bench/report.json.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from contract import logs
from contract.kafka import consume_available, consumer_config, producer_config
from contract.registry import DEFAULT_REGISTRY_PATH, load_registry
from contract.settings import ArchiveSettings, KafkaSettings
from contract.topics import TopicKind, ensure_topics, topic_name
from contract.v1 import envelope_pb2, signals_pb2
from gss.archive import commits
from gss.archive.archiver import Archiver
from gss.archive.layout import ArchivedRecord
from gss.archive.reader import read_partition
from gss.archive.replay import Replayer, ReplayPlan, merge_partitions
from gss.archive.storage import open_storage
from gss.kafka.changelog import changelog_key
from gss.kafka.ingester import Ingester
from gss.kafka.outbox import Outbox
from gss.local.broker import LocalBroker
from gss.local.s3 import LocalS3
from gss.rebuild import rebuild_store, verify_stores
from store.db import SignalStore

TOPIC = "bench.history"
PARTITIONS = 4


def produce(kafka: KafkaSettings, count: int) -> dict[int, int]:
    """``count`` records; the last acknowledged offset of each partition."""
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    for future in admin.create_topics([NewTopic(TOPIC, PARTITIONS, -1)]).values():
        future.result(10)
    producer = Producer(producer_config(kafka, "gss-bench-history", delivery_timeout_seconds=60))
    last: dict[int, int] = {}

    def report(err: Any, msg: Any) -> None:
        if err is None:
            last[msg.partition()] = max(msg.offset(), last.get(msg.partition(), -1))

    value = bytes(range(200))
    now = int(time.time() * 1000)
    for n in range(count):
        while True:
            try:
                producer.produce(
                    TOPIC,
                    # Even partitions, so batches close on their record count, not the timer.
                    partition=n % PARTITIONS,
                    key=n.to_bytes(16, "big"),
                    value=value,
                    headers=[("gss-event-id", n.to_bytes(8, "big"))],
                    # A tenth of the records are an hour late: a second file per batch.
                    timestamp=now - (3_600_000 if (n // PARTITIONS) % 10 == 0 else 0),
                    on_delivery=report,
                )
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise RuntimeError("the benchmark's records were not all acknowledged")
    return last


def raw_consume_rate(kafka: KafkaSettings, last: dict[int, int]) -> float:
    consumer = Consumer(consumer_config(kafka, "gss-bench-raw", "gss-bench-raw"))
    consumer.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in last])
    wanted = sum(o + 1 for o in last.values())
    got = 0
    start = time.perf_counter()
    deadline = time.monotonic() + 300
    while got < wanted and time.monotonic() < deadline:
        got += sum(1 for m in consume_available(consumer, 10_000, 0.2) if m.error() is None)
    elapsed = time.perf_counter() - start
    consumer.close()
    if got < wanted:
        raise RuntimeError(f"raw consume read {got} of {wanted} records")
    return wanted / elapsed


def archive_rate(
    kafka: KafkaSettings, settings: ArchiveSettings, last: dict[int, int]
) -> tuple[float, int]:
    storage = open_storage(settings)
    archiver = Archiver(settings, kafka, [TOPIC], storage)
    thread = threading.Thread(target=archiver.run, kwargs={"duration_seconds": 600}, daemon=True)
    start = time.perf_counter()
    thread.start()
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            done = True
            for p, o in last.items():
                newest = commits.newest_marker(storage, TOPIC, p)
                if newest is None or newest.last_offset < o:
                    done = False
                    break
            if done:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
    finally:
        archiver.stop()
        thread.join(60)
    if not done:
        raise RuntimeError("the archiver did not catch up in 600 s")
    return sum(o + 1 for o in last.values()) / elapsed, archiver.stats.files


def archive_section(count: int, batch: int, with_s3: bool) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="gss-bench-history-"))
    base = {"max_file_records": batch, "max_file_seconds": 1.0, "metrics_port": -1}
    try:
        with LocalBroker() as broker:
            kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
            last = produce(kafka, count)
            raw = raw_consume_rate(kafka, last)
            local, local_files = archive_rate(
                kafka, ArchiveSettings.model_validate({"root": str(work / "archive"), **base}), last
            )
            s3_rate = None
            if with_s3:
                with LocalS3() as s3:
                    s3.create_bucket("bench-archive")
                    s3_settings = ArchiveSettings.model_validate(
                        {"root": "s3://bench-archive/gss", **s3.archive_settings(), **base}
                    )
                    s3_rate, _ = archive_rate(kafka, s3_settings, last)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    archive: dict[str, Any] = {
        "records": count,
        "partitions": PARTITIONS,
        "batch_records": batch,
        "raw_consume_records_per_s": round(raw),
        "archive_local_records_per_s": round(local),
        "archive_local_vs_raw_ratio": round(local / raw, 3),
        "archive_local_files": local_files,
    }
    if s3_rate is not None:
        archive["archive_s3_moto_records_per_s"] = round(s3_rate)
        archive["archive_s3_moto_vs_raw_ratio"] = round(s3_rate / raw, 3)
    return archive


def _changelog_record(entity: int, n: int, base_ns: int) -> envelope_pb2.SignalRecord:
    record = envelope_pb2.SignalRecord(
        galaxy="images",
        entity_id=entity.to_bytes(16, "big").hex(),
        signal=envelope_pb2.SignalRef(name="dhash", version=1),
    )
    record.value.Pack(signals_pb2.DHash(hash=n * 2654435761 % 2**64))
    record.envelope.event_time.FromNanoseconds(base_ns + n)
    record.envelope.producer = "bench"
    return record


def rebuild_section(count: int) -> dict[str, Any]:
    """Store rebuild from the archive against replaying the changelog from Kafka."""
    registry = load_registry(DEFAULT_REGISTRY_PATH)
    work = Path(tempfile.mkdtemp(prefix="gss-bench-rebuild-"))
    galaxies = list(registry.galaxies)
    try:
        with LocalBroker() as broker:
            kafka = KafkaSettings(
                bootstrap_servers=broker.bootstrap_servers,
                changelog_topic="bench.{galaxy}.changelog",
                available_topic="bench.{galaxy}.available",
                dlq_topic="bench.{galaxy}.dlq",
            )
            ensure_topics(kafka, registry, timeout_seconds=10)
            topic = topic_name(kafka, TopicKind.CHANGELOG, "images")
            producer = Producer(
                producer_config(kafka, "gss-bench-rebuild", delivery_timeout_seconds=60)
            )
            last: dict[int, int] = {}

            def report(err: Any, msg: Any) -> None:
                if err is None:
                    last[msg.partition()] = max(msg.offset(), last.get(msg.partition(), -1))

            base = time.time_ns()
            distinct = max(1, count * 4 // 5)  # a fifth of the records supersede earlier ones
            for n in range(count):
                record = _changelog_record(n % distinct, n, base)
                while True:
                    try:
                        producer.produce(
                            topic,
                            value=record.SerializeToString(),
                            key=changelog_key(registry, record),
                            on_delivery=report,
                        )
                        break
                    except BufferError:
                        producer.poll(0.05)
            if producer.flush(120):
                raise RuntimeError("the benchmark's records were not all acknowledged")
            wanted = {(topic, p): o for p, o in last.items()}
            archive = ArchiveSettings.model_validate(
                {"root": str(work / "archive"), "max_file_seconds": 1.0, "metrics_port": -1}
            )
            storage = open_storage(archive)
            archiver = Archiver(archive, kafka, [topic], storage)
            thread = threading.Thread(
                target=archiver.run, kwargs={"duration_seconds": 600}, daemon=True
            )
            thread.start()
            try:
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline and not all(
                    (m := commits.newest_marker(storage, t, p)) is not None and m.last_offset >= o
                    for (t, p), o in wanted.items()
                ):
                    time.sleep(0.05)
            finally:
                archiver.stop()
                thread.join(60)
            with SignalStore(work / "kafka", galaxies, sync_writes=False) as replayed:
                ingester = Ingester(replayed, registry, kafka, Outbox(replayed, registry, kafka))
                positions = [
                    envelope_pb2.ChangelogPosition(topic=t, partition=p, offset=o)
                    for (t, p), o in wanted.items()
                ]
                start = time.perf_counter()
                ingester.start()
                done = ingester.wait_applied(positions, timeout_seconds=600)
                replayed.flush()
                kafka_seconds = time.perf_counter() - start
                ingester.stop()
                if not done:
                    raise RuntimeError("the ingester did not catch up in 600 s")
                with SignalStore(work / "rebuilt", galaxies, sync_writes=False) as rebuilt:
                    stats = rebuild_store(rebuilt, registry, kafka, storage)
                    if stats.records != count:
                        raise RuntimeError(f"rebuilt {stats.records} of {count} records")
                    equal = verify_stores(replayed, rebuilt, registry, kafka).equal
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not equal:
        raise RuntimeError("the rebuilt store differs from the one the ingester made")
    kafka_rate = count / kafka_seconds
    return {
        "records": count,
        "partitions": len(last),
        "distinct_keys": distinct,
        "batch_records": 10_000,
        "sync_writes": False,
        "ingester_from_kafka_records_per_s": round(kafka_rate),
        "rebuild_from_archive_records_per_s": round(stats.records_per_s),
        "rebuild_vs_ingester_ratio": round(stats.records_per_s / kafka_rate, 3),
        "rebuilt_equals_replayed": equal,
    }


def replay_section(count: int) -> dict[str, Any]:
    """gss replay at max speed against a raw produce of the same records from memory."""
    work = Path(tempfile.mkdtemp(prefix="gss-bench-replay-"))
    settings = ArchiveSettings.model_validate(
        {"root": str(work / "archive"), "max_file_records": 25_000, "metrics_port": -1}
    )
    try:
        with LocalBroker() as broker:
            kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
            archive_rate(kafka, settings, produce(kafka, count))
            storage = open_storage(settings)
            raw_topic, replay_topic = f"{TOPIC}.raw-produce", f"{TOPIC}.replay"
            admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
            topics = [NewTopic(t, PARTITIONS, -1) for t in (raw_topic, replay_topic)]
            for future in admin.create_topics(topics).values():
                future.result(10)
            streams = [read_partition(storage, TOPIC, p) for p in range(PARTITIONS)]
            records: list[ArchivedRecord] = list(merge_partitions(streams))
            producer = Producer(
                producer_config(kafka, "gss-bench-raw-produce", delivery_timeout_seconds=60)
            )
            start = time.perf_counter()
            for r in records:
                while True:
                    try:
                        producer.produce(
                            raw_topic, value=r.value, key=r.key, headers=list(r.headers)
                        )
                        break
                    except BufferError:
                        producer.poll(0.05)
                producer.poll(0)
            if producer.flush(120):
                raise RuntimeError("the raw produce was not all acknowledged")
            raw = len(records) / (time.perf_counter() - start)
            stats = Replayer(kafka, storage, ReplayPlan(TOPIC, replay_topic)).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if stats.records != count or stats.failed or stats.unflushed:
        raise RuntimeError(f"the replay sent {stats.records} of {count} records: {stats}")
    return {
        "records": count,
        "partitions": PARTITIONS,
        "speed": "max",
        "raw_produce_records_per_s": round(raw),
        "replay_max_records_per_s": round(stats.records_per_s),
        "replay_vs_raw_produce_ratio": round(stats.records_per_s / raw, 3),
    }


class _JobCounter:
    """Changelog records one job wrote (by ``envelope.producer``), first and last arrival."""

    def __init__(self, bootstrap_servers: str, topic: str, partitions: int, producer: str) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                "group.id": "bench-history-jobs",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self.producer = producer
        self.count = 0
        self.first = self.last = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(1000, 0.05):
                value = message.value()
                if message.error() or not value:
                    continue
                record = envelope_pb2.SignalRecord.FromString(value)
                if record.envelope.producer != self.producer:
                    continue
                now = time.monotonic()
                self.count += 1
                self.first = self.first or now
                self.last = now

    def wait(self, count: int, timeout: float) -> float:
        """Until ``count`` records arrived: records/s from the first to the last."""
        deadline = time.monotonic() + timeout
        while self.count < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.count} of {count} {self.producer} records in {timeout} s"
                )
            time.sleep(0.05)
        return count / max(self.last - self.first, 1e-6)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def jobs_section(count: int, part: str) -> dict[str, Any]:
    """``unified_read`` (a job ``--from`` the start: the archive then Kafka) or ``backfill``
    (``gss signal backfill images/dhash@1``'s job: the archive only, bounded), each against a
    live-only job over the same ``count`` images from Kafka (from the beginning), same run."""
    from compute.examples.images.dhash import dhash
    from compute.flink import backfill as plan
    from compute.flink import gateway
    from compute.flink.run import ComputeJob, bound_plugins
    from compute.flink.run import ensure_topics as ensure_job_topics
    from contract.settings import Settings, load_settings
    from gss.local.generator import ContentGenerator

    work = Path(tempfile.mkdtemp(prefix=f"gss-bench-{part}-"))
    content = "content.images"
    try:
        with LocalBroker() as broker:
            bootstrap = broker.bootstrap_servers
            settings = load_settings(
                kafka={"bootstrap_servers": bootstrap},
                archive={
                    "root": str(work / "archive"),
                    "metrics_port": -1,
                    "max_file_records": 25_000,
                    "max_file_seconds": 1.0,
                    "content_topics": [content],
                },
                compute={
                    "job_name": "gss-bench-history-live",
                    "checkpoint_dir": (work / "checkpoints").as_uri(),
                    "idle_source_seconds": 1.0,
                    "metrics_port": 0,
                },
            )
            registry = load_registry(settings.registry_path)
            galaxy = registry.galaxy("images")
            changelog = settings.kafka.topic(settings.kafka.changelog_topic, "images")
            ensure_job_topics(settings, bound_plugins(settings, [dhash], registry), registry)
            since = datetime.now(UTC) - timedelta(minutes=10)
            producer = Producer(
                producer_config(settings.kafka, "gss-bench-history", delivery_timeout_seconds=60)
            )
            last: dict[tuple[str, int], int] = {}

            def report(err: Any, msg: Any) -> None:
                if err is None:
                    key = (msg.topic(), msg.partition())
                    last[key] = max(msg.offset(), last.get(key, -1))

            generator = ContentGenerator(seed=3, duplicate_fraction=0.0)
            for i in range(count):
                _, key, event = generator.next_image(since + timedelta(milliseconds=i))
                while True:
                    try:
                        producer.produce(
                            content, key=key, value=event.SerializeToString(), on_delivery=report
                        )
                        break
                    except BufferError:
                        producer.poll(0.05)
            if producer.flush(120):
                raise RuntimeError("the benchmark's images were not all acknowledged")
            storage = open_storage(settings.archive)
            archiver = Archiver(settings.archive, settings.kafka, [content], storage)
            thread = threading.Thread(
                target=archiver.run, kwargs={"duration_seconds": 600}, daemon=True
            )
            thread.start()
            try:
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline and not all(
                    (m := commits.newest_marker(storage, t, p)) is not None and m.last_offset >= o
                    for (t, p), o in last.items()
                ):
                    time.sleep(0.05)
            finally:
                archiver.stop()
                thread.join(60)

            def timed(job_settings: Settings, bounded: bool) -> float:
                """Records/s from the first changelog record of the job to the last."""
                name = job_settings.compute.job_name
                counter = _JobCounter(bootstrap, changelog, galaxy.partitions, f"flink:{name}")
                try:
                    with ComputeJob(
                        job_settings, [dhash], registry=registry, create_topics=False
                    ) as job:
                        rate = counter.wait(count, timeout=600)
                        if bounded and job.wait(timeout_seconds=120) != "FINISHED":
                            raise RuntimeError(f"{name} did not finish")
                    return rate
                finally:
                    counter.close()

            def with_compute(**update: Any) -> Settings:
                return settings.model_copy(
                    update={"compute": settings.compute.model_copy(update=update)}
                )

            live = timed(settings, bounded=False)
            if part == "unified_read":
                measured = timed(
                    with_compute(job_name="gss-bench-history-unified", history_from=since),
                    bounded=False,
                )
            else:
                overrides = plan.compute_overrides(
                    settings,
                    dhash,
                    since=since,
                    until=None,
                    rate_per_second=None,
                    continue_live=False,
                )
                measured = timed(with_compute(**overrides), bounded=True)
                plan.clear_checkpoints(overrides["checkpoint_dir"])
            gateway.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    name = "unified_history_then_kafka" if part == "unified_read" else "backfill_dhash"
    unit = "records" if part == "unified_read" else "images"
    return {
        unit: count,
        "plugin": "images/dhash@1",
        "content_partitions": len(last),
        "parallelism": 1,
        f"live_kafka_only_{unit}_per_s": round(live, 1),
        f"{name}_{unit}_per_s": round(measured, 1),
        f"{name}_vs_live_ratio": round(measured / live, 3),
    }


def run(report_dir: Path) -> dict[str, Any]:
    logs.configure("WARNING", "json")
    parts = os.environ.get(
        "GSS_BENCH_HISTORY_PARTS", "archive,rebuild,replay,unified_read,backfill"
    ).split(",")
    out: dict[str, Any] = {}
    if "archive" in parts:
        out["archive"] = archive_section(
            int(os.environ.get("GSS_BENCH_HISTORY_RECORDS", "200000")),
            int(os.environ.get("GSS_BENCH_HISTORY_BATCH", "25000")),
            os.environ.get("GSS_BENCH_HISTORY_S3", "1") != "0",
        )
    if "rebuild" in parts:
        out["rebuild"] = rebuild_section(
            int(os.environ.get("GSS_BENCH_HISTORY_REBUILD_RECORDS", "100000"))
        )
    if "replay" in parts:
        out["replay"] = replay_section(
            int(os.environ.get("GSS_BENCH_HISTORY_REPLAY_RECORDS", "100000"))
        )
    for part in ("unified_read", "backfill"):
        if part in parts:
            out[part] = jobs_section(
                int(os.environ.get(f"GSS_BENCH_HISTORY_{part.upper()}_RECORDS", "20000")), part
            )
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(Path(__file__).resolve().parent), indent=2))
