"""Where archive files go, what they are called, and the record format inside them.

    <root>/<topic>/date=YYYY-MM-DD/hour=HH/partition=P/<first:020d>-<last:020d>.jsonl.gz
    <root>/_commits/<topic>/partition=P/<last:020d>.json       one commit marker per batch
    <root>/_commits/<topic>/partition=P/_pending.json          the batch being written

Date and hour are the record's Kafka timestamp in UTC; first/last are the offsets of the first
and last record IN the file (zero-padded, so names sort by offset). Each line of a file is one
Kafka record as JSON (:func:`encode_record`); docs/history.md describes the format.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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

# confluent_kafka's timestamp types: 0 none, 1 create time, 2 log-append time.
TIMESTAMP_TYPES = {0: "none", 1: "create", 2: "log_append"}
_TIMESTAMP_TYPE_CODES = {v: k for k, v in TIMESTAMP_TYPES.items()}


@dataclass(frozen=True, slots=True)
class ArchivedRecord:
    """One Kafka record as archived."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    timestamp_type: str  # "create", "log_append" or "none"
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()

    @property
    def hour(self) -> datetime:
        """The UTC hour the record lands in (records without a timestamp: 1970-01-01 00h)."""
        return hour_of(self.timestamp_ms)


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


# -- the record format ------------------------------------------------------------------------


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text, validate=True)


def encode_record(record: ArchivedRecord) -> bytes:
    """One JSON line (with its newline): keys in a fixed order, bytes in base64."""
    doc = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
        "timestamp_type": record.timestamp_type,
        "key": _b64(record.key),
        "value": _b64(record.value),
        "headers": [[name, _b64(value)] for name, value in record.headers],
    }
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def decode_record(line: bytes | str) -> ArchivedRecord:
    """The record of one JSON line; ValueError (or KeyError/TypeError) if malformed."""
    doc: dict[str, Any] = json.loads(line)
    ts_type = doc["timestamp_type"]
    if ts_type not in _TIMESTAMP_TYPE_CODES:
        raise ValueError(f"unknown timestamp_type {ts_type!r}")
    headers = tuple((str(name), _unb64(value)) for name, value in doc["headers"])
    offset, partition, ts = doc["offset"], doc["partition"], doc["timestamp_ms"]
    if not all(isinstance(v, int) for v in (offset, partition, ts)):
        raise ValueError("offset, partition and timestamp_ms must be integers")
    return ArchivedRecord(
        topic=str(doc["topic"]),
        partition=partition,
        offset=offset,
        timestamp_ms=ts,
        timestamp_type=ts_type,
        key=_unb64(doc["key"]),
        value=_unb64(doc["value"]),
        headers=headers,
    )


def encode_file(records: Iterable[ArchivedRecord], compression_level: int = 6) -> bytes:
    """A whole .jsonl.gz file. ``mtime=0``: the same records always give the same bytes."""
    return gzip.compress(
        b"".join(encode_record(r) for r in records), compresslevel=compression_level, mtime=0
    )


def decode_file(data: bytes) -> Iterator[ArchivedRecord]:
    """The records of a .jsonl.gz file's bytes (gzip and JSON errors propagate)."""
    for line in gzip.decompress(data).splitlines():
        if line:
            yield decode_record(line)
