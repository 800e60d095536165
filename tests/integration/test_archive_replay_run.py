"""gss replay against the local broker: a real archive of a topic with records spread over
five minutes (explicit CreateTime timestamps, some late, some without a key), replayed as a
window into other topics and read back by offsets."""

from __future__ import annotations

import signal
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from contract.headers import REPLAY_OF
from contract.kafka import consume_available, consumer_config, producer_config
from contract.settings import ArchiveSettings, KafkaSettings
from gss.archive.archiver import Archiver
from gss.archive.layout import ArchivedRecord
from gss.archive.replay import Replayer, ReplayPlan, format_time
from gss.archive.storage import ArchiveStorage, open_storage
from gss.cli import main
from gss.local.broker import LocalBroker
from tests.archive_support import new_topics, read_archive, wait_archived

pytestmark = pytest.mark.integration

PARTITIONS = 3
RECORDS = 300
Replayed = tuple[bytes | None, bytes | None, tuple[tuple[str, bytes | None], ...]]


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as local:
        yield local


@pytest.fixture(scope="module")
def archived(
    broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ArchiveSettings, str, int, list[ArchivedRecord]]:
    """A 3-partition topic archived: 300 records a second apart (murmur2 keys, every 17th
    without a key, every 29th 40 s late); its settings, name, first timestamp and records."""
    bootstrap = broker.bootstrap_servers
    (topic,) = new_topics(bootstrap, PARTITIONS, count=1)
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    producer = Producer(producer_config(kafka, "test-replay-source", delivery_timeout_seconds=30))
    base = (int(time.time()) - 600) * 1000
    for i in range(RECORDS):
        key = None if i % 17 == 5 else b"key-%d" % (i % 23)
        ts = base + i * 1000 - (40_000 if i % 29 == 7 else 0)
        headers = [("n", str(i).encode()), ("none", None)][: i % 3]
        if key is None:
            producer.produce(topic, value=b"v%d" % i, partition=i % PARTITIONS, timestamp=ts)
        else:
            producer.produce(topic, value=b"v%d" % i, key=key, timestamp=ts, headers=headers)
        producer.poll(0)
    assert producer.flush(30) == 0
    settings = ArchiveSettings.model_validate(
        {
            "root": str(tmp_path_factory.mktemp("replay") / "archive"),
            "metrics_port": -1,
            "max_file_records": 100,
            "max_file_seconds": 0.5,
        }
    )
    storage = open_storage(settings)
    archiver = Archiver(settings, kafka, [topic], storage)
    thread = threading.Thread(target=archiver.run, kwargs={"duration_seconds": 60}, daemon=True)
    thread.start()
    try:
        wanted = _wait_for_count(storage, topic, RECORDS)
        assert wait_archived(storage, wanted, timeout=5)
    finally:
        archiver.stop()
        thread.join(20)
    assert not thread.is_alive()
    records, _ = read_archive(storage, [topic])
    assert len(records) == RECORDS
    return settings, topic, base, list(records.values())


def _wait_for_count(
    storage: ArchiveStorage, topic: str, count: int, timeout: float = 45.0
) -> dict[tuple[str, int], int]:
    from gss.archive import commits

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        newest = [commits.newest_marker(storage, topic, p) for p in range(PARTITIONS)]
        if sum(m.totals.records for m in newest if m is not None) >= count:
            return {(topic, m.partition): m.last_offset for m in newest if m is not None}
        time.sleep(0.2)
    raise AssertionError(f"{topic} was not archived in {timeout} s")


def read_back(bootstrap: str, topic: str, count: int) -> dict[int, list[Any]]:
    """Every record of ``topic`` by partition, in offset order: read by assigned offsets until
    ``count`` records came, then 1 s more to see that no others do (bounded)."""
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    consumer = Consumer(consumer_config(kafka, "test-replay-read", f"test-replay-{topic}"))
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    out: dict[int, list[Any]] = defaultdict(list)
    got = 0
    deadline = time.monotonic() + 30
    settle: float | None = None
    try:
        while time.monotonic() < deadline and (settle is None or time.monotonic() < settle):
            for msg in consume_available(consumer, 1000, 0.2):
                if msg.error() is None:
                    out[msg.partition()].append(msg)
                    got += 1
            if got >= count and settle is None:
                settle = time.monotonic() + 1.0
    finally:
        consumer.close()
    for msgs in out.values():
        assert [m.offset() for m in msgs] == sorted(m.offset() for m in msgs)
    return out


def _replayed(msg: Any) -> Replayed:
    return msg.key(), msg.value(), tuple(msg.headers() or ())


def _origin(msg: Any) -> tuple[str, int, int]:
    value = dict(msg.headers())[REPLAY_OF].decode()
    topic, partition, offset = value.rsplit(":", 2)
    return topic, int(partition), int(offset)


