"""What the unified source reads (docs/history.md, "Unified source"): the committed files of
each partition batch by batch, where Kafka continues, and what the first Python step drops."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click
import pytest

from compute.flink.history import TopicPlan, manifest_groups, plan_topic
from compute.flink.operators import KeepFrom
from contract.archive import archive_root, archived_partitions, partition_history
from contract.errors import InvalidArgumentError
from contract.settings import ArchiveSettings
from gss.archive.archiver import write_batch
from gss.archive.layout import ArchivedRecord
from gss.archive.storage import LocalStorage
from gss.cli.compute import history_options

HOUR = 3_600_000
T0 = int(datetime(2026, 11, 1, 10, 30, tzinfo=UTC).timestamp() * 1000)


def rec(offset: int, ts: int, partition: int = 0) -> ArchivedRecord:
    return ArchivedRecord("t", partition, offset, ts, "create", b"k", b"v%d" % offset)


def archive(tmp_path: Path) -> Path:
    """Partition 0: three batches (0-4, 5-9 with a late record at 7 in an earlier hour, 10-14
    an hour later); partition 1: one batch (0-2); partition 2: nothing."""
    storage = LocalStorage(tmp_path)
    batches = [
        [rec(o, T0 + o) for o in range(5)],
        [rec(o, T0 - HOUR if o == 7 else T0 + o) for o in range(5, 10)],
        [rec(o, T0 + HOUR + o) for o in range(10, 15)],
    ]
    previous = None
    for n, batch in enumerate(batches):
        marker = write_batch(storage, batch, topic_id="id", from_offset=n * 5, previous=previous)
        previous = marker.totals
    write_batch(
        storage, [rec(o, T0, 1) for o in range(3)], topic_id="id", from_offset=0, previous=None
    )
    return tmp_path


def test_partition_history_lists_committed_batches_in_offset_order(tmp_path: Path) -> None:
    root = archive_root(ArchiveSettings(root=str(archive(tmp_path))))
    assert archived_partitions(root, "t") == [0, 1]
    history = partition_history(root, "t", 0)
    assert history is not None
    assert history.last_offset == 14
    assert history.topic_id == "id"
    offsets = [[(f.first_offset, f.last_offset) for f in b] for b in history.batches]
    # The late record's file (7-7, an earlier hour) stays in its batch, merged by offset.
    assert offsets == [[(0, 4)], [(5, 9), (7, 7)], [(10, 14)]]
    assert partition_history(root, "t", 2) is None


def test_partition_history_skips_files_before_the_start(tmp_path: Path) -> None:
    root = archive_root(ArchiveSettings(root=str(archive(tmp_path))))
    by_time = partition_history(root, "t", 0, from_timestamp_ms=T0 + 6)
    assert by_time is not None
    assert [[f.first_offset for f in b] for b in by_time.batches] == [[5], [10]]
    by_offset = partition_history(root, "t", 0, from_offset=10)
    assert by_offset is not None
    assert [[f.first_offset for f in b] for b in by_offset.batches] == [[10]]
    assert by_offset.last_offset == 14


def test_plan_continues_in_kafka_after_the_last_archived_offset(tmp_path: Path) -> None:
    root = archive_root(ArchiveSettings(root=str(archive(tmp_path))))
    plan = plan_topic(
        root,
        "t",
        [0, 1, 2],
        from_timestamp_ms=None,
        from_offsets={},
        kafka_start={0: 0, 1: 0, 2: 4},
    )
    # Archived partitions: Kafka from last + 1; partition 2 (no archive): Kafka's start.
    assert plan.kafka_offsets == {0: 15, 1: 3, 2: 4}
    assert sorted(plan.manifests) == [0, 1]
    assert len(plan.manifests[0]) == 3
    assert len(plan.manifests[0][1]) == 2
    assert plan.manifests[0][0][0].startswith(tmp_path.resolve().as_uri())
    assert plan.manifests[0][0][0].endswith("00000000000000000000-00000000000000000004.jsonl.gz")
    # Kafka's own start is later than the archive's end (all archived records are before T).
    later = plan_topic(
        root, "t", [0], from_timestamp_ms=T0 + 2 * HOUR, from_offsets={}, kafka_start={0: 20}
    )
    assert later.kafka_offsets == {0: 20, 1: 3}
    assert later.manifests == {}  # no file holds a record at or after T


def test_an_archive_of_a_recreated_topic_is_refused(tmp_path: Path) -> None:
    """The archive was written from topic id "id"; the broker's topic now has another id
    (deleted and created again): the plan says so instead of continuing at stale offsets."""
    root = archive_root(ArchiveSettings(root=str(archive(tmp_path))))
    same = plan_topic(
        root, "t", [0, 1], from_timestamp_ms=None, from_offsets={}, kafka_start={}, topic_id="id"
    )
    assert same.kafka_offsets == {0: 15, 1: 3}
    with pytest.raises(InvalidArgumentError, match=r"topic id id, but t is now topic id new"):
        plan_topic(
            root, "t", [0], from_timestamp_ms=None, from_offsets={}, kafka_start={}, topic_id="new"
        )


def test_manifests_deal_partitions_into_one_group_per_reader(tmp_path: Path) -> None:
    """A manifest line per batch, ``partition<TAB>files``; partitions dealt round-robin into
    at most ``splits`` groups, each partition's batches kept together and in order."""
    plan = TopicPlan(
        "t",
        manifests={
            0: [["a0"], ["b0", "c0"]],
            1: [["a1"]],
            2: [["a2"], ["b2"]],
        },
    )
    assert manifest_groups(plan, 1) == ["0\ta0\n0\tb0\tc0\n1\ta1\n2\ta2\n2\tb2\n"]
    assert manifest_groups(plan, 2) == ["0\ta0\n0\tb0\tc0\n2\ta2\n2\tb2\n", "1\ta1\n"]
    # Never more groups than partitions (an empty split would end its reader at once).
    assert len(manifest_groups(plan, 8)) == 3
    assert manifest_groups(TopicPlan("t"), 4) == []


