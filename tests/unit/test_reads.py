"""GetSignals answers spliced from stored bytes equal the protobuf a decoder expects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contract.registry import Registry
from contract.v1 import signal_service_pb2, signals_pb2
from gss import reads
from gss.writes import to_writes
from store.db import SignalStore
from tests.helpers import count_record, dhash_record, image_id


def test_spliced_response_decodes_to_request_order(store: SignalStore, registry: Registry) -> None:
    """Rows follow entity_ids, cells follow signals; found cells carry value, version, envelope."""
    store.apply(to_writes(registry, [dhash_record(1, 11), dhash_record(3, 33)]))
    images = registry.galaxy("images")
    specs = [images.signal("dhash"), images.signal("dominant_colors")]
    body, counts = reads.lookup(store, images, [image_id(3), image_id(2), image_id(1)], specs)
    response = signal_service_pb2.GetSignalsResponse.FromString(body)
    assert counts == reads.LookupCounts(found=2, not_found=4, expired=0)
    statuses = [[cell.status for cell in row.cells] for row in response.entities]
    found, missing = signal_service_pb2.CELL_STATUS_FOUND, signal_service_pb2.CELL_STATUS_NOT_FOUND
    assert statuses == [[found, missing], [missing, missing], [found, missing]]
    first = response.entities[0].cells[0]
    assert first.version == 1
    assert first.value.Is(signals_pb2.DHash.DESCRIPTOR)
    value = signals_pb2.DHash()
    first.value.Unpack(value)
    assert value.hash == 33
    assert first.envelope.producer == "test"
    assert first.envelope.HasField("write_time")


def test_values_older_than_the_ttl_are_expired_not_served(
    store: SignalStore, registry: Registry
) -> None:
    """pins/save_count_1h has a 2h TTL by event time: an older value is EXPIRED, with no value."""
    now = datetime.now(UTC)
    store.apply(
        to_writes(
            registry,
            [
                count_record(1, 5, event_time=now - timedelta(hours=3)),
                count_record(2, 6, event_time=now - timedelta(minutes=5)),
            ],
        )
    )
    pins = registry.galaxy("pins")
    body, counts = reads.lookup(store, pins, ["1", "2"], [pins.signal("save_count_1h")])
    cells = [
        row.cells[0] for row in signal_service_pb2.GetSignalsResponse.FromString(body).entities
    ]
    assert counts.expired == 1
    assert counts.found == 1
    assert cells[0].status == signal_service_pb2.CELL_STATUS_EXPIRED
    assert not cells[0].HasField("value")
    assert cells[0].envelope.HasField("event_time")
    assert cells[1].status == signal_service_pb2.CELL_STATUS_FOUND


def test_large_cells_get_multi_byte_length_prefixes(store: SignalStore, registry: Registry) -> None:
    """Values over 127 and 16383 bytes still frame correctly (varint lengths of 2 and 3 bytes)."""
    from clients.lookup import make_record

    big = signals_pb2.Embedding(values=[0.5] * 5000)  # ~20 kB
    store.apply(to_writes(registry, [make_record("images", image_id(9), "embedding@1", big)]))
    images = registry.galaxy("images")
    body, _ = reads.lookup(store, images, [image_id(9)], [images.signal("embedding")])
    cell = signal_service_pb2.GetSignalsResponse.FromString(body).entities[0].cells[0]
    value = signals_pb2.Embedding()
    cell.value.Unpack(value)
    assert list(value.values) == [0.5] * 5000
