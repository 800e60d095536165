"""How one signal value is laid out in RocksDB.

A stored record is ``header ‖ cell`` where

- ``header`` is 17 bytes: format (1), event time in µs since the epoch (8, signed big-endian),
  changelog offset of the source record (8, signed big-endian, -1 for direct writes);
- ``cell`` is a serialized ``gss.v1.EntitySignals`` holding one ``SignalCell`` with status
  FOUND, the version, the value (Any) and the envelope.

A **tombstone** (a deleted value) has format 2 and a NOT_FOUND cell carrying the version and
the envelope of the deletion, without a value: it orders like a value (a later write replaces
it, an older one does not) and readers treat it as absent (:func:`is_tombstone`).

The header answers the two questions a hot path asks (is it newer? is it expired?) without
parsing protobuf. The rest is already in the wire form of a GetSignals answer: protobuf
concatenates repeated fields, so a row of several signals is the concatenation of their
stored tails, and the server splices bytes instead of decoding and re-encoding values.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from google.protobuf import any_pb2

from contract import protowire
from contract.v1 import envelope_pb2, signal_service_pb2

FORMAT_V1 = 1
FORMAT_TOMBSTONE = 2
HEADER = struct.Struct(">Bqq")
NO_OFFSET = -1
# SignalCell.status = CELL_STATUS_FOUND, as encoded (field 1, varint).
_FOUND_STATUS = protowire.varint_field(1, signal_service_pb2.CELL_STATUS_FOUND)
# The status and version fields of a FOUND cell, by version.
_FOUND_CELL_HEADS: dict[int, bytes] = {}


def timestamp_us(ts: object) -> int:
    """Microseconds since the epoch of a protobuf Timestamp."""
    return ts.seconds * 1_000_000 + ts.nanos // 1000  # type: ignore[attr-defined, no-any-return]


def encode(version: int, value: any_pb2.Any, envelope: envelope_pb2.Envelope) -> bytes:
    """The stored form of one value. The envelope must carry event and write time."""
    offset = envelope.source.offset if envelope.HasField("source") else NO_OFFSET
    cell = signal_service_pb2.SignalCell(
        status=signal_service_pb2.CELL_STATUS_FOUND, version=version, value=value, envelope=envelope
    )
    row = signal_service_pb2.EntitySignals(cells=[cell])
    return (
        HEADER.pack(FORMAT_V1, timestamp_us(envelope.event_time), offset) + row.SerializeToString()
    )


def encode_serialized(
    version: int, value: bytes, envelope: bytes, event_time_us: int, source_offset: int
) -> bytes:
    """:func:`encode` from parts already serialized (the changelog ingester's hot path): the
    value's ``Any`` and the envelope (which must carry event and write time; ``event_time_us``
    and ``source_offset`` are the envelope's own). Equal as a message to :func:`encode`'s."""
    varint = protowire.varint
    head = _FOUND_CELL_HEADS.get(version)
    if head is None:
        head = _FOUND_CELL_HEADS[version] = _FOUND_STATUS + protowire.varint_field(2, version)
    cell = b"".join(
        (
            head,
            b"\x1a",  # SignalCell.value
            varint(len(value)),
            value,
            b"\x22",  # SignalCell.envelope
            varint(len(envelope)),
            envelope,
        )
    )
    return b"".join(
        (
            HEADER.pack(FORMAT_V1, event_time_us, source_offset),
            b"\x0a",  # EntitySignals.cells
            varint(len(cell)),
            cell,
        )
    )


def encode_tombstone(version: int, envelope: envelope_pb2.Envelope) -> bytes:
    """The stored form of a deletion: ordered like a value, read as absent."""
    offset = envelope.source.offset if envelope.HasField("source") else NO_OFFSET
    cell = signal_service_pb2.SignalCell(
        status=signal_service_pb2.CELL_STATUS_NOT_FOUND, version=version, envelope=envelope
    )
    row = signal_service_pb2.EntitySignals(cells=[cell])
    return (
        HEADER.pack(FORMAT_TOMBSTONE, timestamp_us(envelope.event_time), offset)
        + row.SerializeToString()
    )


def is_tombstone(stored: bytes) -> bool:
    """True if the stored record is a deletion (readers answer it as NOT_FOUND)."""
    return stored[0] == FORMAT_TOMBSTONE


def order_of(stored: bytes) -> tuple[int, int]:
    """(event time µs, changelog offset): a write replaces a value only if its order is greater."""
    _, event_us, offset = HEADER.unpack_from(stored)
    return event_us, offset


def same_value(a: bytes, b: bytes) -> bool:
    """True if two stored records hold the same fact: equal event time and equal value bytes
    (version and the value's Any, as serialized). The envelope's write time, changelog
    position, producer and backfill flag are not compared: a write that only repeats what is
    stored (a re-run, a backfill over live values) changes nothing and announces nothing."""
    if a[0] != b[0] or HEADER.unpack_from(a)[1] != HEADER.unpack_from(b)[1]:
        return False
    cell_a, cell_b = cell_of(a), cell_of(b)
    return bool(
        cell_a.version == cell_b.version
        and cell_a.value.SerializeToString(deterministic=True)
        == cell_b.value.SerializeToString(deterministic=True)
    )


def event_time_us(stored: bytes) -> int:
    return HEADER.unpack_from(stored)[1]  # type: ignore[no-any-return]


def cell_of(stored: bytes) -> signal_service_pb2.SignalCell:
    """The decoded SignalCell inside a stored record."""
    return signal_service_pb2.EntitySignals.FromString(stored[HEADER.size :]).cells[0]


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A decoded stored value, for the slow paths (export, events, tools)."""

    version: int
    value: any_pb2.Any
    envelope: envelope_pb2.Envelope
    event_time_us: int
    source_offset: int
    # A tombstone: the value was deleted (``value`` is empty).
    deleted: bool = False

    @classmethod
    def decode(cls, stored: bytes) -> StoredRecord:
        fmt, event_us, offset = HEADER.unpack_from(stored)
        if fmt not in (FORMAT_V1, FORMAT_TOMBSTONE):
            raise ValueError(
                f"stored record has format {fmt}; this GSS reads formats {FORMAT_V1} and "
                f"{FORMAT_TOMBSTONE}"
            )
        cell = cell_of(stored)
        return cls(
            cell.version, cell.value, cell.envelope, event_us, offset, fmt == FORMAT_TOMBSTONE
        )
