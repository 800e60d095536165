"""The one write path: conditional upsert by (event time, changelog offset), atomic batches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from contract.registry import Registry
from contract.v1 import envelope_pb2, signals_pb2
from gss.writes import to_writes
from store import records
from store.db import SignalStore, Write
from tests.helpers import dhash_record


def stored_hash(store: SignalStore, registry: Registry, n: int) -> int | None:
    writes = to_writes(registry, [dhash_record(n, 0)])
    value = store.get_many("images", [writes[0].key])[0]
    if value is None:
        return None
    return signals_pb2.DHash.FromString(records.StoredRecord.decode(value).value.value).hash


def test_newer_event_time_replaces_and_older_is_skipped(
    store: SignalStore, registry: Registry
) -> None:
    """A write applies only if its event time is later than the stored one's."""
    assert store.apply(to_writes(registry, [dhash_record(1, 10, seconds=5)])).applied == [True]
    assert store.apply(to_writes(registry, [dhash_record(1, 20, seconds=4)])).applied == [False]
    assert stored_hash(store, registry, 1) == 10
    assert store.apply(to_writes(registry, [dhash_record(1, 30, seconds=6)])).applied == [True]
    assert stored_hash(store, registry, 1) == 30


def test_replaying_the_same_record_is_a_no_op(store: SignalStore, registry: Registry) -> None:
    """Equal order (same event time, no offset) is not newer: retries and replays are skipped."""
    batch = [dhash_record(2, 7, seconds=1)]
    assert store.apply(to_writes(registry, batch)).applied == [True]
    assert store.apply(to_writes(registry, batch)).applied == [False]


def test_changelog_offset_breaks_event_time_ties(store: SignalStore, registry: Registry) -> None:
    """At equal event times, the record from the later changelog offset wins."""

    def at(offset: int, value: int) -> list[Write]:
        position = envelope_pb2.ChangelogPosition(
            topic="gss.images.changelog", partition=0, offset=offset
        )
        return to_writes(registry, [dhash_record(3, value)], positions=[position])

    assert store.apply(at(10, 1)).applied == [True]
    assert store.apply(at(9, 2)).applied == [False]
    assert store.apply(at(10, 3)).applied == [False]
    assert store.apply(at(11, 4)).applied == [True]
    assert stored_hash(store, registry, 3) == 4


def test_within_a_batch_the_newest_write_to_a_key_wins(
    store: SignalStore, registry: Registry
) -> None:
    """Several writes to one key in a batch: only the newest is stored and reported applied."""
    batch = [
        dhash_record(4, 1, seconds=1),
        dhash_record(4, 3, seconds=3),
        dhash_record(4, 2, seconds=2),
    ]
    assert store.apply(to_writes(registry, batch)).applied == [False, True, False]
    assert stored_hash(store, registry, 4) == 3


def test_meta_entries_commit_with_the_values(store: SignalStore, registry: Registry) -> None:
    """Offsets (meta) and derived entries (outbox) land in the same batch as the winning values."""
    batch = to_writes(registry, [dhash_record(5, 1, seconds=1), dhash_record(6, 1, seconds=1)])
    store.apply(batch[:1])  # image 5 already has this value: it will be skipped below
    result = store.apply(
        batch,
        meta={b"offset/images/0": b"42"},
        derive_meta=lambda won: [(b"outbox/" + w.key, b"event") for w in won],
    )
    assert result.applied == [False, True]
    assert store.get_meta(b"offset/images/0") == b"42"
    assert [k for k, _ in store.scan_meta(b"outbox/")] == [b"outbox/" + batch[1].key]


def test_data_survives_close_and_reopen(tmp_path: Path, registry: Registry) -> None:
    """Applied values are on disk: a reopened store serves them."""
    path = tmp_path / "db"
    with SignalStore(path, list(registry.galaxies)) as store:
        store.apply(to_writes(registry, [dhash_record(7, 99, seconds=1)]))
    with SignalStore(path, list(registry.galaxies)) as store:
        assert stored_hash(store, registry, 7) == 99


def test_an_equal_value_at_an_equal_event_time_is_skipped(
    store: SignalStore, registry: Registry
) -> None:
    """Same event time and value bytes, a later changelog offset, another producer and the
    backfill mark: no new value (the stored record keeps its position) and nothing derived."""

    def at(offset: int, value: int, *, backfill: bool = False) -> list[Write]:
        record = dhash_record(4, value, producer="flink:gss-backfill" if backfill else "live")
        record.envelope.backfill = backfill
        position = envelope_pb2.ChangelogPosition(
            topic="gss.images.changelog", partition=0, offset=offset
        )
        return to_writes(registry, [record], positions=[position])

    derived: list[int] = []

    def derive(winners: Sequence[Write]) -> list[tuple[bytes, bytes]]:
        derived.append(len(winners))
        return []

    assert store.apply(at(10, 1), derive_meta=derive).applied == [True]
    assert store.apply(at(20, 1, backfill=True), derive_meta=derive).applied == [False]
    key = at(10, 1)[0].key
    kept = records.StoredRecord.decode(store.get_many("images", [key])[0] or b"")
    assert kept.source_offset == 10
    assert not kept.envelope.backfill
    # Another value at the same event time and a later offset still wins (and is announced).
    assert store.apply(at(30, 2, backfill=True), derive_meta=derive).applied == [True]
    assert derived == [1, 0, 1]
    # In one batch: a repeat of the pending value is skipped; a batch that ends where the
    # store already is changes nothing.
    batch = [*at(40, 5), *at(41, 5)]
    assert store.apply(batch).applied == [True, False]
    assert store.apply([*at(50, 6), *at(51, 5)]).applied == [False, False]
    assert stored_hash(store, registry, 4) == 5
