"""The topic archive without a broker: layout, record format, batches, reader, recovery."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contract import archive
from gss.archive import commits, layout
from gss.archive.archiver import batch_files, write_batch
from gss.archive.layout import ArchivedRecord
from gss.archive.reader import ArchiveCorruptError, read_partition
from gss.archive.status import archive_status
from gss.archive.storage import LocalStorage

HOUR = 3_600_000
T0 = int(datetime(2026, 3, 4, 10, 30, tzinfo=UTC).timestamp() * 1000)


def rec(offset: int, ts: int = T0, partition: int = 0, topic: str = "t") -> ArchivedRecord:
    return ArchivedRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp_ms=ts,
        timestamp_type="create",
        key=bytes([offset % 256, 0, 255]),
        value=b"v\x00" + str(offset).encode(),
        headers=(("h", b"\xff\x00"), ("empty", b""), ("none", None)),
    )


def test_data_paths_sort_by_offset_and_parse_back() -> None:
    hour = datetime(2026, 3, 4, 10, tzinfo=UTC)
    path = archive.data_path("gss.images.changelog", hour, 3, 7, 120)
    assert path == (
        "gss.images.changelog/date=2026-03-04/hour=10/partition=3/"
        "00000000000000000007-00000000000000000120.jsonl.gz"
    )
    place = archive.parse_data_path(path)
    assert (place.topic, place.hour, place.partition, place.first_offset, place.last_offset) == (
        "gss.images.changelog",
        hour,
        3,
        7,
        120,
    )
    assert place.path == path
    names = [archive.data_name(a, b) for a, b in [(100, 200), (9, 99), (1000, 1001)]]
    assert sorted(names) == [names[1], names[0], names[2]]
    assert archive.parse_data_name(names[0]) == (100, 200)
    assert archive.marker_path("t", 2, 99).endswith(
        "_commits/t/partition=2/00000000000000000099.json"
    )
    assert archive.parse_marker_name("00000000000000000099.json") == 99
    assert archive.parse_marker_name(archive.PENDING_NAME) is None
    for bad in ("", "a/b", "_x", ".x"):
        with pytest.raises(ValueError, match="cannot archive topic"):
            archive.check_topic(bad)
    with pytest.raises(ValueError, match="offset range"):
        archive.data_name(5, 4)


def test_record_round_trip_keeps_bytes_nulls_and_headers() -> None:
    records = [
        rec(0),
        ArchivedRecord("t", 0, 1, -1, "none", None, None, ()),
        ArchivedRecord("t", 0, 2, T0, "log_append", b"", bytes(range(256)), (("x", None),)),
    ]
    for r in records:
        assert layout.decode_record(layout.encode_record(r)) == r
    data = layout.encode_file(records)
    assert data == layout.encode_file(records), "the same records must give the same bytes"
    assert list(layout.decode_file(data)) == records
    line = gzip.decompress(data).splitlines()[1]
    assert line == (
        b'{"topic":"t","partition":0,"offset":1,"timestamp_ms":-1,"timestamp_type":"none",'
        b'"key":null,"value":null,"headers":[]}'
    )
    assert records[1].hour == datetime(1970, 1, 1, tzinfo=UTC)


def test_batch_writes_one_file_per_hour_named_by_its_own_offsets() -> None:
    records = [rec(10), rec(11, T0 - 2 * HOUR), rec(12), rec(13, T0 - 2 * HOUR), rec(14, T0 + HOUR)]
    files = batch_files(records, 1)
    assert [(f.path.split("/")[2], f.first_offset, f.last_offset, f.records) for f, _ in files] == [
        ("hour=08", 11, 13, 2),
        ("hour=10", 10, 12, 2),
        ("hour=11", 14, 14, 1),
    ]
    assert files[0][0].path.endswith("00000000000000000011-00000000000000000013.jsonl.gz")


def _write(storage: LocalStorage, batches: list[list[ArchivedRecord]]) -> None:
    previous = None
    for batch in batches:
        from_offset = batch[0].offset if previous is None else previous.last_offset + 1
        marker = write_batch(
            storage, batch, topic_id="id1", from_offset=from_offset, previous=previous
        )
        previous = marker.totals


def test_reader_reads_committed_batches_in_offset_order(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    batches = [
        [rec(0), rec(1, T0 - HOUR), rec(2)],
        [rec(3, T0 + HOUR), rec(4, T0 - HOUR)],
    ]
    _write(storage, batches)
    got = list(read_partition(storage, "t", 0))
    assert [r.offset for r in got] == [0, 1, 2, 3, 4]
    assert got == [r for b in batches for r in b]
    window = read_partition(storage, "t", 0, from_timestamp_ms=T0 - HOUR, until_timestamp_ms=T0)
    assert [r.offset for r in window] == [1, 4]
    assert [r.offset for r in read_partition(storage, "t", 0, from_offset=3)] == [3, 4]
    (status,) = archive_status(storage)
    assert (status.first_offset, status.last_offset, status.records, status.files) == (0, 4, 5, 4)
    assert (status.batches, status.pending) == (2, False)
    assert (status.min_timestamp_ms, status.max_timestamp_ms) == (T0 - HOUR, T0 + HOUR)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) // 2], "not valid gzip"),
        (lambda data: gzip.compress(gzip.decompress(data) + b"{not json\n"), "bad record line"),
        (
            lambda data: gzip.compress(b"\n".join(gzip.decompress(data).splitlines()[:1]) + b"\n"),
            "holds 1 records, its commit marker says 2",
        ),
    ],
)
def test_a_damaged_file_names_the_file_and_its_offsets(tmp_path: Path, damage, message) -> None:  # type: ignore[no-untyped-def]
    storage = LocalStorage(tmp_path)
    _write(storage, [[rec(5), rec(6)]])
    (marker,) = [commits.read_marker(storage, "t", 0, 6)]
    path = tmp_path / marker.files[0].path
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ArchiveCorruptError) as err:
        list(read_partition(storage, "t", 0))
    assert str(path) in str(err.value)
    assert "(offsets 5-6)" in str(err.value)
    assert message in str(err.value)


class FailingStorage(LocalStorage):
    """Fails (like a crash) after ``writes_left`` writes."""

    def __init__(self, root: Path, writes_left: int) -> None:
        super().__init__(root)
        self.writes_left = writes_left

    def write(self, rel: str, data: bytes) -> None:
        if self.writes_left <= 0:
            raise OSError("crash")
        self.writes_left -= 1
        super().write(rel, data)


def test_recover_removes_an_interrupted_batch_and_resumes_after_the_last_marker(
    tmp_path: Path,
) -> None:
    storage = LocalStorage(tmp_path)
    _write(storage, [[rec(0), rec(1)]])
    # Next batch: pending record and one of its two files written, then a crash.
    crashing = FailingStorage(tmp_path, writes_left=2)
    previous = commits.newest_marker(storage, "t", 0)
    assert previous is not None
    with pytest.raises(OSError, match="crash"):
        write_batch(
            crashing,
            [rec(2, T0 - HOUR), rec(3), rec(4)],
            topic_id="id1",
            from_offset=2,
            previous=previous.totals,
        )
    leftover = sorted(p.name for p in tmp_path.rglob("*.jsonl.gz"))
    assert "00000000000000000002-00000000000000000002.jsonl.gz" in leftover
    assert [r.offset for r in read_partition(storage, "t", 0)] == [0, 1], "readers see commits only"
    (status,) = archive_status(storage)
    assert status.pending
    recovered = commits.recover(storage, "t", 0)
    assert recovered.next_offset == 2
    assert recovered.removed_files == (
        "t/date=2026-03-04/hour=09/partition=0/00000000000000000002-00000000000000000002.jsonl.gz",
        "t/date=2026-03-04/hour=10/partition=0/00000000000000000003-00000000000000000004.jsonl.gz",
    )
    assert sorted(p.name for p in tmp_path.rglob("*.jsonl.gz")) == [
        "00000000000000000000-00000000000000000001.jsonl.gz"
    ]
    # Resuming with other batch boundaries leaves no overlap or gap.
    assert recovered.newest is not None
    write_batch(
        storage,
        [rec(2, T0 - HOUR)],
        topic_id="id1",
        from_offset=2,
        previous=recovered.newest.totals,
    )
    assert [r.offset for r in read_partition(storage, "t", 0)] == [0, 1, 2]
    # Recovering a partition whose pending batch was committed removes nothing.
    assert commits.recover(storage, "t", 0).removed_files == ()
    assert commits.recover(storage, "t", 1).newest is None


def test_markers_that_do_not_chain_are_reported(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    first = write_batch(storage, [rec(0)], topic_id="id1", from_offset=0, previous=None)
    write_batch(storage, [rec(5)], topic_id="id1", from_offset=3, previous=first.totals)
    with pytest.raises(ArchiveCorruptError, match="do not chain"):
        list(read_partition(storage, "t", 0))


def test_archive_settings_and_default_topics(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from contract.registry import DEFAULT_REGISTRY_PATH, load_registry
    from contract.settings import load_settings
    from gss.archive.archiver import archive_topics

    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "archive__s3_secret_key").write_text("s3cret")
    monkeypatch.setenv("GSS_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("GSS_ARCHIVE__ROOT", "s3://bucket/prefix")
    monkeypatch.setenv("GSS_ARCHIVE__MAX_FILE_RECORDS", "10")
    settings = load_settings()
    assert settings.archive.root == "s3://bucket/prefix"
    assert settings.archive.max_file_records == 10
    assert settings.archive.s3_secret_key == "s3cret"
    registry = load_registry(DEFAULT_REGISTRY_PATH)
    topics = archive_topics(settings.archive, settings.kafka, registry)
    changelogs = [f"gss.{g.name}.changelog" for g in registry]
    assert topics == [*changelogs, "content.images", "content.pins"]
    monkeypatch.setenv("GSS_ARCHIVE__TOPICS", '["a.b"]')
    reloaded = load_settings()
    assert archive_topics(reloaded.archive, reloaded.kafka, registry) == ["a.b"]
