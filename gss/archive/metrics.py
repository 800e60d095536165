"""Prometheus metrics of the topic archiver."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ARCHIVE_RECORDS = Counter(
    "gss_archive_records_total", "Records archived (in committed batches), by topic.", ["topic"]
)
ARCHIVE_COMMITTED_OFFSET = Gauge(
    "gss_archive_committed_offset",
    "Last offset of the newest committed batch, by topic and partition.",
    ["topic", "partition"],
)
ARCHIVE_FILES = Counter("gss_archive_files_total", "Data files written in committed batches.")
ARCHIVE_ERRORS = Counter(
    "gss_archive_errors_total",
    "Archiver failures, by reason (broker, storage, topic_recreated, offset_reset, kafka_commit).",
    ["reason"],
)
ARCHIVE_LAST_RECORD_TIMESTAMP = Gauge(
    "gss_archive_last_record_timestamp_seconds",
    "Newest record timestamp in a committed batch, by topic (Unix seconds).",
    ["topic"],
)
