"""Comparing two stores key by key: is one the same materialisation of the changelog as the other?

Two stored records are **equal** when they hold the same signal version, the same value (type
and bytes) and the same envelope — event time, changelog position (topic, partition, offset),
producer, model — **except the write time**, which is when a store applied the record and so
differs by design between a store and its rebuild. Everything else must match byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from store.records import StoredRecord

if TYPE_CHECKING:
    from store.db import SignalStore

# What differs, from the cheapest to the most detailed check.
ONLY_IN_A = "only_in_a"
ONLY_IN_B = "only_in_b"
EVENT_TIME = "event_time"
POSITION = "changelog_position"
VERSION = "version"
VALUE = "value"
ENVELOPE = "envelope"


@dataclass(frozen=True, slots=True)
class Difference:
    """One key whose stored records differ (``what`` is one of the constants above)."""

    galaxy: str
    key: bytes
    what: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.galaxy} {self.key.hex()}: {self.what}{' (' + self.detail + ')' if self.detail else ''}"


@dataclass(slots=True)
class Comparison:
    """The outcome of :func:`compare_stores`: keys compared per galaxy, the number of keys that
    differ, and the first ``max_differences`` of them in (galaxy, key) order."""

    keys: dict[str, int] = field(default_factory=dict)
    differing: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return self.differing == 0


def record_difference(a: bytes, b: bytes) -> tuple[str, str] | None:
    """How stored record ``a`` differs from ``b`` (what, detail), None if they are equal but
    for the write time."""
    if a == b:
        return None
    ra, rb = StoredRecord.decode(a), StoredRecord.decode(b)
    if ra.event_time_us != rb.event_time_us:
        return EVENT_TIME, f"{ra.event_time_us} µs != {rb.event_time_us} µs"
    if ra.source_offset != rb.source_offset or ra.envelope.source != rb.envelope.source:
        pa, pb = ra.envelope.source, rb.envelope.source
        return (
            POSITION,
            f"{pa.topic}:{pa.partition}:{pa.offset} != {pb.topic}:{pb.partition}:{pb.offset}",
        )
    if ra.version != rb.version:
        return VERSION, f"{ra.version} != {rb.version}"
    if ra.value != rb.value:
        return VALUE, f"{len(ra.value.value)} vs {len(rb.value.value)} bytes of {ra.value.type_url}"
    ea, eb = ra.envelope, rb.envelope
    ea.ClearField("write_time")
    eb.ClearField("write_time")
    if ea != eb:
        return ENVELOPE, "fields other than write_time differ"
    return None


def _merge(
    a: Iterator[tuple[bytes, bytes]], b: Iterator[tuple[bytes, bytes]]
) -> Iterator[tuple[bytes, bytes | None, bytes | None]]:
    """(key, a's record, b's record) over the union of two key-ordered scans."""
    na, nb = next(a, None), next(b, None)
    while na is not None or nb is not None:
        if nb is None or (na is not None and na[0] < nb[0]):
            assert na is not None
            yield na[0], na[1], None
            na = next(a, None)
        elif na is None or nb[0] < na[0]:
            yield nb[0], None, nb[1]
            nb = next(b, None)
        else:
            yield na[0], na[1], nb[1]
            na, nb = next(a, None), next(b, None)


def compare_scans(
    galaxy: str,
    a: Iterable[tuple[bytes, bytes]],
    b: Iterable[tuple[bytes, bytes]],
    into: Comparison,
    max_differences: int = 20,
) -> None:
    """Compare two key-ordered (key, stored record) scans of ``galaxy`` into ``into``."""
    keys = 0
    for key, ra, rb in _merge(iter(a), iter(b)):
        keys += 1
        if ra is None:
            found: tuple[str, str] | None = (ONLY_IN_B, "")
        elif rb is None:
            found = (ONLY_IN_A, "")
        else:
            found = record_difference(ra, rb)
        if found is not None:
            into.differing += 1
            if len(into.differences) < max_differences:
                into.differences.append(Difference(galaxy, key, *found))
    into.keys[galaxy] = into.keys.get(galaxy, 0) + keys


def compare_stores(
    a: SignalStore, b: SignalStore, galaxies: Iterable[str], *, max_differences: int = 20
) -> Comparison:
    """Compare every key of each galaxy in two stores (one merge pass over both in key order)."""
    out = Comparison()
    for galaxy in galaxies:
        compare_scans(galaxy, a.scan(galaxy), b.scan(galaxy), out, max_differences)
    return out
