"""Comparing two stores key by key (store/compare.py, gss/rebuild.py's verify): write times
aside, any difference is found and named."""

from __future__ import annotations

from pathlib import Path

from helpers import count_record, dhash_record

from contract.registry import Registry
from contract.settings import KafkaSettings
from contract.v1 import envelope_pb2
from gss.archive.layout import ArchivedRecord
from gss.kafka.meta import encode_offset, offset_key
from gss.rebuild import archived_message, store_is_empty, verify_stores
from gss.writes import to_write
from store import compare
from store.db import SignalStore, Write

TOPIC = "gss.images.changelog"


def write(
    registry: Registry,
    record: envelope_pb2.SignalRecord,
    *,
    offset: int,
    write_time_us: int = 1,
    partition: int = 0,
) -> Write:
    position = envelope_pb2.ChangelogPosition(topic=TOPIC, partition=partition, offset=offset)
    return to_write(registry, record, write_time_us=write_time_us, position=position)


def test_equal_but_for_write_time(tmp_path: Path, registry: Registry) -> None:
    galaxies = list(registry.galaxies)
    with SignalStore(tmp_path / "a", galaxies) as a, SignalStore(tmp_path / "b", galaxies) as b:
        assert store_is_empty(a)
        a.apply([write(registry, dhash_record(i, i), offset=i, write_time_us=10) for i in range(5)])
        b.apply([write(registry, dhash_record(i, i), offset=i, write_time_us=99) for i in range(5)])
        result = compare.compare_stores(a, b, galaxies)
        assert result.equal, result.differences
        assert result.keys["images"] == 5
        assert not store_is_empty(a)


def test_each_kind_of_difference_is_named(tmp_path: Path, registry: Registry) -> None:
    galaxies = list(registry.galaxies)
    with SignalStore(tmp_path / "a", galaxies) as a, SignalStore(tmp_path / "b", galaxies) as b:
        a.apply(
            [
                write(registry, dhash_record(1, 1), offset=1),  # same in both
                write(registry, dhash_record(2, 2), offset=2),  # value differs
                write(registry, dhash_record(3, 3), offset=3),  # event time differs
                write(registry, dhash_record(4, 4), offset=4),  # position differs
                write(registry, dhash_record(5, 5), offset=5),  # only in a
                write(registry, dhash_record(7, 7, producer="x"), offset=7),  # envelope differs
            ]
        )
        b.apply(
            [
                write(registry, dhash_record(1, 1), offset=1, write_time_us=5),
                write(registry, dhash_record(2, 20), offset=2),
                write(registry, dhash_record(3, 3, seconds=1), offset=3),
                write(registry, dhash_record(4, 4), offset=4, partition=1),
                write(registry, dhash_record(6, 6), offset=6),  # only in b
                write(registry, dhash_record(7, 7, producer="y"), offset=7),
            ]
        )
        result = compare.compare_stores(a, b, galaxies)
        assert not result.equal
        assert result.differing == 6
        assert [d.what for d in result.differences] == [
            compare.VALUE,
            compare.EVENT_TIME,
            compare.POSITION,
            compare.ONLY_IN_A,
            compare.ONLY_IN_B,
            compare.ENVELOPE,
        ]
        assert result.keys == {g: (7 if g == "images" else 0) for g in galaxies}
        capped = compare.compare_stores(a, b, galaxies, max_differences=2)
        assert capped.differing == 6
        assert len(capped.differences) == 2
        assert "value" in str(capped.differences[0])


def test_verify_compares_offsets_and_every_galaxy(tmp_path: Path, registry: Registry) -> None:
    galaxies = list(registry.galaxies)
    kafka = KafkaSettings()
    with SignalStore(tmp_path / "a", galaxies) as a, SignalStore(tmp_path / "b", galaxies) as b:
        pins = count_record(3, 9)
        for store in (a, b):
            store.apply(
                [to_write(registry, pins, write_time_us=1)],
                meta={offset_key(TOPIC, 0): encode_offset(8)},
            )
        assert verify_stores(a, b, registry, kafka).equal
        b.apply(
            [],
            meta={offset_key(TOPIC, 0): encode_offset(9), offset_key(TOPIC, 1): encode_offset(1)},
        )
        verification = verify_stores(a, b, registry, kafka)
        assert verification.values.equal
        assert not verification.equal
        assert verification.offset_differences == [
            f"{TOPIC}:0: next offset 8 != 9",
            f"{TOPIC}:1: next offset None != 1",
        ]


def test_an_archived_record_reads_as_the_message_it_was() -> None:
    record = ArchivedRecord(
        topic=TOPIC,
        partition=2,
        offset=17,
        timestamp_ms=1_700_000_000_000,
        timestamp_type="log_append",
        key=b"k",
        value=None,
        headers=(("a", b"1"), ("b", None)),
    )
    msg = archived_message(record)
    assert (msg.topic(), msg.partition(), msg.offset()) == (TOPIC, 2, 17)
    assert msg.timestamp() == (2, 1_700_000_000_000)
    assert (msg.key(), msg.value(), msg.error()) == (b"k", None, None)
    assert msg.headers() == [("a", b"1"), ("b", None)]


def test_verify_command_reports_the_first_differences(tmp_path: Path, registry: Registry) -> None:
    from click.testing import CliRunner

    from gss.cli import main

    galaxies = list(registry.galaxies)
    with SignalStore(tmp_path / "a", galaxies) as a, SignalStore(tmp_path / "b", galaxies) as b:
        a.apply([write(registry, dhash_record(i, i), offset=i) for i in range(4)])
        b.apply([write(registry, dhash_record(i, i + (i == 2)), offset=i) for i in range(4)])
    runner = CliRunner()
    result = runner.invoke(main, ["store", "verify", str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code == 1, result.output
    assert "DIFFERENT: 1 keys differ" in result.output
    assert ": value (" in result.output
    same = runner.invoke(main, ["store", "verify", str(tmp_path / "a"), str(tmp_path / "a")])
    assert same.exit_code == 1  # one store cannot be opened twice: said, not crashed
    assert "cannot open the store" in same.output
    missing = runner.invoke(main, ["store", "verify", str(tmp_path / "a"), str(tmp_path / "x")])
    assert missing.exit_code == 1
    assert "is not a store" in missing.output
