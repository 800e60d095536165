"""Safe writes: tombstones follow newer-wins and hide the value on every read path; admin
overrides bypass the ordering explicitly; far-future and out-of-range event times are refused."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contract.errors import InvalidArgumentError
from contract.registry import Registry
from contract.settings import KafkaSettings
from contract.snapshot import layout
from contract.v1 import envelope_pb2, signal_service_pb2, signals_pb2
from gss import reads
from gss.cli.serving import records_from_json
from gss.kafka.outbox import EventBuilder
from gss.service import galaxy_message
from gss.writes import check_event_times, to_writes
from store import records
from store.db import SignalStore
from tests.helpers import dhash_record, image_id


def tombstone(n: int, *, seconds: float) -> envelope_pb2.SignalRecord:
    record = dhash_record(n, 0, seconds=seconds, producer="deleter")
    record.ClearField("value")
    record.tombstone = True
    return record


def lookup_status(store: SignalStore, registry: Registry, n: int) -> int:
    galaxy = registry.galaxy("images")
    body, _ = reads.lookup(store, galaxy, [image_id(n)], [galaxy.signal("dhash", 1)])
    (row,) = signal_service_pb2.GetSignalsResponse.FromString(body).entities
    return row.cells[0].status


FOUND = signal_service_pb2.CELL_STATUS_FOUND
NOT_FOUND = signal_service_pb2.CELL_STATUS_NOT_FOUND


def test_tombstone_follows_newer_wins_and_hides_the_value(
    store: SignalStore, registry: Registry
) -> None:
    """An older tombstone is skipped; a newer one hides the value (NOT_FOUND, no envelope);
    a write older than the tombstone stays hidden; a newer write brings a value back."""
    assert store.apply(to_writes(registry, [dhash_record(1, 10, seconds=5)])).applied == [True]
    assert store.apply(to_writes(registry, [tombstone(1, seconds=4)])).applied == [False]
    assert lookup_status(store, registry, 1) == FOUND
    assert store.apply(to_writes(registry, [tombstone(1, seconds=6)])).applied == [True]
    assert lookup_status(store, registry, 1) == NOT_FOUND
    galaxy = registry.galaxy("images")
    body, counts = reads.lookup(store, galaxy, [image_id(1)], [galaxy.signal("dhash", 1)])
    cell = signal_service_pb2.GetSignalsResponse.FromString(body).entities[0].cells[0]
    assert not cell.HasField("envelope")
    assert (counts.found, counts.not_found) == (0, 1)
    assert store.apply(to_writes(registry, [tombstone(1, seconds=6)])).applied == [False]
    assert store.apply(to_writes(registry, [dhash_record(1, 20, seconds=5.5)])).applied == [False]
    assert lookup_status(store, registry, 1) == NOT_FOUND
    assert store.apply(to_writes(registry, [dhash_record(1, 30, seconds=7)])).applied == [True]
    assert lookup_status(store, registry, 1) == FOUND


def test_tombstone_is_hidden_on_the_ttl_path_too(store: SignalStore, registry: Registry) -> None:
    """Signals with a TTL take the slow lookup path: a tombstone is NOT_FOUND there as well."""
    record = envelope_pb2.SignalRecord(galaxy="pins", entity_id="5")
    record.signal.name, record.signal.version = "save_count_1h", 1
    record.envelope.event_time.FromDatetime(datetime.now(UTC))
    record.tombstone = True
    assert store.apply(to_writes(registry, [record])).applied == [True]
    galaxy = registry.galaxy("pins")
    body, counts = reads.lookup(store, galaxy, ["5"], [galaxy.signal("save_count_1h", 1)])
    assert (
        signal_service_pb2.GetSignalsResponse.FromString(body).entities[0].cells[0].status
        == NOT_FOUND
    )
    assert (counts.found, counts.not_found, counts.expired) == (0, 1, 0)


def test_tombstone_with_a_value_is_refused(registry: Registry) -> None:
    """A tombstone carries no value: one that does is INVALID_ARGUMENT naming the record."""
    record = dhash_record(1, 10)
    record.tombstone = True
    with pytest.raises(InvalidArgumentError, match=r"records\[0\].*tombstone"):
        to_writes(registry, [record])


def test_deletion_event_says_deleted_and_carries_no_value(registry: Registry) -> None:
    """The availability event of a tombstone has deleted set, no value and no value hash, and
    an id different from the value's."""
    builder = EventBuilder(registry, KafkaSettings())
    (value_write,) = to_writes(registry, [dhash_record(1, 10, seconds=5)])
    (delete_write,) = to_writes(registry, [tombstone(1, seconds=5)])
    deleted = builder.event(delete_write)
    assert deleted.deleted
    assert not deleted.HasField("value")
    assert deleted.value_hash == b""
    assert deleted.producer == "deleter"
    assert deleted.event_id != builder.event(value_write).event_id
    assert not builder.event(value_write).deleted


