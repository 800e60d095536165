"""Faults of the topic archive: kill -9 at random points, a paused broker, a recreated topic."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from contract import processes
from contract.settings import ArchiveSettings, KafkaSettings
from gss.archive import commits
from gss.archive.archiver import Archiver
from gss.archive.storage import open_storage
from gss.local.broker import LocalBroker
from tests.archive_support import AckedProducer, assert_archive_equals, new_topics, wait_archived

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as local:
        yield local


def _start_archiver(
    bootstrap: str, root: Path, topics: list[str], log: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "GSS_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "GSS_ARCHIVE__ROOT": str(root),
        "GSS_ARCHIVE__TOPICS": json.dumps(topics),
        "GSS_ARCHIVE__MAX_FILE_RECORDS": "25",
        "GSS_ARCHIVE__MAX_FILE_SECONDS": "0.1",
        "GSS_ARCHIVE__METRICS_PORT": "-1",
        "GSS_ARCHIVE__TOPIC_CHECK_INTERVAL_SECONDS": "1",
        "GSS_LOG_FORMAT": "json",
    }
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gss", "archive", "run", "--duration", "120"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=processes.child_preexec(),  # noqa: PLW1509
        )
    processes.track(process.pid, "archiver")
    return process


def _kill(process: subprocess.Popen[bytes], signum: int = signal.SIGKILL) -> None:
    processes.kill_group(process.pid, signum)
    try:
        process.wait(timeout=20)
    finally:
        processes.kill_group(process.pid)
        processes.untrack(process.pid)


def _wait_assigned(log: Path, times: int, timeout: float = 20.0) -> bool:
    """Wait (bounded) until the log shows ``times`` archiver starts that got their partitions."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.read_text().count('"archive_assigned"') >= times:
            return True
        time.sleep(0.05)
    return False


def test_kill_9_archives_every_offset_exactly_once(tmp_path: Path, broker: LocalBroker) -> None:
    """A producer keeps writing while the archiver (a `gss archive run` process) is killed
    with SIGKILL 12 times at seeded random points; a last run catches up. The archive then
    equals everything the producer got acknowledged: every offset exactly once."""
    rng = random.Random(20261128)
    topics = new_topics(broker.bootstrap_servers, partitions=2)
    root = tmp_path / "archive"
    log = tmp_path / "archiver.log"
    producer = AckedProducer(broker.bootstrap_servers, seed=3)
    stop = threading.Event()

    def keep_producing() -> None:
        i = 0
        while not stop.is_set() and i < 50_000:
            producer.produce(topics[i % 2], (i // 2) % 2, late=i % 9 == 4)
            i += 1
            if i % 20 == 0:
                time.sleep(0.02)  # about 1,000 records/s

    thread = threading.Thread(target=keep_producing, daemon=True)
    thread.start()
    kills = 0
    storage = open_storage(ArchiveSettings(root=str(root)))
    try:
        for _ in range(12):
            process = _start_archiver(broker.bootstrap_servers, root, topics, log)
            # Once it has resumed (about a second of start-up), kill it anywhere from its
            # first batch to well into archiving.
            assert _wait_assigned(log, kills + 1), log.read_text()[-2000:]
            time.sleep(rng.uniform(0.0, 1.5))
            assert process.poll() is None, log.read_text()[-2000:]
            _kill(process)
            kills += 1
        stop.set()
        thread.join(10)
        producer.flush()
        process = _start_archiver(broker.bootstrap_servers, root, topics, log)
        try:
            assert wait_archived(storage, producer.wanted(), timeout=60), log.read_text()[-3000:]
        finally:
            _kill(process, signal.SIGTERM)
    finally:
        stop.set()
        thread.join(10)
    assert kills >= 10
    assert len(producer.acked) > 2000
    assert_archive_equals(storage, topics, producer.acked)
    assert log.read_text().count('"archive_assigned"') == 13


def test_broker_pause_delays_archiving_loses_nothing(tmp_path: Path, broker: LocalBroker) -> None:
    """The broker stops answering (SIGSTOP) for 4 s while records are produced, then goes on
    (SIGCONT): the archiver waits and archives every record once."""
    topics = new_topics(broker.bootstrap_servers, partitions=2)
    settings = ArchiveSettings(
        root=str(tmp_path / "archive"), max_file_records=100, max_file_seconds=0.2, metrics_port=-1
    )
    storage = open_storage(settings)
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
    archiver = Archiver(settings, kafka, topics, storage)
    thread = threading.Thread(target=archiver.run, kwargs={"duration_seconds": 90}, daemon=True)
    thread.start()
    producer = AckedProducer(broker.bootstrap_servers, seed=5)
    try:
        producer.produce_many(topics, 2, 400)
        producer.flush()
        assert wait_archived(storage, producer.wanted(), timeout=30)
        before = producer.wanted()
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            producer.produce_many(topics, 2, 400)
            time.sleep(4)
            # Nothing new can have been archived while the broker was paused.
            assert all(
                commits.newest_marker(storage, t, p).last_offset == o  # type: ignore[union-attr]
                for (t, p), o in before.items()
            )
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        producer.flush()
        assert wait_archived(storage, producer.wanted(), timeout=60)
    finally:
        archiver.stop()
        thread.join(20)
    assert not thread.is_alive()
    assert_archive_equals(storage, topics, producer.acked)


def test_recreated_topic_is_refused(tmp_path: Path, broker: LocalBroker) -> None:
    """A broker that restarts empty gives the topic a new id and offsets from 0: the archiver
    keeps the archived range and refuses to archive the new topic beside it."""
    topics = new_topics(broker.bootstrap_servers, partitions=1, count=1)
    settings = ArchiveSettings(
        root=str(tmp_path / "archive"),
        max_file_seconds=0.2,
        topic_check_interval_seconds=0.5,
        metrics_port=-1,
    )
    storage = open_storage(settings)
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
    producer = AckedProducer(broker.bootstrap_servers, seed=9)
    producer.produce_many(topics, 1, 50)
    producer.flush()
    archiver = Archiver(settings, kafka, topics, storage)
    thread = threading.Thread(target=archiver.run, kwargs={"duration_seconds": 60}, daemon=True)
    thread.start()
    try:
        assert wait_archived(storage, producer.wanted(), timeout=30)
        archived = dict(producer.acked)
        broker.restart()
        admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
        for future in admin.create_topics([NewTopic(topics[0], 1, -1)]).values():
            future.result(10)
        again = AckedProducer(broker.bootstrap_servers, seed=10)
        again.produce_many(topics, 1, 80)
        again.flush()
        time.sleep(3)
    finally:
        archiver.stop()
        thread.join(20)
    assert not thread.is_alive()
    assert archiver._refused.get(topics[0])
    assert_archive_equals(storage, topics, archived)
