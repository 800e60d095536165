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

Returns the ``history`` section of bench/report.json (its ``archive`` key).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from contract import logs
from contract.kafka import consume_available, consumer_config, producer_config
from contract.settings import ArchiveSettings, KafkaSettings
from gss.archive import commits
from gss.archive.archiver import Archiver
from gss.archive.storage import open_storage
from gss.local.broker import LocalBroker
from gss.local.s3 import LocalS3

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


def run(report_dir: Path) -> dict[str, Any]:
    logs.configure("WARNING", "json")
    count = int(os.environ.get("GSS_BENCH_HISTORY_RECORDS", "200000"))
    batch = int(os.environ.get("GSS_BENCH_HISTORY_BATCH", "25000"))
    with_s3 = os.environ.get("GSS_BENCH_HISTORY_S3", "1") != "0"
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
    return {"archive": archive}


if __name__ == "__main__":
    import json

    print(json.dumps(run(Path(__file__).resolve().parent), indent=2))
