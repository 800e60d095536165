"""Commit markers: the archive's own record of which offsets it holds.

Each batch of one partition (consecutive records, one file per UTC hour they fall in) is
written in three steps, each atomic:

1. ``_commits/<topic>/partition=P/_pending.json``: the batch about to be written (its files);
2. the data files;
3. ``_commits/<topic>/partition=P/<last_offset:020d>.json``: the commit marker.

A batch exists once its marker does. The newest marker says where the partition resumes
(its ``last_offset + 1``) and carries the partition's running totals, so status reads one
marker per partition. After a crash, :func:`recover` deletes the files of a pending batch
that never got its marker, so a restarted archiver writes that range again from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from contract import archive
from contract.archive import FileEntry, Marker, Totals
from gss.archive.storage import ArchiveStorage


def new_marker(
    topic: str,
    partition: int,
    topic_id: str,
    from_offset: int,
    files: list[FileEntry],
    previous: Totals | None,
) -> Marker:
    """The marker of a batch made of ``files``, with totals following ``previous``."""
    first = min(f.first_offset for f in files)
    last = max(f.last_offset for f in files)
    records = sum(f.records for f in files)
    size = sum(f.bytes for f in files)
    min_ts = min(f.min_timestamp_ms for f in files)
    max_ts = max(f.max_timestamp_ms for f in files)
    if previous is None:
        totals = Totals(first, last, records, len(files), 1, size, min_ts, max_ts)
    else:
        totals = Totals(
            previous.first_offset,
            last,
            previous.records + records,
            previous.files + len(files),
            previous.batches + 1,
            previous.bytes + size,
            min(previous.min_timestamp_ms, min_ts),
            max(previous.max_timestamp_ms, max_ts),
        )
    return Marker(
        topic=topic,
        partition=partition,
        topic_id=topic_id,
        from_offset=from_offset,
        first_offset=first,
        last_offset=last,
        records=records,
        min_timestamp_ms=min_ts,
        max_timestamp_ms=max_ts,
        committed_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        files=tuple(sorted(files, key=lambda f: f.first_offset)),
        totals=totals,
    )


def marker_offsets(storage: ArchiveStorage, topic: str, partition: int) -> list[int]:
    """Last offsets of the partition's committed batches, ascending."""
    names = storage.list_files(archive.commits_dir(topic, partition))
    return sorted(o for n in names if (o := archive.parse_marker_name(n)) is not None)


def read_marker(storage: ArchiveStorage, topic: str, partition: int, last_offset: int) -> Marker:
    rel = archive.marker_path(topic, partition, last_offset)
    try:
        return Marker.from_json(storage.read(rel))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"commit marker {storage.location(rel)} is unreadable: {exc}") from exc


def newest_marker(storage: ArchiveStorage, topic: str, partition: int) -> Marker | None:
    offsets = marker_offsets(storage, topic, partition)
    return read_marker(storage, topic, partition, offsets[-1]) if offsets else None


def archived_topics(storage: ArchiveStorage) -> list[str]:
    return storage.list_dirs(archive.COMMITS_DIR)


def archived_partitions(storage: ArchiveStorage, topic: str) -> list[int]:
    dirs = storage.list_dirs(f"{archive.COMMITS_DIR}/{topic}")
    return sorted(int(d.split("=", 1)[1]) for d in dirs if d.startswith("partition="))


def write_pending(storage: ArchiveStorage, marker: Marker) -> None:
    storage.write(archive.pending_path(marker.topic, marker.partition), marker.to_json())


def write_marker(storage: ArchiveStorage, marker: Marker) -> None:
    storage.write(
        archive.marker_path(marker.topic, marker.partition, marker.last_offset), marker.to_json()
    )


@dataclass(frozen=True, slots=True)
class Recovered:
    """Where a partition stands after :func:`recover`."""

    newest: Marker | None
    removed_files: tuple[str, ...] = ()

    @property
    def next_offset(self) -> int | None:
        """The offset to resume from; None when nothing was archived yet."""
        return None if self.newest is None else self.newest.last_offset + 1


def recover(storage: ArchiveStorage, topic: str, partition: int) -> Recovered:
    """The partition's newest committed batch; the files of an uncommitted batch (one whose
    pending record is past the newest marker) are deleted, and the pending record with them."""
    newest = newest_marker(storage, topic, partition)
    pending_rel = archive.pending_path(topic, partition)
    try:
        pending = Marker.from_json(storage.read(pending_rel))
    except FileNotFoundError:
        return Recovered(newest)
    except (ValueError, KeyError, TypeError):
        # A pending record is written atomically; an unreadable one is not ours to trust.
        raise ValueError(
            f"{storage.location(pending_rel)} is unreadable; remove it after checking the "
            "partition's data files above its newest commit marker"
        ) from None
    removed: list[str] = []
    committed_last = -1 if newest is None else newest.last_offset
    if pending.last_offset > committed_last:
        for entry in pending.files:
            if entry.first_offset > committed_last:
                storage.delete(entry.path)
                removed.append(entry.path)
    storage.delete(pending_rel)
    return Recovered(newest, tuple(removed))