def test_replay_window_is_exact_ordered_and_deterministic(
    broker: LocalBroker, archived: tuple[ArchiveSettings, str, int, list[ArchivedRecord]]
) -> None:
    settings, topic, base, records = archived
    bootstrap = broker.bootstrap_servers
    from_ms, until_ms = base + 60_000, base + 240_000
    window = {(r.partition, r.offset): r for r in records if from_ms <= r.timestamp_ms < until_ms}
    assert 150 < len(window) < 200
    assert any(r.key is None for r in window.values())
    into_a = f"{topic}.replay-a"
    (into_b,) = new_topics(bootstrap, PARTITIONS, count=1)

    # Run 1: the verb, creating its topic, at 1000x (the 180 s window in about 0.18 s).
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    started_ms = int(time.time() * 1000)
    try:
        result = CliRunner().invoke(
            main,
            [
                "replay",
                topic,
                "--into",
                into_a,
                "--from",
                format_time(from_ms),
                "--to",
                format_time(until_ms),
                "--speed",
                "1000x",
                "--create-topic",
                "--root",
                settings.root,
            ],
            env={"GSS_KAFKA__BOOTSTRAP_SERVERS": bootstrap},
        )
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert result.exit_code == 0, result.output
    assert f"replayed {len(window)} records into {into_a}" in result.output
    assert f"created topic {into_a} ({PARTITIONS} partitions)" in result.output

    # Run 2: the same window through the API into an existing topic, original timestamps.
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    plan = ReplayPlan(topic, into_b, from_ms, until_ms, speed=200.0, keep_timestamps=True)
    stats = Replayer(kafka, open_storage(settings), plan).run()
    assert (stats.records, stats.delivered, stats.failed, stats.unflushed) == (
        len(window),
        len(window),
        0,
        0,
    )
    # Paced on the records' own gaps: the window spans about 180 s, at 200x about 0.9 s.
    span_s = (max(r.timestamp_ms for r in window.values()) - from_ms) / 1000
    assert stats.elapsed_seconds >= span_s / 200 * 0.95

    got_a = read_back(bootstrap, into_a, len(window))
    got_b = read_back(bootstrap, into_b, len(window))
    # Deterministic: the same (key, value, headers) in the same order on every partition.
    assert {p: [_replayed(m) for m in ms] for p, ms in got_a.items()} == {
        p: [_replayed(m) for m in ms] for p, ms in got_b.items()
    }
    for got, kept in ((got_a, False), (got_b, True)):
        msgs = [m for ms in got.values() for m in ms]
        # Exactly the window's records, each once, with key, value and headers.
        origins = [_origin(m) for m in msgs]
        assert sorted(origins) == sorted((topic, p, o) for p, o in window)
        for msg, (_t, p, o) in zip(msgs, origins, strict=True):
            source = window[(p, o)]
            assert (msg.key(), msg.value()) == (source.key, source.value)
            assert tuple(msg.headers())[:-1] == source.headers
            if source.key is None:
                assert msg.partition() == source.partition % PARTITIONS
            ts_type, ts = msg.timestamp()
            if kept:
                assert (ts_type, ts) == (1, source.timestamp_ms)
            else:
                assert ts >= started_ms
        # Per-key order: each key on one partition, in the archive's offset order.
        by_key: dict[bytes, list[tuple[int, int]]] = defaultdict(list)
        partitions_of: dict[bytes, set[int]] = defaultdict(set)
        for partition, ms in got.items():
            for m in ms:
                if m.key() is not None:
                    by_key[m.key()].append(_origin(m)[1:])
                    partitions_of[m.key()].add(partition)
        assert all(len(ps) == 1 for ps in partitions_of.values())
        for key, positions in by_key.items():
            assert positions == sorted(positions), key


def test_replay_refusals_and_stop(
    broker: LocalBroker, archived: tuple[ArchiveSettings, str, int, list[ArchivedRecord]]
) -> None:
    settings, topic, _base, _records = archived
    bootstrap = broker.bootstrap_servers
    env = {"GSS_KAFKA__BOOTSTRAP_SERVERS": bootstrap}
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        runner = CliRunner()
        missing = f"{topic}.missing"
        result = runner.invoke(
            main, ["replay", topic, "--into", missing, "--root", settings.root], env=env
        )
        assert result.exit_code == 1
        assert f"target topic '{missing}' does not exist" in result.output
        result = runner.invoke(
            main, ["replay", topic, "--into", topic, "--root", settings.root], env=env
        )
        assert result.exit_code == 1
        assert "refusing to replay" in result.output
        result = runner.invoke(
            main, ["replay", "not.archived", "--into", topic, "--root", settings.root], env=env
        )
        assert result.exit_code == 1
        assert f"archived topics: {topic}" in result.output
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)

    # A stop (what Ctrl-C sets) ends a 1x replay early, after flushing what was sent.
    (into,) = new_topics(bootstrap, PARTITIONS, count=1)
    stop = threading.Event()
    progress: list[Any] = []
    replayer = Replayer(
        KafkaSettings(bootstrap_servers=bootstrap),
        open_storage(settings),
        ReplayPlan(topic, into, speed=1.0, limit=250),
        stop_event=stop,
        on_progress=progress.append,
        progress_seconds=0.3,
    )
    timer = threading.Timer(1.5, stop.set)
    timer.start()
    started = time.monotonic()
    try:
        stats = replayer.run()
    finally:
        timer.cancel()
    assert time.monotonic() - started < 10
    assert stats.stopped
    assert 0 < stats.records < 250
    assert (stats.delivered, stats.failed, stats.unflushed) == (stats.records, 0, 0)
    assert len(progress) >= 2
    assert progress[-1].records == stats.records
    got = read_back(bootstrap, into, stats.records)
    assert sum(len(ms) for ms in got.values()) == stats.records
