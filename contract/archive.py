"""The topic archive's layout and commit markers (docs/history.md): where files go, what they
are called, what a commit marker holds, and which committed files a reader of one partition
reads, in offset order.

    <root>/<topic>/date=YYYY-MM-DD/hour=HH/partition=P/<first:020d>-<last:020d>.jsonl.gz
    <root>/_commits/<topic>/partition=P/<last:020d>.json       one commit marker per batch
    <root>/_commits/<topic>/partition=P/_pending.json          the batch being written

Date and hour are the record's Kafka timestamp in UTC; first/last are the offsets of the first
and last record IN the file (zero-padded, so names sort by offset). The archiver and reader
(``gss.archive``) and the compute job's history source (``compute.flink.history``) both take
them from here. The record format inside the files is ``gss.archive.layout``'s.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from contract.settings import ArchiveSettings

FORMAT_VERSION = 1
COMMITS_DIR = "_commits"
PENDING_NAME = "_pending.json"
DATA_SUFFIX = ".jsonl.gz"
OFFSET_DIGITS = 20

_DATA_NAME = re.compile(r"^(\d{20})-(\d{20})\.jsonl\.gz$")
_MARKER_NAME = re.compile(r"^(\d{20})\.json$")
_DATA_PATH = re.compile(
    r"^(?P<topic>[^/]+)/date=(?P<date>\d{4}-\d{2}-\d{2})/hour=(?P<hour>\d{2})/"
    r"partition=(?P<partition>\d+)/(?P<first>\d{20})-(?P<last>\d{20})\.jsonl\.gz$"
)


@dataclass(frozen=True, slots=True)
class DataFile:
    """A data file's place: topic, hour, partition, and the first/last offsets it holds."""

    topic: str
    hour: datetime
    partition: int
    first_offset: int
    last_offset: int

    @property
    def path(self) -> str:
        return data_path(self.topic, self.hour, self.partition, self.first_offset, self.last_offset)


def check_topic(topic: str) -> str:
    if not topic or "/" in topic or topic.startswith(("_", ".")):
        raise ValueError(f"cannot archive topic {topic!r}: it would not make a directory name")
    return topic