def test_override_bypasses_newer_wins_only_when_asked(
    store: SignalStore, registry: Registry
) -> None:
    """A value frozen far in the future refuses every normal correction; an override write
    replaces it, after which normal ordering applies again from the corrected value."""
    frozen = dhash_record(1, 666, seconds=10**9)
    assert store.apply(to_writes(registry, [frozen])).applied == [True]
    assert store.apply(to_writes(registry, [dhash_record(1, 1, seconds=10)])).applied == [False]
    fix = dhash_record(1, 2, seconds=10)
    fix.override_ordering = True
    (write,) = to_writes(registry, [fix])
    assert write.override
    assert store.apply([write]).applied == [True]
    stored = store.get_many("images", [write.key])[0]
    assert stored is not None
    assert signals_pb2.DHash.FromString(records.StoredRecord.decode(stored).value.value).hash == 2
    assert store.apply(to_writes(registry, [dhash_record(1, 3, seconds=11)])).applied == [True]


def test_event_time_bounds(registry: Registry) -> None:
    """Far-future event times are refused at the edge; timestamps outside protobuf's range
    (which would overflow the stored header) are refused by the one validation."""
    now = 1_800_000_000 * 1_000_000
    near = dhash_record(1, 1)
    near.envelope.event_time.FromMicroseconds(now + 299 * 1_000_000)
    far = dhash_record(2, 1)
    far.envelope.event_time.FromMicroseconds(now + 301 * 1_000_000)
    check_event_times([near], max_future_seconds=300, now=now)
    with pytest.raises(
        InvalidArgumentError, match=r"records\[1\]: envelope.event_time .* in the future"
    ):
        check_event_times([near, far], max_future_seconds=300, now=now)
    huge = dhash_record(3, 1)
    huge.envelope.event_time.seconds = 2**62
    with pytest.raises(InvalidArgumentError, match=r"records\[0\].*not a valid timestamp"):
        to_writes(registry, [huge])
    with pytest.raises(InvalidArgumentError, match="in the future"):
        check_event_times([huge], max_future_seconds=300, now=now)


@pytest.mark.integration
def test_snapshot_leaves_deleted_values_out(
    tmp_path: Path, store: SignalStore, registry: Registry
) -> None:
    """A deleted value is absent from the export (neither a row nor a reject); others stay."""
    from gss.snapshot import export_snapshot
    from tests.snapshot_fixtures import export_settings, read_partition

    store.apply(to_writes(registry, [dhash_record(n, 100 + n, seconds=1) for n in range(1, 6)]))
    store.apply(to_writes(registry, [tombstone(2, seconds=2), tombstone(4, seconds=2)]))
    dt = layout.yesterday_utc()
    result = export_snapshot(
        registry,
        export_settings(tmp_path / "out", workers=1),
        store=store,
        dt=dt,
        galaxies=["images"],
        min_rows_for_workers=0,
    )
    table = read_partition(tmp_path / "out" / "images" / "dhash_v1" / f"dt={dt}")
    assert table.column("entity_id").to_pylist() == [image_id(n) for n in (1, 3, 5)]
    assert result.rejected_rows == 0
    assert not list((tmp_path / "out").rglob("_rejects*"))


def test_cli_json_records_carry_tombstones_and_overrides(registry: Registry) -> None:
    """`gss put` reads deletes ("tombstone": true, no value) and admin corrections."""
    lines = io.StringIO(
        '{"galaxy": "pins", "entity_id": 5, "signal": "save_count_1h@1", "tombstone": true}\n'
        '{"galaxy": "pins", "entity_id": 6, "signal": "save_count_1h@1", "value": {"count": "2"},'
        ' "override_ordering": true}\n'
    )
    galaxies = {g.name: galaxy_message(g) for g in registry}
    delete, fix = records_from_json(lines, galaxies)
    assert (delete.tombstone, delete.HasField("value"), delete.signal.version) == (True, False, 1)
    assert (fix.tombstone, fix.override_ordering) == (False, True)
