"""Helpers for the archive tests: topics, a producer that remembers what was acknowledged,
waiting for the archive to cover offsets, and reading the whole archive back."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from gss.archive import commits
from gss.archive.layout import ArchivedRecord
from gss.archive.reader import read_partition
from gss.archive.storage import ArchiveStorage

Position = tuple[str, int, int]
_names = itertools.count()
HOUR_MS = 3_600_000


def new_topics(bootstrap: str, partitions: int, count: int = 2) -> list[str]:
    """``count`` fresh topics of ``partitions`` partitions each."""
    prefix = f"arch{next(_names)}-{int(time.time() * 1000) % 100000}"
    names = [f"{prefix}.t{i}" for i in range(count)]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(n, partitions, -1) for n in names]).values():
        future.result(10)
    return names


class AckedProducer:
    """Produces varied records (binary or null keys and values, headers, late timestamps) and
    keeps every acknowledged one, keyed by position."""

    def __init__(self, bootstrap: str, seed: int = 7, **config: Any) -> None:
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": 60_000,
                **config,
            }
        )
        self.rng = random.Random(seed)
        self.acked: dict[Position, ArchivedRecord] = {}
        self.failed: list[str] = []
        self._n = 0
        self._lock = threading.Lock()

    def produce(self, topic: str, partition: int, *, late: bool = False) -> None:
        self._n += 1
        n = self._n
        rng = self.rng
        key = None if n % 11 == 0 else bytes([n % 256, 0, 255]) + str(n).encode()
        value = None if n % 13 == 0 else bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        headers = [("n", str(n).encode()), ("bin", b"\x00\xff"), ("none", None)][: n % 4]
        ts = int(time.time() * 1000) - (rng.randrange(1, 3) * HOUR_MS + 1000 if late else 0)

        def report(err: Any, msg: Any) -> None:
            if err is not None:
                self.failed.append(str(err))
                return
            record = ArchivedRecord(
                topic=msg.topic(),
                partition=msg.partition(),
                offset=msg.offset(),
                timestamp_ms=ts,
                timestamp_type="create",
                key=key,
                value=value,
                headers=tuple(headers),
            )
            with self._lock:
                self.acked[(record.topic, record.partition, record.offset)] = record

        while True:
            try:
                self.producer.produce(
                    topic,
                    value=value,
                    key=key,
                    partition=partition,
                    timestamp=ts,
                    headers=headers,
                    on_delivery=report,
                )
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)

    def produce_many(self, topics: list[str], partitions: int, n: int) -> None:
        for i in range(n):
            self.produce(topics[i % len(topics)], (i // 2) % partitions, late=i % 7 == 3)

    def flush(self, timeout: float = 60.0) -> None:
        left = self.producer.flush(timeout)
        assert left == 0, f"{left} records unacknowledged"
        assert not self.failed, self.failed[:3]

    def wanted(self) -> dict[tuple[str, int], int]:
        """Last acknowledged offset of each (topic, partition)."""
        with self._lock:
            out: dict[tuple[str, int], int] = {}
            for t, p, o in self.acked:
                out[(t, p)] = max(o, out.get((t, p), -1))
            return out


def archived_up_to(storage: ArchiveStorage, topic: str, partition: int) -> int:
    newest = commits.newest_marker(storage, topic, partition)
    return -1 if newest is None else newest.last_offset


def wait_archived(
    storage: ArchiveStorage, wanted: dict[tuple[str, int], int], timeout: float = 60.0
) -> bool:
    """Wait (bounded) until the commit markers cover every wanted offset."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(archived_up_to(storage, t, p) >= o for (t, p), o in wanted.items()):
            return True
        time.sleep(0.2)
    return False


def read_archive(
    storage: ArchiveStorage, topics: list[str]
) -> tuple[dict[Position, ArchivedRecord], Counter[Position]]:
    """Every archived record by position, and how often each position was read."""
    seen: Counter[Position] = Counter()
    records: dict[Position, ArchivedRecord] = {}
    for topic in topics:
        for partition in commits.archived_partitions(storage, topic):
            for record in read_partition(storage, topic, partition):
                pos = (record.topic, record.partition, record.offset)
                seen[pos] += 1
                records[pos] = record
    return records, seen


def assert_archive_equals(
    storage: ArchiveStorage, topics: list[str], acked: dict[Position, ArchivedRecord]
) -> dict[Position, ArchivedRecord]:
    records, seen = read_archive(storage, topics)
    dupes = [p for p, n in seen.items() if n > 1]
    assert not dupes, f"offsets archived more than once: {dupes[:5]}"
    missing = sorted(set(acked) - set(records))
    assert not missing, f"{len(missing)} acknowledged records not archived: {missing[:5]}"
    extra = sorted(set(records) - set(acked))
    assert not extra, f"{len(extra)} archived records were never acknowledged: {extra[:5]}"
    for pos, record in acked.items():
        assert records[pos] == record, (pos, records[pos], record)
    return records
