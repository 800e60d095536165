"""Events benchmark: changelog ingest rate vs raw RocksDB WriteBatch puts, and freshness.

1. Ingest: ``GSS_BENCH_EVENTS_RECORDS`` (default 100,000) images/dhash records of distinct
   entities are produced to the changelog of a local broker, then an ingester (with its outbox
   publisher running beside it, as in a GSS node) materialises them into a fresh store:
   records/s from its start until the last is committed (values + events + offsets per
   WriteBatch, fsynced), and from its first committed batch (the steady rate, without the
   consumer's start). The publisher's side: events/s from the start until every event is
   acknowledged by the broker (end to end), the outbox backlog when the last record was
   committed, and how long the backlog then took to drain.
2. Baselines, same run: the same stored key/values put straight into a fresh RocksDB with
   rocksdict WriteBatches of the ingester's batch size, fsynced; and a bare confluent-kafka
   consumer reading the same changelog (what the local broker and the client can deliver).
3. Freshness: a ``gss ingest`` process (GSS alone in its process); this process produces
   records at ``GSS_BENCH_EVENTS_RATE`` (default 1,000) per second for
   ``GSS_BENCH_EVENTS_SECONDS`` (default 10) and a consumer-group subscriber
   (clients.subscriber) receives their availability events. Freshness = arrival of the event
   at the subscriber - the record's event time, set when it was produced (same clock).

Returns the ``events`` section of bench/report.json.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from clients.subscriber import Subscriber
from contract import logs
from contract.kafka import consumer_config, producer_config
from contract.registry import DEFAULT_REGISTRY_PATH, Registry, load_registry
from contract.settings import KafkaSettings, load_settings
from contract.topics import ensure_topics
from contract.v1 import envelope_pb2, signals_pb2
from gss.kafka.changelog import changelog_key
from gss.kafka.events_runtime import EventsRuntime
from gss.local.broker import LocalBroker
from gss.writes import to_writes
from store.db import SignalStore

ROOT = Path(__file__).resolve().parent.parent


def _record(n: int, event_time_ns: int) -> envelope_pb2.SignalRecord:
    record = envelope_pb2.SignalRecord(
        galaxy="images",
        entity_id=n.to_bytes(16, "big").hex(),
        signal=envelope_pb2.SignalRef(name="dhash", version=1),
    )
    record.value.Pack(signals_pb2.DHash(hash=n * 2654435761 % 2**64))
    record.envelope.event_time.FromNanoseconds(event_time_ns)
    record.envelope.producer = "bench"
    return record


def _producer(kafka: KafkaSettings) -> Producer:
    return Producer(producer_config(kafka, "gss-bench-events", delivery_timeout_seconds=30.0))


def _produce(
    producer: Producer, kafka: KafkaSettings, registry: Registry, record: envelope_pb2.SignalRecord
) -> None:
    topic = kafka.topic(kafka.changelog_topic, record.galaxy)
    while True:
        try:
            producer.produce(
                topic, value=record.SerializeToString(), key=changelog_key(registry, record)
            )
            return
        except BufferError:
            producer.poll(0.05)


def ingest_rate(
    kafka: KafkaSettings, registry: Registry, work: Path, count: int
) -> tuple[dict[str, float], list[Any]]:
    """The ingester's and the publisher's figures; also returns the writes for the baseline."""
    # GSS's producers never create topics implicitly (contract.kafka.producer_config).
    ensure_topics(kafka, registry)
    producer = _producer(kafka)
    base = time.time_ns()
    records = [_record(n, base + n) for n in range(count)]
    for record in records:
        _produce(producer, kafka, registry, record)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("the benchmark's records were not all acknowledged")
    settings = load_settings(kafka=kafka.model_dump())
    with SignalStore(work / "ingest", list(registry.galaxies)) as store:
        runtime = EventsRuntime(settings, registry, store)
        cpu = time.process_time()
        start = time.perf_counter()
        runtime.start()
        first = None
        deadline = time.monotonic() + 600
        while runtime.ingester.stats.applied < count and time.monotonic() < deadline:
            if first is None and runtime.ingester.stats.applied:
                first = (time.perf_counter(), runtime.ingester.stats.applied)
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
        applied = runtime.ingester.stats.applied
        backlog = runtime.outbox.depth
        drained = runtime.publisher.wait_empty(120)
        published_after = time.perf_counter() - start
        cpu = time.process_time() - cpu
        published = runtime.publisher.published
        runtime.stop()
    if applied != count:
        raise RuntimeError(f"only {applied} of {count} records were ingested")
    if not drained or published < count:
        raise RuntimeError(f"only {published} of {count} events were published")
    steady = count / elapsed
    if first is not None and first[1] < count:
        steady = (count - first[1]) / (start + elapsed - first[0])
    return {
        "ingest": count / elapsed,
        "steady": steady,
        "published": count / published_after,
        "backlog": backlog,
        "drain_s": published_after - elapsed,
        "cpu_us": cpu / count * 1e6,
    }, to_writes(registry, records)


def raw_consume_rate(kafka: KafkaSettings, count: int) -> float:
    """Records/s a bare consumer (the ingester's settings) reads from the changelog's start."""
    topic = kafka.topic(kafka.changelog_topic, "images")
    consumer = Consumer(consumer_config(kafka, "gss-bench-raw", "gss-bench-raw"))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        got = 0
        start = time.perf_counter()
        deadline = time.monotonic() + 120
        while got < count and time.monotonic() < deadline:
            got += sum(1 for m in consumer.consume(5000, 0.1) if m.error() is None)
        elapsed = time.perf_counter() - start
    finally:
        consumer.close()
    if got < count:
        raise RuntimeError(f"the raw consumer read only {got} of {count} records")
    return count / elapsed


def raw_writebatch_rate(writes: list[Any], path: Path, batch_size: int) -> float:
    """Puts/s of the same key/values into RocksDB through rocksdict WriteBatches, fsynced."""
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    db = Rdict(str(path), opts)
    write_opts = WriteOptions()
    write_opts.sync = True
    start = time.perf_counter()
    for i in range(0, len(writes), batch_size):
        batch = WriteBatch(raw_mode=True)
        for write in writes[i : i + batch_size]:
            batch.put(write.key, write.stored)
        db.write(batch, write_opts)
    elapsed = time.perf_counter() - start
    db.close()
    return len(writes) / elapsed


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def freshness(
    kafka: KafkaSettings, registry: Registry, work: Path, rate: int, seconds: float
) -> tuple[float, float, int]:
    """p50 and p99 ms from producing a record to its event reaching a subscriber."""
    ensure_topics(kafka, registry)  # before the subscriber subscribes to them
    log_path = work / "ingest.log"
    env = {
        **os.environ,
        "GSS_STORE__PATH": str(work / "fresh"),
        "GSS_LOG_FORMAT": "json",
        "GSS_LOG_LEVEL": "WARNING",
        **{
            f"GSS_KAFKA__{k.upper()}": str(v)
            for k, v in kafka.model_dump().items()
            if v is not None and not isinstance(v, dict)
        },
    }
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "gss", "ingest"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        with Subscriber(
            kafka.bootstrap_servers or "",
            "images",
            "bench-freshness",
            topic=kafka.topic(kafka.available_topic, "images"),
            start="latest",
        ) as sub:
            deadline = time.monotonic() + 30
            while not sub.assignment() and time.monotonic() < deadline:
                sub.poll(0.2)
            if process.poll() is not None:
                raise RuntimeError(f"gss ingest exited: see {log_path}")
            total = int(rate * seconds)
            first = 1_000_000_000
            stop = threading.Event()

            def produce_paced() -> None:
                producer = _producer(kafka)
                start = time.perf_counter()
                for n in range(total):
                    due = start + n / rate
                    while (delay := due - time.perf_counter()) > 0:
                        time.sleep(min(delay, 0.01))
                    _produce(producer, kafka, registry, _record(first + n, time.time_ns()))
                    producer.poll(0)
                producer.flush(30)
                stop.set()

            thread = threading.Thread(target=produce_paced, daemon=True)
            thread.start()
            latencies: dict[str, float] = {}
            deadline = time.monotonic() + seconds + 60
            while len(latencies) < total and time.monotonic() < deadline:
                for event in sub.poll(0.05):
                    arrived = time.time_ns()
                    latencies.setdefault(
                        event.event_id, (arrived - event.event.event_time.ToNanoseconds()) / 1e6
                    )
            thread.join(30)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    values = list(latencies.values())
    warm = values[int(len(values) * 0.1) :] or values  # the first second warms the group up
    return _percentile(warm, 0.5), _percentile(warm, 0.99), len(values)


def run(report_dir: Path) -> dict[str, Any]:
    logs.configure("WARNING", "json")
    count = int(os.environ.get("GSS_BENCH_EVENTS_RECORDS", "100000"))
    rate = int(os.environ.get("GSS_BENCH_EVENTS_RATE", "1000"))
    seconds = float(os.environ.get("GSS_BENCH_EVENTS_SECONDS", "10"))
    registry = load_registry(DEFAULT_REGISTRY_PATH)
    work = Path(tempfile.mkdtemp(prefix="gss-bench-events-"))
    try:
        with LocalBroker() as broker:
            kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
            ingest, writes = ingest_rate(kafka, registry, work, count)
            raw = raw_writebatch_rate(writes, work / "raw", kafka.ingest_batch_max_records)
            consume = raw_consume_rate(kafka, count)
            fresh_kafka = kafka.model_copy(
                update={
                    "changelog_topic": "fresh.{galaxy}.changelog",
                    "available_topic": "fresh.{galaxy}.available",
                    "dlq_topic": "fresh.{galaxy}.dlq",
                }
            )
            p50, p99, received = freshness(fresh_kafka, registry, work, rate, seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if received < int(rate * seconds):
        raise RuntimeError(
            f"only {received} of {int(rate * seconds)} events reached the subscriber"
        )
    return {
        "ingest_records_per_s": round(ingest["ingest"]),
        "ingest_steady_records_per_s": round(ingest["steady"]),
        "raw_writebatch_puts_per_s": round(raw),
        "ingest_vs_raw_ratio": round(ingest["ingest"] / raw, 3),
        "raw_consume_records_per_s": round(consume),
        "ingest_vs_raw_consume_ratio": round(ingest["ingest"] / consume, 3),
        "publish_records_per_s": round(ingest["published"]),
        "outbox_backlog_at_ingest_end": ingest["backlog"],
        "outbox_drain_after_ingest_s": round(ingest["drain_s"], 3),
        "process_cpu_us_per_record": round(ingest["cpu_us"], 1),
        "freshness_p50_ms": round(p50, 2),
        "freshness_p99_ms": round(p99, 2),
        "rate_per_s": rate,
        "records": count,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(Path(__file__).resolve().parent), indent=2))
