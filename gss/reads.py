"""GetSignals answers built straight from stored bytes.

A stored record's tail is a serialized ``EntitySignals`` with one FOUND cell (see
store/records.py). Protobuf concatenates repeated fields, so the row of an entity is the
concatenation of its cells' tails, and the response is each row framed as field 1
(``0x0a ‖ varint(length) ‖ row``). A lookup is then one multi-get, one slice per cell and
one join: no value is decoded or re-encoded. Only expired cells take a slow path. A
tombstone (a deleted value, first header byte 2) is answered like an absent value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from contract.keys import store_keys
from contract.registry import GalaxySpec, SignalSpec
from contract.v1 import signal_service_pb2
from gss.writes import now_us
from store import records
from store.db import SignalStore

_FIELD_1 = b"\x0a"  # field 1, length-delimited: EntitySignals.cells, GetSignalsResponse.entities
_NOT_FOUND = signal_service_pb2.EntitySignals(
    cells=[signal_service_pb2.SignalCell(status=signal_service_pb2.CELL_STATUS_NOT_FOUND)]
).SerializeToString()
_HEADER = records.HEADER.size
_TOMBSTONE = records.FORMAT_TOMBSTONE


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Rows are nearly always shorter than this, so their length prefixes come from a table.
_VARINTS = tuple(_varint(n) for n in range(1 << 14))


def varint(n: int) -> bytes:
    return _VARINTS[n] if n < 16384 else _varint(n)


@dataclass(frozen=True, slots=True)
class LookupCounts:
    found: int
    not_found: int
    expired: int


def _expired(stored: bytes) -> bytes:
    # Keep the envelope (so callers see how old the value is), drop the value.
    full = records.cell_of(stored)
    cell = signal_service_pb2.SignalCell(
        status=signal_service_pb2.CELL_STATUS_EXPIRED, version=full.version, envelope=full.envelope
    )
    return signal_service_pb2.EntitySignals(cells=[cell]).SerializeToString()


# A one-cell row framed as a response entity: ``0x0a ‖ varint(len) ‖`` for each length.
_FRAMES = tuple(_FIELD_1 + varint(n) for n in range(1 << 14))
_NOT_FOUND_ROW = _FIELD_1 + varint(len(_NOT_FOUND)) + _NOT_FOUND


def _framed(n: int) -> bytes:
    return _FRAMES[n] if n < 16384 else _FIELD_1 + _varint(n)


def _keys(galaxy: GalaxySpec, entity_ids: Sequence[str], suffixes: list[bytes]) -> list[bytes]:
    if len(suffixes) == 1:
        return galaxy.codec.many_store_keys(entity_ids, suffixes[0])
    return store_keys(galaxy.codec.many_to_bytes(entity_ids), suffixes)


def lookup(
    store: SignalStore,
    galaxy: GalaxySpec,
    entity_ids: Sequence[str],
    specs: Sequence[SignalSpec],
) -> tuple[bytes, LookupCounts]:
    """The serialized GetSignalsResponse for ``entity_ids`` x ``specs``, in request order."""
    suffixes = [spec.key_suffix for spec in specs]
    values = store.get_many(galaxy.name, _keys(galaxy, entity_ids, suffixes))
    width = len(specs)
    if width == 1 and not specs[0].ttl:
        # The hot path: one signal without a TTL; each stored tail is a whole row.
        body = b"".join(
            [
                _NOT_FOUND_ROW
                if stored is None or stored[0] == _TOMBSTONE
                else (_FRAMES[n] if (n := len(stored) - _HEADER) < 16384 else _framed(n))
                + stored[_HEADER:]
                for stored in values
            ]
        )
        not_found = sum(1 for stored in values if stored is None or stored[0] == _TOMBSTONE)
        return body, LookupCounts(len(values) - not_found, not_found, 0)
    not_found = 0
    expired = 0
    if any(spec.ttl for spec in specs):
        now = now_us()
        cutoffs = [
            now - int(spec.ttl.total_seconds() * 1_000_000) if spec.ttl else None for spec in specs
        ]
        cells = []
        for i, stored in enumerate(values):
            cutoff = cutoffs[i % width]
            if stored is None or stored[0] == _TOMBSTONE:
                cells.append(_NOT_FOUND)
                not_found += 1
            elif cutoff is not None and records.event_time_us(stored) < cutoff:
                cells.append(_expired(stored))
                expired += 1
            else:
                cells.append(stored[_HEADER:])
    else:
        cells = [
            _NOT_FOUND if stored is None or stored[0] == _TOMBSTONE else stored[_HEADER:]
            for stored in values
        ]
        not_found = cells.count(_NOT_FOUND)
    rows = (
        cells
        if width == 1
        else [b"".join(cells[i : i + width]) for i in range(0, len(cells), width)]
    )
    body = b"".join([part for row in rows for part in (_framed(len(row)), row)])
    return body, LookupCounts(len(values) - not_found - expired, not_found, expired)
