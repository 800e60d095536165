"""What the archive holds, per topic and partition, from the newest commit marker of each."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from contract import archive
from gss.archive import commits
from gss.archive.storage import ArchiveStorage


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    topic: str
    partition: int
    topic_id: str
    first_offset: int
    last_offset: int
    records: int
    files: int
    batches: int
    bytes: int
    min_timestamp_ms: int
    max_timestamp_ms: int
    committed_at: str
    # An interrupted batch is waiting to be cleaned up by the next archiver start.
    pending: bool

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["min_timestamp"] = _iso(self.min_timestamp_ms)
        doc["max_timestamp"] = _iso(self.max_timestamp_ms)
        return doc


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(max(ms, 0) / 1000, UTC).isoformat(timespec="milliseconds")


def _pending_last(storage: ArchiveStorage, topic: str, partition: int) -> int:
    """Last offset of the partition's pending batch record (the newest batch's own when it was
    committed; higher when a batch was interrupted)."""
    try:
        return archive.Marker.from_json(
            storage.read(archive.pending_path(topic, partition))
        ).last_offset
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return -1


def archive_status(
    storage: ArchiveStorage, topics: list[str] | None = None
) -> list[PartitionStatus]:
    """One entry per archived partition (of ``topics``, default all), sorted."""
    out = []
    for topic in topics if topics is not None else commits.archived_topics(storage):
        for partition in commits.archived_partitions(storage, topic):
            newest = commits.newest_marker(storage, topic, partition)
            if newest is None:
                continue
            names = storage.list_files(archive.commits_dir(topic, partition))
            t = newest.totals
            out.append(
                PartitionStatus(
                    topic=topic,
                    partition=partition,
                    topic_id=newest.topic_id,
                    first_offset=t.first_offset,
                    last_offset=t.last_offset,
                    records=t.records,
                    files=t.files,
                    batches=t.batches,
                    bytes=t.bytes,
                    min_timestamp_ms=t.min_timestamp_ms,
                    max_timestamp_ms=t.max_timestamp_ms,
                    committed_at=newest.committed_at,
                    pending=archive.PENDING_NAME in names
                    and _pending_last(storage, topic, partition) > newest.last_offset,
                )
            )
    return out
