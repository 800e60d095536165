"""Prometheus metrics of the changelog ingester, the outbox and its publisher.

Ingest lag is reported in time, and in records per hosted partition
(``gss_changelog_lag_records``, from the end offsets of the consumer's own fetch responses, so
no extra round trip; the local broker under-reports them: docs/events.md, its quirks).
``gss_changelog_apply_delay_seconds`` (record timestamp to commit) grows when the ingester falls
behind; ``gss_changelog_last_record_timestamp_seconds`` shows a partition that stopped moving.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

CHANGELOG_RECORDS = Counter(
    "gss_changelog_records_total",
    "Changelog records consumed, by galaxy and outcome (applied, skipped, dead_lettered).",
    ["galaxy", "outcome"],
)
DEAD_LETTERS = Counter(
    "gss_dead_letters_total",
    "Changelog records sent to the dead-letter topic, by galaxy and reason.",
    ["galaxy", "reason"],
)
CHANGELOG_APPLY_DELAY = Histogram(
    "gss_changelog_apply_delay_seconds",
    "From the oldest record of a committed batch's timestamp to the commit (the ingest lag, in time).",
    ["galaxy"],
    buckets=DELAY_BUCKETS,
)
CHANGELOG_LAST_RECORD_TIMESTAMP = Gauge(
    "gss_changelog_last_record_timestamp_seconds",
    "Timestamp of the newest changelog record applied, by galaxy (Unix seconds).",
    ["galaxy"],
)
CHANGELOG_OFFSET_RESETS = Counter(
    "gss_changelog_offset_resets_total",
    "Times a changelog topic was found recreated and its offsets started over.",
    ["galaxy"],
)
CHANGELOG_LAG = Gauge(
    "gss_changelog_lag_records",
    "Records of a hosted changelog partition not applied yet: the end offset of the broker's "
    "last fetch response minus the next offset to apply (readiness follows it).",
    ["galaxy", "partition"],
)
OUTBOX_ENTRIES = Gauge(
    "gss_outbox_entries",
    "Outbox entries committed and not yet acknowledged by the broker (the outbox depth).",
)
OUTBOX_PUBLISHED = Counter(
    "gss_outbox_published_total",
    "Outbox entries acknowledged by the broker, by galaxy and topic kind (available, dlq).",
    ["galaxy", "kind"],
)
OUTBOX_PUBLISH_FAILURES = Counter(
    "gss_outbox_publish_failures_total",
    "Outbox deliveries that failed (they are sent again by a fresh producer).",
)
EVENT_PUBLISH_DELAY = Histogram(
    "gss_event_publish_delay_seconds",
    "From the commit of the oldest entry acknowledged in a round to the acknowledgement.",
    buckets=DELAY_BUCKETS,
)
