"""Partition layout, dates, the atomic publish, locks and the DDL in manifests."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from contract.errors import InvalidArgumentError
from contract.snapshot import layout
from contract.v1 import signals_pb2
from gss.snapshot import manifest
from gss.snapshot.convert import transcoder
from gss.snapshot.exporter import check_date

NOW = datetime(2026, 11, 22, 0, 30, tzinfo=UTC)


def test_default_date_is_yesterday_utc() -> None:
    """Shortly after midnight UTC the default partition is the day that just ended."""
    assert layout.yesterday_utc(NOW) == date(2026, 11, 21)


@pytest.mark.parametrize("text", ["2026-13-01", "2026-1-1", "yesterday", "2026-11-21T00:00"])
def test_bad_dates_say_what_is_expected(text: str) -> None:
    """A malformed date is refused with the expected form in the message."""
    with pytest.raises(InvalidArgumentError, match="YYYY-MM-DD"):
        layout.parse_date(text)


def test_future_and_stale_dates_are_refused() -> None:
    """dt in the future, or more than late_days back, is refused unless allow_late."""
    check_date(date(2026, 11, 21), now=NOW, late_days=2, allow_late=False)
    check_date(date(2026, 11, 22), now=NOW, late_days=2, allow_late=False)
    with pytest.raises(InvalidArgumentError, match="future"):
        check_date(date(2026, 11, 23), now=NOW, late_days=2, allow_late=False)
    with pytest.raises(InvalidArgumentError, match="--allow-late"):
        check_date(date(2026, 11, 1), now=NOW, late_days=2, allow_late=False)
    check_date(date(2026, 11, 1), now=NOW, late_days=2, allow_late=True)


def _partition(path: Path, content: str) -> Path:
    path.mkdir(parents=True)
    (path / "part-00000.parquet").write_text(content)
    (path / layout.SUCCESS).write_text("")
    return path


def test_publish_replaces_an_existing_partition_in_one_step(tmp_path: Path) -> None:
    """The new partition takes the old one's place; the old one is gone, nothing is left over."""
    final = _partition(tmp_path / "t" / "dt=2026-11-21", "old")
    staging = _partition(tmp_path / "t" / "_staging-dt=2026-11-21-x", "new")
    layout.publish(staging, final)
    assert (final / "part-00000.parquet").read_text() == "new"
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["dt=2026-11-21"]


def test_publish_without_exchange_support_still_never_shows_a_partial_partition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where renameat2 is missing, the old partition is moved aside first, then replaced."""
    monkeypatch.setattr(layout, "_exchange", lambda a, b: False)
    final = _partition(tmp_path / "t" / "dt=2026-11-21", "old")
    staging = _partition(tmp_path / "t" / "_staging-dt=2026-11-21-x", "new")
    layout.publish(staging, final)
    assert (final / "part-00000.parquet").read_text() == "new"
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["dt=2026-11-21"]


def test_stale_staging_is_removed_and_complete_partitions_listed(tmp_path: Path) -> None:
    """Staging left by a killed export is hidden from listings and removed by the next run."""
    table = tmp_path / "t"
    _partition(table / "dt=2026-11-20", "a")
    (table / "dt=2026-11-21").mkdir()  # no _SUCCESS: incomplete
    _partition(table / "_staging-dt=2026-11-22-abc", "b")
    assert [dt for dt, _ in layout.complete_partitions(table)] == [date(2026, 11, 20)]
    assert layout.remove_stale(table) == 1
    assert not (table / "_staging-dt=2026-11-22-abc").exists()


def test_a_second_export_of_the_same_galaxy_is_refused_while_one_runs(tmp_path: Path) -> None:
    """The galaxy lock is exclusive across processes and freed when its holder dies."""
    lock = tmp_path / "images" / layout.LOCK_NAME
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "locked"
        with (
            pytest.raises(InvalidArgumentError, match="another export"),
            layout.exclusive_lock(lock, "galaxy images"),
        ):
            pass
    finally:
        holder.kill()
        holder.wait(timeout=10)
    with layout.exclusive_lock(lock, "galaxy images"):
        assert lock.exists()


def test_ddl_declares_dt_as_a_string_partition() -> None:
    """Hive and Trino DDL register dt as STRING/VARCHAR; DuckDB is told to keep it a string."""
    tc = transcoder(signals_pb2.Embedding)
    ddl = manifest.ddl(
        tc.schema,
        "images",
        "embedding",
        1,
        date(2026, 11, 21),
        manifest.DdlTarget("gss", "hive", "s3://bucket/snap"),
        "gss.v1.Embedding",
        "gss.thrift.v1.EmbeddingSnapshotRow",
    )
    assert "PARTITIONED BY (`dt` STRING)" in ddl["hive"]
    assert "STORED AS PARQUET" in ddl["hive"]
    assert "LOCATION 's3://bucket/snap/images/embedding_v1'" in ddl["hive"]
    assert "`value` STRUCT<`values`:ARRAY<DOUBLE>>" in ddl["hive"]
    assert "ADD IF NOT EXISTS PARTITION (`dt`='2026-11-21')" in ddl["hive"]
    assert "partitioned_by = ARRAY['dt']" in ddl["trino"]
    assert '"dt" VARCHAR' in ddl["trino"]
    assert "sync_partition_metadata" in ddl["trino"]
    assert "hive_types = {'dt': VARCHAR}" in ddl["duckdb"]
    assert "/dt=*/part-*.parquet" in ddl["duckdb"]


def test_sha256_of_matches_hashlib(tmp_path: Path) -> None:
    """Checksums are plain SHA-256 of the file bytes (so `sha256sum` agrees)."""
    import hashlib

    path = tmp_path / "f"
    data = os.urandom(3 * manifest.CHUNK + 5)
    path.write_bytes(data)
    assert manifest.sha256_of(path) == hashlib.sha256(data).hexdigest()
