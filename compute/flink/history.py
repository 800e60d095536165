"""One source for history and live: a content topic read from the archive, then from Kafka.

    archive (commit markers -> a manifest per partition group) ─FileSource (rate-limited)─┐
                                                                                          ├ HybridSource ─▶ Row
    Kafka, from each partition's last archived offset + 1 ────────────────KafkaSource ────┘
        ─▶ filter (before the start, from the end, tombstones) ─▶ the operators

Both legs yield ``Row(partition, offset, timestamp_ms, key, value)``, the input row every
source of the job yields (Java classes in compute/flink/java, built by
compute.flink.connectors: PyFlink alone cannot give a file leg and a Kafka leg one element
type). The archive leg has one split per group of partitions (as many groups as the job's
parallelism, at most one per partition); a split merges its partitions by Kafka timestamp and
each partition stays in offset order. Watermarks are assigned at the source from the record's
Kafka timestamp on both legs; with two or more topics Flink's watermark alignment keeps their
event times within ``compute.history_max_drift_seconds``. docs/history.md, "Unified source".
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pyflink.common import WatermarkStrategy
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.datastream.connectors import Source
from pyflink.datastream.connectors.file_system import FileSource, StreamFormat
from pyflink.datastream.connectors.hybrid_source import HybridSource
from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer
from pyflink.java_gateway import get_gateway
from pyflink.util.java_utils import get_java_class

from compute.flink import operators as ops
from contract.archive import ArchiveRoot, archive_root, archived_partitions, partition_history
from contract.errors import InvalidArgumentError
from contract.settings import Settings

MANIFESTS_DIR = "_manifests"


@dataclass
class TopicPlan:
    """How one topic is read: the manifests of its archived partitions (URIs), where Kafka
    starts per partition, and what the first Python step drops (before the start)."""

    topic: str
    manifests: dict[int, list[list[str]]] = field(default_factory=dict)  # partition -> batches
    kafka_offsets: dict[int, int] = field(default_factory=dict)
    from_timestamp_ms: int | None = None
    from_offsets: dict[int, int] = field(default_factory=dict)


def _ms(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def start_timestamp_ms(settings: Settings) -> int | None:
    return _ms(settings.compute.history_from)


def until_timestamp_ms(settings: Settings) -> int | None:
    """Records with a Kafka timestamp from then on are dropped (a backfill's ``--until``)."""
    return _ms(settings.compute.history_until)


def plan_topic(
    root: ArchiveRoot,
    topic: str,
    partitions: Sequence[int],
    *,
    from_timestamp_ms: int | None,
    from_offsets: dict[int, int],
    kafka_start: dict[int, int],
    topic_id: str | None = None,
) -> TopicPlan:
    """The plan for ``topic``: archived partitions read their committed files (from the first
    one that can hold a record at or after the start), then Kafka from their last archived
    offset + 1 (or later: ``kafka_start``, the first offset Kafka has at/after the start);
    partitions without an archive start in Kafka at ``kafka_start``.

    InvalidArgumentError if the archive was written from another incarnation of the topic
    than the broker's (``topic_id``): a topic deleted and created again starts its offsets
    over, so the archive's end says nothing about where Kafka continues.
    """
    plan = TopicPlan(topic, from_timestamp_ms=from_timestamp_ms, from_offsets=dict(from_offsets))
    archived = set(archived_partitions(root, topic))
    for p in sorted(set(partitions) | archived):
        history = (
            partition_history(
                root, topic, p, from_timestamp_ms=from_timestamp_ms, from_offset=from_offsets.get(p)
            )
            if p in archived
            else None
        )
        if history is not None and topic_id and history.topic_id and history.topic_id != topic_id:
            raise InvalidArgumentError(
                f"the archive of {topic} (partition {p}) was written from topic id "
                f"{history.topic_id}, but {topic} is now topic id {topic_id}: it was deleted "
                f"and created again, so its offsets do not continue the archive. Move "
                f"{root.uri_of(topic)} aside (or use another archive.root) to read the new "
                "topic from Kafka alone"
            )
        start = kafka_start.get(p, 0)
        if history is not None:
            if history.batches:
                plan.manifests[p] = [[root.uri_of(f.path) for f in b] for b in history.batches]
            start = max(start, history.last_offset + 1)
        plan.kafka_offsets[p] = start
    return plan


def current_topic_id(settings: Settings, topic: str) -> str | None:
    """The broker's id of ``topic`` now (None if the broker does not say)."""
    from confluent_kafka.admin import AdminClient

    from contract.kafka import admin_config
    from contract.topics import topic_ids

    admin = AdminClient(admin_config(settings.kafka, f"{settings.compute.job_name}-history"))
    return topic_ids(admin, [topic], timeout_seconds=30).get(topic)


def kafka_start_offsets(
    settings: Settings, topic: str, from_timestamp_ms: int | None, from_offsets: dict[int, int]
) -> dict[int, int]:
    """Per partition of ``topic``: the first offset at or after the start (the first with a
    timestamp >= ``from_timestamp_ms``, else the explicit offset, else the beginning)."""
    from confluent_kafka import Consumer, TopicPartition

    from contract.kafka import consumer_config

    kafka = settings.kafka
    consumer = Consumer(
        consumer_config(
            kafka, f"{settings.compute.job_name}-history", f"gss-history-{uuid.uuid4()}"
        )
    )
    try:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        if meta.error is not None:
            raise InvalidArgumentError(f"cannot read topic {topic}: {meta.error}")
        out: dict[int, int] = {}
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            if from_timestamp_ms is not None:
                (found,) = consumer.offsets_for_times(
                    [TopicPartition(topic, p, from_timestamp_ms)], timeout=30
                )
                out[p] = high if found.offset < 0 else found.offset
            else:
                out[p] = min(max(low, from_offsets.get(p, low)), high)
        return out
    finally:
        consumer.close()


def manifest_groups(plan: TopicPlan, splits: int) -> list[str]:
    """The manifests' texts: the archived partitions dealt round-robin into at most ``splits``
    groups, a line per batch (``partition<TAB>file URI<TAB>...``), each partition's batches in
    offset order (gss.flink.ArchiveManifestRowFormat reads them)."""
    partitions = sorted(plan.manifests)
    count = max(1, min(splits, len(partitions)))
    return [
        "".join(
            "\t".join([str(p), *batch]) + "\n"
            for p in partitions[g::count]
            for batch in plan.manifests[p]
        )
        for g in range(count)
        if partitions[g::count]
    ]


def _write_manifests(root: ArchiveRoot, settings: Settings, plan: TopicPlan) -> list[str]:
    """The plan's manifests (:func:`manifest_groups`, one per parallel reader) under
    ``<root>/_manifests/<job>/<run>/<topic>/``; their URIs."""
    if not plan.manifests:
        return []
    run = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    base = f"{MANIFESTS_DIR}/{settings.compute.job_name}/{run}/{plan.topic}"
    root.fs.create_dir(root.path(base), recursive=True)
    uris = []
    for g, text in enumerate(manifest_groups(plan, settings.compute.parallelism)):
        rel = f"{base}/group-{g}.manifest"
        with root.fs.open_output_stream(root.path(rel)) as out:
            out.write(text.encode())
        uris.append(root.uri_of(rel))
    return uris


def java_class(name: str) -> Any:
    """A class of the JVM by its dotted name (GSS's own connector classes among them)."""
    obj = get_gateway().jvm
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _offsets(topic: str, offsets: dict[int, int]) -> KafkaOffsetsInitializer:
    """OffsetsInitializer.offsets with the UNSHADED Kafka classes (PyFlink's own helper names
    the SQL jar's shaded ones); HashMapWrapper makes the offsets Java Longs."""
    jvm = get_gateway().jvm
    j_map = jvm.org.apache.flink.python.util.HashMapWrapper(None, get_java_class(jvm.Long))
    for p, offset in offsets.items():
        j_map.put(jvm.org.apache.kafka.common.TopicPartition(topic, p), offset)
    init = jvm.org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer
    return KafkaOffsetsInitializer(
        init.offsets(
            j_map.asMap(), jvm.org.apache.kafka.clients.consumer.OffsetResetStrategy.EARLIEST
        )
    )


def watermarks(settings: Settings, aligned: bool) -> WatermarkStrategy:
    """At the source, from the record's Kafka timestamp (both legs); aligned across topics."""
    jvm = get_gateway().jvm
    compute = settings.compute
    strategy = (
        jvm.org.apache.flink.api.common.eventtime.WatermarkStrategy.forMonotonousTimestamps()
        .withTimestampAssigner(java_class("gss.flink.KafkaRowDeserializer$RowTimestamps")())
        .withIdleness(jvm.java.time.Duration.ofMillis(int(compute.idle_source_seconds * 1000)))
    )
    if aligned:
        strategy = strategy.withWatermarkAlignment(
            f"{compute.job_name}-history",
            jvm.java.time.Duration.ofMillis(int(compute.history_max_drift_seconds * 1000)),
            jvm.java.time.Duration.ofMillis(1000),
        )
    return WatermarkStrategy(strategy)


def _file_source(manifests: list[str], rate_per_second: float | None) -> Source:
    """The archive leg: the manifests' files, rate-limited when a rate is set."""
    fmt = StreamFormat(java_class("gss.flink.ArchiveManifestRowFormat")())
    files: Source = FileSource.for_record_stream_format(fmt, *manifests).build()
    if rate_per_second:
        files = Source(
            java_class("gss.flink.RateLimitedSource")(
                files.get_java_function(), float(rate_per_second)
            )
        )
    return files


def history_stream(
    env: StreamExecutionEnvironment,
    settings: Settings,
    topic: str,
    *,
    aligned: bool,
    kafka_builder: Any,
    uid: str,
) -> DataStream:
    """The topic's records from the start, history then live, as input rows (the element
    type every source of the job gives the operators). GSS's connector jar must be on the
    context class loader (compute.flink.job.content_source puts it there)."""
    compute = settings.compute
    from_ts = start_timestamp_ms(settings)
    if compute.history_bounded and from_ts is None and not compute.history_positions:
        raise InvalidArgumentError("a bounded history run needs a start (history_from)")
    from_offsets = dict(compute.history_positions.get(topic, {}))
    root = archive_root(settings.archive)
    kafka_start = kafka_start_offsets(settings, topic, from_ts, from_offsets)
    plan = plan_topic(
        root,
        topic,
        list(kafka_start),
        from_timestamp_ms=from_ts,
        from_offsets=from_offsets,
        kafka_start=kafka_start,
        topic_id=current_topic_id(settings, topic),
    )
    kafka_builder = kafka_builder.set_starting_offsets(_offsets(topic, plan.kafka_offsets))
    kafka_builder._j_builder.setDeserializer(java_class("gss.flink.KafkaRowDeserializer")())
    kafka = kafka_builder.build()
    manifests = _write_manifests(root, settings, plan)
    if compute.history_bounded:
        # Stop at the switch point: the archive alone, a bounded source (its end is the
        # archive's last committed offsets, from the markers), and no Kafka leg.
        if not manifests:
            raise InvalidArgumentError(
                f"nothing of {topic} is archived from the start on (archive.root "
                f"{root.uri_of('')}): nothing to backfill; run with --continue-live to read Kafka"
            )
        source: Source = _file_source(manifests, compute.history_rate_per_second)
        name = f"history {topic} (until the switch point)"
    elif manifests:
        files = _file_source(manifests, compute.history_rate_per_second)
        source = HybridSource.builder(files).add_source(kafka).build()
        name = f"history and live {topic}"
    else:
        source, name = kafka, f"live {topic} (no history archived)"
    rows = env.from_source(source, watermarks(settings, aligned), name, ops.input_row_type()).uid(
        uid
    )
    return rows.filter(ops.KeepFrom(from_ts, from_offsets, until_timestamp_ms(settings))).name(
        f"from start {topic}"
    )
