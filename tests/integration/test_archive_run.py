"""The topic archive against the local broker, to a local directory and to S3 (moto)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract import archive
from contract.settings import ArchiveSettings, KafkaSettings
from gss.archive.archiver import Archiver
from gss.archive.status import archive_status
from gss.archive.storage import ArchiveStorage, open_storage
from gss.local.broker import LocalBroker
from gss.local.s3 import LocalS3
from tests.archive_support import AckedProducer, assert_archive_equals, new_topics, wait_archived

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as local:
        yield local


@pytest.fixture(scope="module")
def s3() -> Iterator[LocalS3]:
    with LocalS3() as local:
        local.create_bucket("gss-archive")
        yield local


def archive_settings(
    kind: str, tmp_path: Path, s3: LocalS3 | None, **extra: object
) -> ArchiveSettings:
    if kind == "s3":
        assert s3 is not None
        root = f"s3://gss-archive/{tmp_path.name}"
        return ArchiveSettings.model_validate(
            {"root": root, "metrics_port": -1, **s3.archive_settings(), **extra}
        )
    return ArchiveSettings.model_validate(
        {"root": str(tmp_path / "archive"), "metrics_port": -1, **extra}
    )


@pytest.fixture(params=["local", "s3"])
def storage_settings(request: pytest.FixtureRequest, tmp_path: Path) -> ArchiveSettings:
    s3 = request.getfixturevalue("s3") if request.param == "s3" else None
    return archive_settings(request.param, tmp_path, s3, max_file_records=300, max_file_seconds=0.5)


def test_archive_equals_topics(broker: LocalBroker, storage_settings: ArchiveSettings) -> None:
    """Two topics of three partitions, late records among them: the archive holds every
    acknowledged record once, with key, value, headers and timestamp, late ones under their
    own hour; status reports the ranges."""
    topics = new_topics(broker.bootstrap_servers, partitions=3)
    producer = AckedProducer(broker.bootstrap_servers)
    producer.produce_many(topics, 3, 1200)
    producer.flush()
    storage: ArchiveStorage = open_storage(storage_settings)
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
    archiver = Archiver(storage_settings, kafka, topics, storage)
    thread = threading.Thread(target=archiver.run, kwargs={"duration_seconds": 60}, daemon=True)
    thread.start()
    try:
        assert wait_archived(storage, producer.wanted(), timeout=45)
        # More records after the first ones are archived: the archiver keeps going.
        producer.produce_many(topics, 3, 300)
        producer.flush()
        assert wait_archived(storage, producer.wanted(), timeout=30)
    finally:
        archiver.stop()
        thread.join(20)
    assert not thread.is_alive()
    records = assert_archive_equals(storage, topics, producer.acked)
    late = [
        r
        for r in records.values()
        if r.hour < archive.hour_of(max(x.timestamp_ms for x in records.values()))
    ]
    assert late, "the test produced no late records"
    # Every record sits in the file of its own hour.
    rows = archive_status(storage, topics)
    assert {(r.topic, r.partition) for r in rows} == {(t, p) for t in topics for p in range(3)}
    for row in rows:
        acked = [o for (t, p, o) in producer.acked if (t, p) == (row.topic, row.partition)]
        assert (row.first_offset, row.last_offset, row.records) == (
            min(acked),
            max(acked),
            len(acked),
        )
        assert not row.pending
    for topic in topics:
        for partition in range(3):
            _assert_hours(storage, topic, partition)


def _assert_hours(storage: ArchiveStorage, topic: str, partition: int) -> None:
    from gss.archive import commits
    from gss.archive.reader import read_file

    for last in commits.marker_offsets(storage, topic, partition):
        marker = commits.read_marker(storage, topic, partition, last)
        for entry in marker.files:
            place = archive.parse_data_path(entry.path)
            for record in read_file(storage, topic, partition, entry):
                assert record.hour == place.hour