def test_keep_drops_records_before_the_start_and_tombstones() -> None:
    keep = KeepFrom(T0, {0: 5})
    assert keep((0, 5, T0, b"k", b"v"))
    assert not keep((0, 4, T0, b"k", b"v"))  # before the partition's start offset
    assert not keep((1, 0, T0 - 1, b"k", b"v"))  # before the start time
    assert keep((1, 0, T0, None, b"v"))
    assert not keep((1, 0, T0, b"k", None))


def test_cli_history_options() -> None:
    out = history_options("2026-11-01T00:00Z", "content.images:0:12,content.images:1:7,a.b:3:0", 50)
    assert out["history_from"] == datetime(2026, 11, 1, tzinfo=UTC)
    assert out["history_positions"] == {"content.images": {0: 12, 1: 7}, "a.b": {3: 0}}
    assert out["history_rate_per_second"] == 50
    assert history_options(None, None, None) == {}
    with pytest.raises(click.BadParameter):
        history_options(None, "content.images:x:1", None)


def test_connector_jar_is_rebuilt_when_stale_and_needs_javac(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from compute.flink import connectors
    from contract.errors import UnavailableError

    jars = tmp_path / "jars"
    jars.mkdir()
    (jars / connectors.JAR_NAME).write_bytes(b"not a jar")  # stale: no matching hash
    monkeypatch.setattr(connectors.shutil, "which", lambda name: None)
    with pytest.raises(UnavailableError, match="openjdk-17-jdk-headless"):
        connectors.ensure_connectors(jars)


def test_history_is_read_only_when_asked() -> None:
    from contract.settings import load_settings

    assert not load_settings().compute.reads_history
    assert load_settings(compute={"history_from": "2026-11-01T00:00Z"}).compute.reads_history
    assert load_settings(compute={"history_positions": {"t": {0: 3}}}).compute.reads_history
