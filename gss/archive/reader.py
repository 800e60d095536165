"""Reading the archive back: the records of a topic's partition in offset order.

Only committed batches are read (their commit markers list the files), so leftovers of an
interrupted batch are never seen. Every file is checked against its marker entry (records,
first and last offset, topic and partition); a damaged file (truncated gzip, a bad JSON line,
missing records) raises :class:`ArchiveCorruptError` naming the file and its offset range.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

from contract.archive import FileEntry
from contract.errors import GssError
from gss.archive import commits
from gss.archive.layout import ArchivedRecord, decode_file
from gss.archive.storage import ArchiveStorage


class ArchiveCorruptError(GssError):
    """An archive file or commit marker that cannot be read as written."""


@dataclass(frozen=True, slots=True)
class ReadRange:
    """Which records to read: offsets from ``from_offset``, timestamps in [from, until)."""

    from_offset: int = 0
    from_timestamp_ms: int | None = None
    until_timestamp_ms: int | None = None

    def wants_file(self, entry: FileEntry) -> bool:
        if entry.last_offset < self.from_offset:
            return False
        if self.from_timestamp_ms is not None and entry.max_timestamp_ms < self.from_timestamp_ms:
            return False
        return not (
            self.until_timestamp_ms is not None
            and entry.min_timestamp_ms >= self.until_timestamp_ms
        )

    def wants(self, record: ArchivedRecord) -> bool:
        if record.offset < self.from_offset:
            return False
        if self.from_timestamp_ms is not None and record.timestamp_ms < self.from_timestamp_ms:
            return False
        return self.until_timestamp_ms is None or record.timestamp_ms < self.until_timestamp_ms


def read_file(
    storage: ArchiveStorage, topic: str, partition: int, entry: FileEntry
) -> list[ArchivedRecord]:
    """A data file's records, checked against its marker entry."""
    where = f"{storage.location(entry.path)} (offsets {entry.first_offset}-{entry.last_offset})"
    try:
        data = storage.read(entry.path)
    except FileNotFoundError:
        raise ArchiveCorruptError(f"archive file {where} is missing") from None
    try:
        records = list(decode_file(data))
    except (OSError, EOFError, zlib.error) as exc:
        raise ArchiveCorruptError(f"archive file {where} is not valid gzip: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ArchiveCorruptError(f"archive file {where} has a bad record line: {exc!r}") from None
    problem = None
    if len(records) != entry.records:
        problem = f"holds {len(records)} records, its commit marker says {entry.records}"
    elif records[0].offset != entry.first_offset or records[-1].offset != entry.last_offset:
        problem = f"holds offsets {records[0].offset}-{records[-1].offset}"
    elif any(r.topic != topic or r.partition != partition for r in records):
        problem = f"holds records of another topic or partition than {topic}:{partition}"
    elif any(a.offset >= b.offset for a, b in pairwise(records)):
        problem = "holds offsets out of order"
    if problem:
        raise ArchiveCorruptError(f"archive file {where} {problem}")
    return records


def read_partition(
    storage: ArchiveStorage,
    topic: str,
    partition: int,
    *,
    from_offset: int = 0,
    from_timestamp_ms: int | None = None,
    until_timestamp_ms: int | None = None,
) -> Iterator[ArchivedRecord]:
    """The partition's archived records in offset order (committed batches only), optionally
    from an offset and within [from_timestamp_ms, until_timestamp_ms). Files whose timestamp
    range misses the window are not read."""
    wanted = ReadRange(from_offset, from_timestamp_ms, until_timestamp_ms)
    previous_last: int | None = None
    for last in commits.marker_offsets(storage, topic, partition):
        try:
            marker = commits.read_marker(storage, topic, partition, last)
        except ValueError as exc:
            raise ArchiveCorruptError(str(exc)) from None
        if previous_last is not None and marker.from_offset != previous_last + 1:
            raise ArchiveCorruptError(
                f"commit markers of {topic}:{partition} do not chain: the batch ending at "
                f"{previous_last} is followed by one starting at {marker.from_offset}"
            )
        previous_last = marker.last_offset
        if marker.last_offset < from_offset:
            continue
        batch: list[ArchivedRecord] = []
        for entry in marker.files:
            if wanted.wants_file(entry):
                batch.extend(read_file(storage, topic, partition, entry))
        # A batch's files are hours; their records interleave in offset order.
        batch.sort(key=lambda r: r.offset)
        yield from (r for r in batch if wanted.wants(r))


def read_topic(storage: ArchiveStorage, topic: str) -> Iterator[ArchivedRecord]:
    """Every archived record of ``topic``, partition by partition, each in offset order."""
    for partition in commits.archived_partitions(storage, topic):
        yield from read_partition(storage, topic, partition)
