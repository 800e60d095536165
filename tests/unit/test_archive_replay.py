"""gss.archive.replay without a broker: time and speed arguments, the merge order, the send
schedule, headers, and the refusals that need no Kafka."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from contract.headers import REPLAY_OF
from gss.archive.layout import ArchivedRecord
from gss.archive.replay import (
    ReplayError,
    ReplayPlan,
    merge_partitions,
    parse_speed,
    parse_time,
    prepare_target,
    replay_headers,
    schedule,
    send_offsets,
    source_partitions,
)
from gss.archive.storage import LocalStorage
from gss.cli import main

NOV_1 = 1_793_491_200_000  # 2026-11-01T00:00Z


def rec(partition: int, offset: int, ts: int, key: bytes | None = b"k") -> ArchivedRecord:
    return ArchivedRecord("src", partition, offset, ts, "create", key, b"v%d" % offset, ())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01T00:00Z", NOV_1),
        ("2026-11-01T00:00:00Z", NOV_1),
        ("2026-11-01", NOV_1),
        ("2026-11-01T00:00", NOV_1),  # no offset: UTC
        ("2026-11-01T01:00+01:00", NOV_1),
        ("2026-11-01T00:00:00.250Z", NOV_1 + 250),
        ("now", NOV_1),
        ("-90m", NOV_1 - 90 * 60_000),
        ("now-2h", NOV_1 - 2 * 3_600_000),
        ("-1d", NOV_1 - 86_400_000),
        ("-30s", NOV_1 - 30_000),
    ],
)
def test_parse_time(text: str, expected: int) -> None:
    assert parse_time(text, now_ms=NOV_1) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01", "2026-11-01T25:00Z", "-2w", "+1h"])
def test_parse_time_rejects_with_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"bad time .*expected ISO-8601 in UTC"):
        parse_time(text, now_ms=NOV_1)


def test_parse_speed() -> None:
    assert parse_speed("10x") == 10.0
    assert parse_speed("10") == 10.0
    assert parse_speed("0.5x") == 0.5
    assert parse_speed("MAX") is None
    for bad in ("0x", "-1x", "fast", "10xx", "inf", "nan", ""):
        with pytest.raises(ValueError, match="bad speed"):
            parse_speed(bad)


def test_merge_orders_by_timestamp_partition_offset_and_keeps_each_partition() -> None:
    p0 = [rec(0, 0, 100), rec(0, 1, 300), rec(0, 2, 200), rec(0, 3, 400)]  # offset 2 is late
    p1 = [rec(1, 0, 100), rec(1, 1, 250), rec(1, 2, 400)]
    p2: list[ArchivedRecord] = []
    merged = [(r.partition, r.offset) for r in merge_partitions([p0, p1, p2])]
    assert merged == [(0, 0), (1, 0), (1, 1), (0, 1), (0, 2), (0, 3), (1, 2)]
    # Each partition in offset order (so per-key order), whatever its timestamps.
    for p in (0, 1):
        assert [o for q, o in merged if q == p] == sorted(o for q, o in merged if q == p)
    # Deterministic: the input order of the partitions does not matter.
    assert [(r.partition, r.offset) for r in merge_partitions([p2, p1, p0])] == merged


def test_schedule_divides_gaps_by_speed_and_never_goes_back() -> None:
    records = [rec(0, 0, 10_000), rec(0, 1, 12_000), rec(0, 2, 11_000), rec(0, 3, 20_000)]
    assert schedule(records, 10.0) == pytest.approx([0.0, 0.2, 0.2, 1.0])
    assert schedule(records, 0.5) == pytest.approx([0.0, 4.0, 4.0, 20.0])
    assert schedule(records, None) == [0.0, 0.0, 0.0, 0.0]
    assert schedule([], 10.0) == []
    # Records without a timestamp go with their predecessor; the first timed one anchors.
    assert send_offsets([-1, 5_000, -1, 6_000], 1.0) == pytest.approx([0.0, 0.0, 0.0, 1.0])


def test_replay_headers_keep_the_originals_and_name_the_source() -> None:
    record = ArchivedRecord(
        "src", 3, 1207, 1, "create", None, None, (("a", b"1"), ("none", None), ("a", b"2"))
    )
    assert replay_headers(record) == [
        ("a", b"1"),
        ("none", None),
        ("a", b"2"),
        (REPLAY_OF, b"src:3:1207"),
    ]


def test_replay_into_the_archived_topic_is_refused() -> None:
    admin: Any = None  # never reached
    with pytest.raises(ReplayError, match=r"refusing to replay 'src' into itself.*--allow-same"):
        prepare_target(admin, ReplayPlan("src", "src"), 4, create=True)


def test_a_topic_not_in_the_archive_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        ReplayError, match=r"topic 'nope' is not in the archive .*archived topics: none"
    ):
        source_partitions(LocalStorage(tmp_path), "nope")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "yesterday"], "Invalid value for --from: bad time 'yesterday'"),
        (["--to", "2026-11-01T99:00Z"], "Invalid value for --to: bad time"),
        (["--speed", "fast"], "Invalid value for --speed: bad speed 'fast'"),
        (
            ["--from", "2026-11-02", "--to", "2026-11-01"],
            "--to (2026-11-01T00:00:00.000Z) must be after",
        ),
    ],
)
def test_cli_rejects_bad_arguments(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["replay", "src", "--into", "dst", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
