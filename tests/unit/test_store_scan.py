"""Reading the store for an export: batches in key order, bounded in rows and bytes."""

from __future__ import annotations

from pathlib import Path

from contract.registry import Registry
from store.db import SignalStore
from store.scan import ScanBatch, StoreView
from tests.snapshot_fixtures import example_records, write


def test_batches_hold_every_record_once_in_key_order_within_their_bounds(
    tmp_path: Path, registry: Registry
) -> None:
    """Every (key, record) comes once, in key order; after the first batch, a batch stays
    near the byte bound (records are ~100-400 bytes here); a batch survives the trip through
    its raw buffers (how it reaches a worker process)."""
    with SignalStore(tmp_path / "store", list(registry.galaxies), sync_writes=False) as store:
        write(registry, store, example_records(registry, "images", 300))
        expected = list(store.scan("images"))
        view = StoreView.from_store(store, tmp_path / "work")
        try:
            batches = list(view.batches("images", batch_rows=500, batch_bytes=20_000))
        finally:
            view.close()
    pairs = []
    for batch in batches:
        again = ScanBatch.from_buffers([bytes(part.data) for part in batch.buffers()])
        for b in (batch, again):
            keys = [
                b.keys.buf[s:e].tobytes() for s, e in zip(b.keys.start, b.keys.end, strict=True)
            ]
            values = [
                b.values.buf[s:e].tobytes()
                for s, e in zip(b.values.start, b.values.end, strict=True)
            ]
            if b is batch:
                pairs.extend(zip(keys, values, strict=True))
            else:
                assert pairs[-len(batch) :] == list(zip(keys, values, strict=True))
    assert pairs == expected
    assert len(batches[0]) == 500
    assert all(int(b.values.end[-1]) < 2 * 20_000 for b in batches[1:])
