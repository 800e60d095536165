"""Encoding of the Kafka side's meta-CF entries: changelog offsets, topic ids, outbox entries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gss.kafka.meta import (
    EntryKind,
    OutboxEntry,
    encode_offset,
    offset_key,
    offset_prefix,
    outbox_key,
    outbox_sequence,
    parse_offset_entry,
)

topics = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=40)


@given(topics, st.integers(0, 2**31 - 1), st.integers(0, 2**63 - 1))
def test_offset_entries_round_trip(topic: str, partition: int, offset: int) -> None:
    """An offset entry decodes to the topic, partition and next offset it was written with."""
    key = offset_key(topic, partition)
    assert key.startswith(offset_prefix(topic))
    assert parse_offset_entry(key, encode_offset(offset)) == (topic, partition, offset)


def test_offset_prefix_does_not_match_longer_topic_names() -> None:
    """The offsets of topic "a" are not found by a scan for the offsets of topic "ab"."""
    assert not offset_key("ab", 0).startswith(offset_prefix("a"))


@given(st.lists(st.integers(0, 2**64 - 1), min_size=2, max_size=20, unique=True))
def test_outbox_keys_sort_by_sequence(sequences: list[int]) -> None:
    """Outbox keys sort in sequence order, so a key-order scan is commit order."""
    keys = [outbox_key(s) for s in sequences]
    assert [outbox_sequence(k) for k in sorted(keys)] == sorted(sequences)


headers = st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=50)), max_size=5)


@given(
    st.sampled_from(EntryKind),
    st.text(max_size=30),
    st.one_of(st.none(), st.binary(max_size=40)),
    st.binary(max_size=300),
    headers,
)
def test_outbox_entries_round_trip(
    kind: EntryKind, galaxy: str, key: bytes | None, value: bytes, hdrs: list[tuple[str, bytes]]
) -> None:
    """Every outbox entry decodes to itself, including an absent vs an empty Kafka key."""
    entry = OutboxEntry(kind, galaxy, key, value, tuple(hdrs))
    assert OutboxEntry.decode(entry.encode()) == entry


def test_damaged_outbox_entries_are_refused() -> None:
    """A truncated, extended or foreign-format entry raises instead of publishing garbage."""
    raw = OutboxEntry(EntryKind.AVAILABLE, "images", b"k" * 16, b"value", (("h", b"v"),)).encode()
    with pytest.raises(ValueError, match="truncated"):
        OutboxEntry.decode(raw[:-3])
    with pytest.raises(ValueError, match="trailing"):
        OutboxEntry.decode(raw + b"x")
    with pytest.raises(ValueError, match="format"):
        OutboxEntry.decode(b"\x09" + raw[1:])
