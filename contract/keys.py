"""The one place that knows how entity ids and store keys are encoded.

Canonical entity bytes (also the Kafka record key and the id inside events):
- ``int64`` galaxies: 8 bytes big-endian. Ids are non-negative, so byte order is numeric order.
- ``bytes`` galaxies: the id itself, of the galaxy's fixed length.

Text form (the gRPC API, the CLI, JSON): decimal for int64, lowercase hex for bytes.

A store key is ``entity bytes ‖ signal name (UTF-8) ‖ 0x00 ‖ version (4 bytes big-endian)``.
Entity bytes have a fixed length per galaxy, so all keys of one entity are adjacent, entities
sort by id, and a key splits unambiguously.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from enum import StrEnum

from contract.errors import InvalidArgumentError

INT64_MAX = (1 << 63) - 1
SIGNAL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_VERSION = struct.Struct(">I")
_DECIMALS = re.compile(r"(?:[0-9]{1,19},)*[0-9]{1,19}", re.ASCII)
_HEX = re.compile(r"[0-9a-fA-F]*", re.ASCII)


class KeyType(StrEnum):
    INT64 = "int64"
    BYTES = "bytes"


class EntityCodec:
    """Converts one galaxy's entity ids between text, int and canonical bytes."""

    __slots__ = ("key_type", "length")

    def __init__(self, key_type: KeyType, length: int | None = None) -> None:
        if key_type is KeyType.INT64:
            if length not in (None, 8):
                raise InvalidArgumentError(f"int64 ids are 8 bytes; key length {length} given")
            length = 8
        elif not length or not 1 <= length <= 255:
            raise InvalidArgumentError(f"bytes ids need a fixed length of 1..255; got {length}")
        self.key_type = key_type
        self.length = length

    def to_bytes(self, entity_id: str | int | bytes) -> bytes:
        """Canonical bytes of an id given as text, an int (int64) or raw bytes (bytes)."""
        if self.key_type is KeyType.INT64:
            if isinstance(entity_id, str):
                if not (entity_id.isascii() and entity_id.isdigit()):
                    raise InvalidArgumentError(
                        f"entity id {entity_id!r} is not a non-negative decimal integer"
                    )
                entity_id = int(entity_id)
            if isinstance(entity_id, bytes) or not 0 <= entity_id <= INT64_MAX:
                raise InvalidArgumentError(
                    f"entity id {entity_id!r} is not an int64 id in [0, 2^63)"
                )
            return entity_id.to_bytes(8, "big")
        if isinstance(entity_id, str):
            try:
                raw = bytes.fromhex(entity_id)
            except ValueError:
                raise InvalidArgumentError(f"entity id {entity_id!r} is not hex") from None
        elif isinstance(entity_id, bytes):
            raw = entity_id
        else:
            raise InvalidArgumentError(f"entity id {entity_id!r} is not hex text or bytes")
        if len(raw) != self.length:
            raise InvalidArgumentError(
                f"entity id {entity_id!r} is {len(raw)} bytes; this galaxy's ids are {self.length}"
            )
        return raw

    def many_to_bytes(self, entity_ids: Sequence[str]) -> list[bytes]:
        """Canonical bytes of many text ids, checked in bulk (the lookup hot path).

        Raises InvalidArgumentError naming the index of the first bad id.
        """
        if self.key_type is KeyType.INT64:
            if _DECIMALS.fullmatch(",".join(entity_ids)):
                try:
                    return [int(e).to_bytes(8, "big", signed=True) for e in entity_ids]
                except OverflowError:
                    pass  # an id of 2^63 or more: found and named below
        else:
            width = 2 * self.length
            if all(len(e) == width for e in entity_ids) and _HEX.fullmatch("".join(entity_ids)):
                joined = bytes.fromhex("".join(entity_ids))
                return [joined[i : i + self.length] for i in range(0, len(joined), self.length)]
        out = []
        for i, entity_id in enumerate(entity_ids):
            try:
                out.append(self.to_bytes(entity_id))
            except InvalidArgumentError as exc:
                raise InvalidArgumentError(f"entity_ids[{i}]: {exc}") from None
        return out

    def many_store_keys(self, entity_ids: Sequence[str], suffix: bytes) -> list[bytes]:
        """The store keys of many text ids with one signal suffix (the lookup hot path: for
        int64 ids, checked in bulk and built in one pass)."""
        if self.key_type is KeyType.INT64 and _DECIMALS.fullmatch(",".join(entity_ids)):
            try:
                return [int(e).to_bytes(8, "big", signed=True) + suffix for e in entity_ids]
            except OverflowError:
                pass  # an id of 2^63 or more: found and named by many_to_bytes
        return [entity + suffix for entity in self.many_to_bytes(entity_ids)]

    def to_text(self, raw: bytes) -> str:
        """Text form of canonical bytes."""
        if len(raw) != self.length:
            raise InvalidArgumentError(
                f"entity key {raw.hex()} is {len(raw)} bytes; this galaxy's ids are {self.length}"
            )
        if self.key_type is KeyType.INT64:
            return str(int.from_bytes(raw, "big"))
        return raw.hex()

    def canonical_text(self, entity_id: str | int | bytes) -> str:
        """The one text form of an id given in any accepted form (e.g. upper-case hex)."""
        return self.to_text(self.to_bytes(entity_id))


def signal_suffix(name: str, version: int) -> bytes:
    """The part of a store key after the entity bytes."""
    return name.encode() + b"\x00" + _VERSION.pack(version)


def store_key(entity: bytes, name: str, version: int) -> bytes:
    """The store key of one signal of one entity."""
    return entity + signal_suffix(name, version)


def store_keys(entities: Sequence[bytes], suffixes: Sequence[bytes]) -> list[bytes]:
    """The store keys of every (entity, signal suffix) pair, entity-major: the cells of a
    lookup row after row, in the order GetSignals answers them."""
    return [entity + suffix for entity in entities for suffix in suffixes]


def split_store_key(key: bytes, key_length: int) -> tuple[bytes, str, int]:
    """(entity bytes, signal name, version) of a store key."""
    entity, name, version = key[:key_length], key[key_length:-5], key[-4:]
    if len(key) < key_length + 6 or key[-5] != 0:
        raise ValueError(f"not a signal store key: {key.hex()}")
    return entity, name.decode(), _VERSION.unpack(version)[0]