def hour_of(timestamp_ms: int) -> datetime:
    ts = max(0, timestamp_ms)
    return datetime.fromtimestamp(ts // 1000, UTC).replace(minute=0, second=0, microsecond=0)


def data_name(first_offset: int, last_offset: int) -> str:
    if first_offset < 0 or last_offset < first_offset:
        raise ValueError(f"bad offset range {first_offset}-{last_offset}")
    return f"{first_offset:020d}-{last_offset:020d}{DATA_SUFFIX}"


def partition_dir(topic: str, hour: datetime, partition: int) -> str:
    return f"{check_topic(topic)}/date={hour:%Y-%m-%d}/hour={hour:%H}/partition={partition}"


def data_path(topic: str, hour: datetime, partition: int, first: int, last: int) -> str:
    """A data file's path relative to the archive root."""
    return f"{partition_dir(topic, hour, partition)}/{data_name(first, last)}"


def parse_data_path(path: str) -> DataFile:
    """The place a relative data-file path names; ValueError if it is not one."""
    m = _DATA_PATH.match(path)
    if not m:
        raise ValueError(f"{path!r} is not an archive data file path")
    hour = datetime.strptime(f"{m['date']} {m['hour']}", "%Y-%m-%d %H").replace(tzinfo=UTC)
    return DataFile(m["topic"], hour, int(m["partition"]), int(m["first"]), int(m["last"]))


def parse_data_name(name: str) -> tuple[int, int]:
    m = _DATA_NAME.match(name)
    if not m:
        raise ValueError(f"{name!r} is not an archive data file name")
    return int(m[1]), int(m[2])


def commits_dir(topic: str, partition: int) -> str:
    return f"{COMMITS_DIR}/{check_topic(topic)}/partition={partition}"


def marker_path(topic: str, partition: int, last_offset: int) -> str:
    return f"{commits_dir(topic, partition)}/{last_offset:020d}.json"


def pending_path(topic: str, partition: int) -> str:
    return f"{commits_dir(topic, partition)}/{PENDING_NAME}"


def parse_marker_name(name: str) -> int | None:
    """The last offset a commit marker's file name carries; None for other names."""
    m = _MARKER_NAME.match(name)
    return int(m[1]) if m else None


# -- commit markers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One data file of a batch."""

    path: str  # relative to the archive root
    first_offset: int
    last_offset: int
    records: int
    bytes: int
    min_timestamp_ms: int
    max_timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Totals:
    """A partition's archive so far (every committed batch, the newest included)."""

    first_offset: int
    last_offset: int
    records: int
    files: int
    batches: int
    bytes: int
    min_timestamp_ms: int
    max_timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Marker:
    """A committed batch (or, as ``_pending.json``, one being written)."""

    topic: str
    partition: int
    topic_id: str
    # The batch covers offsets from_offset..last_offset: from_offset is where the previous
    # batch ended + 1 (offsets Kafka skips, such as transaction markers, hold no record).
    from_offset: int
    first_offset: int
    last_offset: int
    records: int
    min_timestamp_ms: int
    max_timestamp_ms: int
    committed_at: str
    files: tuple[FileEntry, ...]
    totals: Totals
    format: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        doc = asdict(self)
        doc["files"] = [asdict(f) for f in self.files]
        return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Marker:
        doc = json.loads(data)
        doc["files"] = tuple(FileEntry(**f) for f in doc["files"])
        doc["totals"] = Totals(**doc["totals"])
        return cls(**doc)


# -- the archive root as a pyarrow file system ------------------------------------------------


def s3_filesystem(settings: ArchiveSettings) -> Any:
    """A ``pyarrow.fs.S3FileSystem`` from the archive's s3_* settings."""
    try:
        from pyarrow import fs as pafs
    except ImportError as exc:  # pragma: no cover - the archive extra brings it
        raise RuntimeError(
            "an object-store archive needs pyarrow: pip install 'galaxy-signal-service[archive]'"
        ) from exc
    options: dict[str, Any] = {}
    if settings.s3_endpoint:
        endpoint = settings.s3_endpoint
        scheme = "https"
        if "://" in endpoint:
            scheme, endpoint = endpoint.split("://", 1)
        options.update(endpoint_override=endpoint.rstrip("/"), scheme=scheme)
    if settings.s3_region:
        options["region"] = settings.s3_region
    if settings.s3_access_key and settings.s3_secret_key:
        options.update(access_key=settings.s3_access_key, secret_key=settings.s3_secret_key)
    return pafs.S3FileSystem(**options)


@dataclass(frozen=True)
class ArchiveRoot:
    """The archive root as a ``pyarrow.fs`` file system, the root's path in it, and the URI
    other readers (Flink's file systems) name it by."""

    fs: Any
    base: str
    uri: str

    def path(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def uri_of(self, rel: str) -> str:
        return f"{self.uri}/{rel}"


def archive_root(settings: ArchiveSettings) -> ArchiveRoot:
    """``settings.root`` (a path, file://, s3://bucket/prefix or another pyarrow URI) opened."""
    from pyarrow import fs as pafs

    root = settings.root
    parsed = urlparse(root)
    if "://" not in root or parsed.scheme == "file":
        local = Path(parsed.path if "://" in root else root).resolve()
        return ArchiveRoot(pafs.LocalFileSystem(), str(local), local.as_uri())
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"archive root {root!r} names no bucket (s3://bucket/prefix)")
        base = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
        return ArchiveRoot(s3_filesystem(settings), base, root.rstrip("/"))
    fs, base = pafs.FileSystem.from_uri(root)
    return ArchiveRoot(fs, base.rstrip("/"), root.rstrip("/"))


# -- what a reader of a partition reads -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartitionHistory:
    """One partition's committed files a reader needs, batch by batch in offset order, and the
    partition's last committed offset (the live topic continues at ``last_offset + 1``).

    The files of one batch may interleave (a late record goes to its own, earlier hour's
    file): a reader keeping offset order merges each batch's files by offset."""

    topic: str
    partition: int
    batches: tuple[tuple[FileEntry, ...], ...]
    last_offset: int
    topic_id: str

    @property
    def files(self) -> tuple[FileEntry, ...]:
        return tuple(f for batch in self.batches for f in batch)


def _listing(root: ArchiveRoot, rel_dir: str) -> list[Any]:
    from pyarrow import fs as pafs

    selector = pafs.FileSelector(root.path(rel_dir), allow_not_found=True, recursive=False)
    try:
        infos: list[Any] = root.fs.get_file_info(selector)
    except FileNotFoundError:
        return []
    return [i for i in infos if not i.base_name.startswith(".")]


def archived_partitions(root: ArchiveRoot, topic: str) -> list[int]:
    from pyarrow import fs as pafs

    return sorted(
        int(i.base_name.split("=", 1)[1])
        for i in _listing(root, f"{COMMITS_DIR}/{check_topic(topic)}")
        if i.type == pafs.FileType.Directory and i.base_name.startswith("partition=")
    )


def partition_history(
    root: ArchiveRoot,
    topic: str,
    partition: int,
    *,
    from_timestamp_ms: int | None = None,
    from_offset: int | None = None,
) -> PartitionHistory | None:
    """The partition's committed batches (their files, as the commit markers name them: data
    directories are never listed) a reader starting at ``from_timestamp_ms`` and/or ``from_offset`` needs, in
    offset order; None when nothing of the partition is committed.

    A file is left out when it holds only records before the start: its last offset is below
    ``from_offset``, or its newest timestamp is below ``from_timestamp_ms``. The files kept
    may still hold earlier records; the reader filters those out record by record.
    """
    from pyarrow import fs as pafs

    names = [
        i.base_name
        for i in _listing(root, commits_dir(topic, partition))
        if i.type == pafs.FileType.File
    ]
    offsets = sorted(o for n in names if (o := parse_marker_name(n)) is not None)
    if not offsets:
        return None
    batches: list[tuple[FileEntry, ...]] = []
    topic_id = ""
    for last in offsets:
        rel = marker_path(topic, partition, last)
        with root.fs.open_input_stream(root.path(rel)) as f:
            try:
                marker = Marker.from_json(f.read())
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"commit marker {root.uri_of(rel)} is unreadable: {exc}") from exc
        topic_id = marker.topic_id
        kept = tuple(
            entry
            for entry in sorted(marker.files, key=lambda e: e.first_offset)
            if (from_offset is None or entry.last_offset >= from_offset)
            and (from_timestamp_ms is None or entry.max_timestamp_ms >= from_timestamp_ms)
        )
        if kept:
            batches.append(kept)
    return PartitionHistory(topic, partition, tuple(batches), offsets[-1], topic_id)
