"""Protobuf wire-format helpers for splicing already-serialized messages.

The changelog ingester's hot path builds stored records and availability events from parts
that are serialized once (a record's envelope and value, a batch's write time, a partition's
position) instead of constructing messages field by field: protobuf parsers accept fields in
any order and concatenated encodings of a message merge, so ``a + field(n, b)`` parses as
message ``a`` with field ``n`` set to ``b`` when ``a`` does not set ``n``. Used only where
that condition is checked; the result is equal as a message (not byte for byte) to what the
message API would serialize.
"""

from __future__ import annotations

_ONE_BYTE = [bytes([n]) for n in range(0x80)]
_UINT64 = (1 << 64) - 1


def varint(value: int) -> bytes:
    """The varint encoding of an int (negative: two's complement on 64 bits, as int64)."""
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    value &= _UINT64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    """Field ``number`` holding ``payload`` (bytes, a string's UTF-8, a serialized message)."""
    return varint((number << 3) | 2) + varint(len(payload)) + payload


def varint_field(number: int, value: int) -> bytes:
    """Field ``number`` holding an int (bool, enum, int32/64, uint32/64); empty for 0, as proto3
    serializes a default scalar."""
    return varint(number << 3) + varint(value) if value else b""
