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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# The layout (paths, names, offsets in names) is the contract's (contract/archive.py), shared
# with the compute job's history source; this module holds the record format.
from contract.archive import hour_of

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
