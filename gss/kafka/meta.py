"""The Kafka side's entries in the store's meta column family: one place for their layout.

- ``changelog_offset\\0<topic>\\0<partition: 4 bytes BE>`` → next offset to read (8 bytes BE).
  Written in the WriteBatch of the values it covers, so it is exactly as durable as they are.
- ``changelog_topic_id\\0<topic>`` → the broker's id of the topic those offsets belong to
  (UTF-8). A different id means the topic was created anew; its offsets start over.
- ``outbox\\0<sequence: 8 bytes BE>`` → an :class:`OutboxEntry`. Sequences grow in commit
  order, so a key-order scan is the order the entries were committed in.
- ``outbox_backfill\\0<sequence: 8 bytes BE>`` → the same, for events of backfilled values
  (published at a bounded rate, after live entries).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

OFFSET_PREFIX = b"changelog_offset\x00"
TOPIC_ID_PREFIX = b"changelog_topic_id\x00"
OUTBOX_PREFIX = b"outbox\x00"
# Availability events of backfilled values: a queue of their own, published rate-limited
# (kafka.backfill_events_per_second) so live events never wait behind a backfill.
BACKFILL_OUTBOX_PREFIX = b"outbox_backfill\x00"
# Both queues, and nothing else: one iterator over it sees both at one point in time.
OUTBOX_QUEUES_PREFIX = b"outbox"

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_ENTRY_FORMAT = 1


def offset_key(topic: str, partition: int) -> bytes:
    return OFFSET_PREFIX + topic.encode() + b"\x00" + _U32.pack(partition)


def offset_prefix(topic: str) -> bytes:
    return OFFSET_PREFIX + topic.encode() + b"\x00"


def parse_offset_entry(key: bytes, value: bytes) -> tuple[str, int, int]:
    """(topic, partition, next offset) of a stored offset entry."""
    body = key[len(OFFSET_PREFIX) :]
    topic, partition = body[:-5], body[-4:]
    if not key.startswith(OFFSET_PREFIX) or body[-5:-4] != b"\x00":
        raise ValueError(f"not a changelog offset key: {key!r}")
    return topic.decode(), _U32.unpack(partition)[0], _I64.unpack(value)[0]


def encode_offset(next_offset: int) -> bytes:
    return _I64.pack(next_offset)


def topic_id_key(topic: str) -> bytes:
    return TOPIC_ID_PREFIX + topic.encode()


def outbox_key(sequence: int, *, backfill: bool = False) -> bytes:
    return (BACKFILL_OUTBOX_PREFIX if backfill else OUTBOX_PREFIX) + _U64.pack(sequence)


def outbox_sequence(key: bytes) -> int:
    return int(_U64.unpack(key[-_U64.size :])[0])


class EntryKind(IntEnum):
    """Which of the galaxy's topics an outbox entry goes to."""

    AVAILABLE = 1
    DLQ = 2


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One Kafka record waiting to be published: the topic is resolved from (kind, galaxy) at
    publish time, so a renamed topic template applies to entries already waiting."""

    kind: EntryKind
    galaxy: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = field(default=())

    def encode(self) -> bytes:
        headers = b"".join(encode_header(name, value) for name, value in self.headers)
        return join_entry(
            entry_head(self.kind, self.galaxy, has_key=self.key is not None),
            self.key if self.key is not None else b"",
            self.value,
            len(self.headers),
            headers,
        )

    @classmethod
    def decode(cls, data: bytes) -> OutboxEntry:
        """The entry :meth:`encode` made; raises ValueError for anything else."""
        if not data or data[0] != _ENTRY_FORMAT:
            raise ValueError(
                f"outbox entry has format {data[:1].hex() or 'none'}; expected {_ENTRY_FORMAT}"
            )
        try:
            return cls._decode_body(data)
        except struct.error:
            raise ValueError("outbox entry is truncated") from None
        except (KeyError, IndexError):
            raise ValueError(f"outbox entry has an unknown kind {data[1:2].hex()}") from None

    @classmethod
    def _decode_body(cls, data: bytes) -> OutboxEntry:
        # Straight-line parsing: the publisher decodes every entry it sends.
        kind, has_key = _KINDS[data[1]], data[2] == 1
        (length,) = _U16.unpack_from(data, 3)
        pos = 5 + length
        galaxy = data[5:pos].decode()
        (length,) = _U32.unpack_from(data, pos)
        key = data[pos + 4 : pos + 4 + length]
        pos += 4 + length
        (length,) = _U32.unpack_from(data, pos)
        value = data[pos + 4 : pos + 4 + length]
        pos += 4 + length
        (count,) = _U16.unpack_from(data, pos)
        pos += 2
        headers = []
        for _ in range(count):
            (length,) = _U16.unpack_from(data, pos)
            name = data[pos + 2 : pos + 2 + length].decode()
            pos += 2 + length
            (length,) = _U32.unpack_from(data, pos)
            headers.append((name, data[pos + 4 : pos + 4 + length]))
            pos += 4 + length
        if pos > len(data):
            raise ValueError("outbox entry is truncated")
        if pos < len(data):
            raise ValueError("outbox entry has trailing bytes")
        return cls(kind, galaxy, key if has_key else None, value, tuple(headers))


_KINDS = {int(kind): kind for kind in EntryKind}


# The encoding of an entry in parts, so a hot path can keep the parts that do not change
# (format, kind, galaxy, constant headers) encoded once.


def entry_head(kind: EntryKind, galaxy: str, *, has_key: bool) -> bytes:
    """An encoded entry's first bytes: format, kind, whether it has a key, the galaxy."""
    raw = galaxy.encode()
    return bytes([_ENTRY_FORMAT, int(kind), 1 if has_key else 0]) + _U16.pack(len(raw)) + raw


def encode_header(name: str, value: bytes) -> bytes:
    """One encoded header of an entry."""
    raw = name.encode()
    return _U16.pack(len(raw)) + raw + _U32.pack(len(value)) + value


def join_entry(head: bytes, key: bytes, value: bytes, header_count: int, headers: bytes) -> bytes:
    """An encoded entry from its :func:`entry_head`, key (empty without one), value and its
    ``header_count`` headers' :func:`encode_header` encodings, concatenated in order."""
    return b"".join(
        (
            head,
            _U32.pack(len(key)),
            key,
            _U32.pack(len(value)),
            value,
            _U16.pack(header_count),
            headers,
        )
    )
