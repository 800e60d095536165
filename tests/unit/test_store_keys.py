"""Entity ids and store keys: the one encoding every part relies on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract.errors import InvalidArgumentError
from contract.keys import INT64_MAX, EntityCodec, KeyType, split_store_key, store_key

INT64 = EntityCodec(KeyType.INT64)
BYTES16 = EntityCodec(KeyType.BYTES, 16)
ids = st.integers(min_value=0, max_value=INT64_MAX)
names = st.from_regex(r"\A[a-z][a-z0-9_]{0,20}\Z")
versions = st.integers(min_value=1, max_value=2**31)


@given(ids)
def test_int64_ids_round_trip_through_text_and_bytes(entity_id: int) -> None:
    """An int64 id survives text -> bytes -> text and int -> bytes unchanged."""
    raw = INT64.to_bytes(str(entity_id))
    assert len(raw) == 8
    assert raw == INT64.to_bytes(entity_id)
    assert INT64.to_text(raw) == str(entity_id)


@given(ids, ids)
def test_int64_byte_order_is_numeric_order(a: int, b: int) -> None:
    """Canonical int64 bytes sort like the numbers, so RocksDB iterates ids numerically."""
    assert (INT64.to_bytes(a) < INT64.to_bytes(b)) == (a < b)


@given(st.binary(min_size=16, max_size=16))
def test_bytes_ids_round_trip_through_hex(raw: bytes) -> None:
    """A bytes id is itself; its text form is lowercase hex, upper-case hex is accepted."""
    assert BYTES16.to_bytes(raw.hex()) == raw
    assert BYTES16.to_bytes(raw.hex().upper()) == raw
    assert BYTES16.to_text(raw) == raw.hex()


@given(ids, names, versions, names, versions)
def test_store_keys_split_back_and_keep_an_entitys_signals_adjacent(
    entity_id: int, name: str, version: int, other_name: str, other_version: int
) -> None:
    """A key splits into what built it, and keys of one entity sort between the entity's neighbours."""
    entity = INT64.to_bytes(entity_id)
    key = store_key(entity, name, version)
    assert split_store_key(key, 8) == (entity, name, version)
    if entity_id < INT64_MAX:
        assert key < store_key(INT64.to_bytes(entity_id + 1), other_name, other_version)
    if entity_id > 0:
        assert key > store_key(INT64.to_bytes(entity_id - 1), other_name, other_version)


@pytest.mark.parametrize("bad", ["-1", "12a", "", " 5", "+5", "٣", str(INT64_MAX + 1)])
def test_bad_int64_ids_are_refused_with_the_value(bad: str) -> None:
    """Negative, non-decimal, padded, non-ASCII and out-of-range ids are refused, naming the id."""
    with pytest.raises(InvalidArgumentError, match="entity id"):
        INT64.to_bytes(bad)


@pytest.mark.parametrize("bad", ["zz" * 16, "ab" * 15, "ab" * 17, "a"])
def test_bad_bytes_ids_are_refused(bad: str) -> None:
    """Non-hex and wrong-length ids are refused."""
    with pytest.raises(InvalidArgumentError, match="entity id"):
        BYTES16.to_bytes(bad)


def test_key_declarations_are_checked() -> None:
    """int64 keys are 8 bytes; bytes keys need a length of 1..255."""
    with pytest.raises(InvalidArgumentError):
        EntityCodec(KeyType.INT64, 4)
    with pytest.raises(InvalidArgumentError):
        EntityCodec(KeyType.BYTES)
    with pytest.raises(InvalidArgumentError):
        EntityCodec(KeyType.BYTES, 256)
