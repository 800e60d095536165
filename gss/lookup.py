"""GetSignals answers built straight from stored bytes.

Stored records already hold a serialized ``SignalCell`` (see store/records.py), so a lookup
frames those bytes into a ``GetSignalsResponse`` instead of decoding and re-encoding every
value: per cell, one slice and a few byte appends. Protobuf's wire format makes this exact:
a message field is ``tag ‖ varint(length) ‖ bytes``, and fields may come in any order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gss.errors import InvalidArgumentError
from gss.registry import GalaxySpec, SignalSpec
from gss.v1 import signal_service_pb2
from gss.writes import now_us
from store import records
from store.db import SignalStore

FOUND = signal_service_pb2.CELL_STATUS_FOUND
NOT_FOUND = signal_service_pb2.CELL_STATUS_NOT_FOUND
EXPIRED = signal_service_pb2.CELL_STATUS_EXPIRED

_FIELD_1_LEN = b"\x0a"  # field 1, wire type 2: EntitySignals.cells and GetSignalsResponse.entities
_STATUS_FOUND = bytes([0x08, FOUND])  # SignalCell.status = FOUND
_CELL_NOT_FOUND = _FIELD_1_LEN + b"\x02" + bytes([0x08, NOT_FOUND])
_HEADER = records.HEADER.size


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Cells and rows are nearly always shorter than this, so their length prefixes come from a table.
_VARINTS = tuple(_varint(n) for n in range(1 << 14))


def varint(n: int) -> bytes:
    return _VARINTS[n] if n < 16384 else _varint(n)


@dataclass(frozen=True, slots=True)
class LookupCounts:
    found: int
    not_found: int
    expired: int


def _expired_cell(stored: bytes) -> bytes:
    # Rare path: keep the envelope (so callers see how old the value is), drop the value.
    full = signal_service_pb2.SignalCell.FromString(stored[_HEADER:])
    cell = signal_service_pb2.SignalCell(
        status=EXPIRED, version=full.version, envelope=full.envelope
    )
    return cell.SerializeToString()


def lookup(
    store: SignalStore,
    galaxy: GalaxySpec,
    entity_ids: Sequence[str],
    specs: Sequence[SignalSpec],
) -> tuple[bytes, LookupCounts]:
    """The serialized GetSignalsResponse for ``entity_ids`` x ``specs``, in request order."""
    codec = galaxy.codec
    entities: list[bytes] = []
    for i, entity_id in enumerate(entity_ids):
        try:
            entities.append(codec.to_bytes(entity_id))
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"entity_ids[{i}]: {exc}") from None
    suffixes = [spec.key_suffix for spec in specs]
    values = store.get_many(
        galaxy.name, [entity + suffix for entity in entities for suffix in suffixes]
    )
    now = now_us()
    cutoffs = [
        now - int(spec.ttl.total_seconds() * 1_000_000) if spec.ttl else None for spec in specs
    ]
    width = len(specs)
    out = bytearray()
    found = not_found = expired = 0
    for row_start in range(0, len(values), width):
        row = bytearray()
        for j in range(width):
            stored = values[row_start + j]
            if stored is None:
                row += _CELL_NOT_FOUND
                not_found += 1
                continue
            cutoff = cutoffs[j]
            if cutoff is not None and records.event_time_us(stored) < cutoff:
                cell = _expired_cell(stored)
                expired += 1
            else:
                cell = _STATUS_FOUND + stored[_HEADER:]
                found += 1
            row += _FIELD_1_LEN
            row += varint(len(cell))
            row += cell
        out += _FIELD_1_LEN
        out += varint(len(row))
        out += row
    return bytes(out), LookupCounts(found, not_found, expired)
