"""The Flink job: one DataStream pipeline built from the bound plugins.

    content topic ─KafkaSource─▶ batches ─▶ map plugins (chained to the source) ──────┐
                  └──────────▶ model plugins (async, batched Triton calls) ────────┤
                  └─▶ batches ─▶ extract ─▶ watermarks ─▶ key by entity ─▶ windows ┤
    gss.<galaxy>.changelog ─▶ batches ─▶ join inputs (keyed by entity, TTL state) ─┼─▶ KafkaSink
                                  └─▶ match buckets ─▶ gather (Match joins) ───────┘ (changelogs, DLQs)

Every branch ends in rows ``(topic, key, value)``: a signal record for the galaxy's
changelog or a dead letter for its DLQ, all written by one KafkaSink that picks the topic
per row. Sources read from the job's committed offsets (consumer group = job name), else
from ``compute.start_from``; checkpoints commit offsets and snapshot window and join state.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pyflink.common import Configuration, Duration, Time, Types, WatermarkStrategy
from pyflink.common.serialization import RowFieldExtractorSchema
from pyflink.datastream import DataStream, OutputTag, StreamExecutionEnvironment
from pyflink.datastream.async_data_stream import AsyncDataStream
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetsInitializer,
    KafkaRecordSerializationSchema,
    KafkaSink,
    KafkaSource,
)
from pyflink.datastream.window import SlidingEventTimeWindows, TumblingEventTimeWindows
from pyflink.java_gateway import get_gateway
from pyflink.util.java_utils import add_jars_to_context_class_loader, get_java_class

from compute import execution
from compute.binding import Bound
from compute.flink import gateway, history
from compute.flink import operators as ops
from compute.flink.connectors import ensure_connectors
from compute.flink.jars import ensure_jars
from compute.plugin import Shape, Sliding
from contract.errors import InvalidArgumentError
from contract.kafka import java_security_properties
from contract.settings import Settings

# Python operators hand their output to Flink at the end of a bundle, and each bundle's end
# costs a round trip between the JVM and the Python worker. 50 ms (PyFlink's default is
# 1 s) measured best here: each Python step adds at most that much latency, while shorter
# bundles cut the join's throughput (docs/compute.md, "Performance").
BUNDLE_TIME_MS = 50
BUNDLE_SIZE = 100_000
# Keyed state the Python worker keeps (PyFlink's default: 1,000). A join touches a new
# entity's and seven match buckets' state per image; a miss or an eviction is a blocking
# round trip to the JVM. 50,000 cut the join's CPU per image by a fifth (docs/compute.md).
STATE_CACHE_ENTRIES = 50_000
_WORKER_MODE = "_python_worker_execution_mode"


def flink_configuration(settings: Settings) -> Configuration:
    """The Flink configuration of the job for ``settings.compute`` (docs/compute.md)."""
    compute = settings.compute
    if compute.mode in ("local", "remote"):
        gateway.share_class_loader()  # before the jars below reach the gateway's loader
    conf = Configuration()
    values: dict[str, str] = {
        "pipeline.name": compute.job_name,
        "parallelism.default": str(compute.parallelism),
        "execution.checkpointing.interval": f"{int(compute.checkpoint_interval_seconds * 1000)} ms",
        "state.backend.type": compute.state_backend,
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": str(compute.restart_attempts),
        "restart-strategy.fixed-delay.delay": f"{int(compute.restart_delay_seconds * 1000)} ms",
        "python.fn-execution.bundle.time": str(BUNDLE_TIME_MS),
        "python.fn-execution.bundle.size": str(BUNDLE_SIZE),
        "python.state.cache-size": str(STATE_CACHE_ENTRIES),
        "pipeline.auto-watermark-interval": "100 ms",
    }
    if compute.unaligned_checkpoints:
        # Barriers overtake in-flight records: a branch that lags (a join or window catching
        # up) no longer holds the others' outputs at the sink until its barrier arrives.
        values["execution.checkpointing.unaligned.enabled"] = "true"
    checkpoint_dir = compute.checkpoint_dir
    if not checkpoint_dir and compute.mode == "local":
        # Join and window state outgrow the JobManager-memory storage's 5 MB limit quickly.
        checkpoint_dir = (Path("gss-data") / "flink-checkpoints").resolve().as_uri()
    if checkpoint_dir:
        values["execution.checkpointing.dir"] = checkpoint_dir
        if compute.backfill:
            # A killed backfill resumes from its last completed checkpoint (docs/history.md,
            # "Backfill"): keep checkpoints when the job is cancelled, restore the newest.
            values["execution.checkpointing.externalized-checkpoint-retention"] = (
                "RETAIN_ON_CANCELLATION"
            )
            resume = latest_checkpoint(checkpoint_dir)
            if resume is not None:
                values["execution.state-recovery.path"] = resume
                values["execution.state-recovery.ignore-unclaimed-state"] = "true"
    if compute.mode in ("local", "remote"):
        # The connector jars travel with the job (uploaded to a remote cluster with it); in
        # application mode the image has them in /opt/flink/lib.
        jars = [*ensure_jars(compute.jars_dir), ensure_connectors(compute.jars_dir)]
        if compute.mode == "remote":
            # A session cluster has no Python runtime on its classpath (`flink run -py` adds
            # the same jar from opt/ on submit).
            jars.append(_flink_python_jar())
        values["pipeline.jars"] = ";".join(path.resolve().as_uri() for path in jars)
    if compute.mode in ("local", "remote"):
        values["python.executable"] = compute.python_executable or sys.executable
        values["python.client.executable"] = sys.executable
    if compute.mode == "local" and compute.flink_config.get("python.execution-mode") == "thread":
        # Thread mode runs Python inside the JVM (pemja), which starts from the base
        # interpreter's paths, not this environment's: hand it this process's import path.
        values["python.pythonpath"] = os.pathsep.join(p for p in sys.path if p)
    if compute.mode == "local":
        # Flink removes its temporary files only when it closes cleanly; these go where GSS
        # removes them however the JVM ends (compute/flink/gateway.py temp_dir).
        values["io.tmp.dirs"] = str(gateway.temp_dir())
        if compute.stateful_slot_sharing_group:
            # Windows and joins in a slot-sharing group of their own take a slot apart.
            values["taskmanager.numberOfTaskSlots"] = str(2 * compute.parallelism)
        if compute.metrics_port:
            values["metrics.reporter.prom.factory.class"] = (
                "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
            )
            values["metrics.reporter.prom.port"] = str(compute.metrics_port)
    elif compute.mode == "remote":
        if not compute.jobmanager_address or ":" not in compute.jobmanager_address:
            raise InvalidArgumentError(
                "compute.mode=remote needs compute.jobmanager_address as host:port of the "
                f"JobManager's REST endpoint (GSS_COMPUTE__JOBMANAGER_ADDRESS), not {compute.jobmanager_address!r}"
            )
        host, _, port = compute.jobmanager_address.rpartition(":")
        values.update({"execution.target": "remote", "rest.address": host, "rest.port": port})
    values.update(compute.flink_config)
    for key, value in values.items():
        conf.set_string(key, value)
    return conf


def _flink_python_jar() -> Path:
    import pyflink

    (jar,) = (Path(pyflink.__file__).parent / "opt").glob("flink-python-*.jar")
    return jar


def latest_checkpoint(checkpoint_dir: str) -> str | None:
    """The newest completed checkpoint (a ``chk-N`` directory with ``_metadata``) under a
    local ``checkpoint_dir`` (``<dir>/<job id>/chk-N``), as a URI; None if there is none or
    the directory is not local."""
    if "://" in checkpoint_dir and not checkpoint_dir.startswith("file:"):
        return None
    base = Path(checkpoint_dir.removeprefix("file://").removeprefix("file:"))
    done = [m for m in base.glob("*/chk-*/_metadata") if m.is_file()]
    if not done:
        return None
    newest = max(done, key=lambda m: (m.stat().st_mtime, int(m.parent.name[4:] or 0)))
    return newest.parent.resolve().as_uri()


@contextlib.contextmanager
def python_workers(settings: Settings) -> Iterator[None]:
    """Around building and submitting a job: where a local job's Python code runs.

    PyFlink reads ``_python_worker_execution_mode`` whenever it wraps an environment (which
    some operators do while the pipeline is built); unset, a local job runs its Python in
    the calling process ("loopback").
    """
    if settings.compute.mode != "local":
        yield
        return
    previous = os.environ.get(_WORKER_MODE)
    os.environ[_WORKER_MODE] = settings.compute.python_workers
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_WORKER_MODE, None)
        else:
            os.environ[_WORKER_MODE] = previous


def create_environment(settings: Settings) -> StreamExecutionEnvironment:
    """A StreamExecutionEnvironment configured for ``settings.compute``.

    In ``application`` mode the Flink client that runs this code (``flink run``, the
    operator's PythonDriver) provides the cluster; the job settings still apply.
    """
    if settings.compute.mode in ("local", "remote"):
        # Before anything starts the gateway JVM: its own session (its owner stops it, not
        # the terminal's Ctrl-C) and, for a MiniCluster, the metrics reporter on its classpath.
        gateway.own_session()
        if settings.compute.mode == "local" and settings.compute.metrics_port:
            gateway.prepare_local()
    conf = flink_configuration(settings)
    if settings.compute.mode == "remote":
        # get_execution_environment ignores execution.target outside the `flink` CLI and makes
        # a local MiniCluster; Java's constructor picks the executor the target names (remote:
        # the REST endpoint in rest.address/rest.port, with pipeline.jars uploaded).
        j_env = (
            get_gateway().jvm.org.apache.flink.streaming.api.environment.StreamExecutionEnvironment(
                conf._j_configuration
            )
        )
        env = StreamExecutionEnvironment(j_env)
    else:
        env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(settings.compute.parallelism)
    env.enable_checkpointing(int(settings.compute.checkpoint_interval_seconds * 1000))
    if settings.compute.mode == "local":
        env.set_python_executable(sys.executable)
    return env


def _kafka_builder(settings: Settings, topic: str) -> Any:
    """A KafkaSource builder for ``topic`` with the job's group and client properties."""
    kafka = settings.kafka
    if not kafka.bootstrap_servers:
        raise InvalidArgumentError(
            "the compute job needs a broker: set GSS_KAFKA__BOOTSTRAP_SERVERS"
        )
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(kafka.bootstrap_servers)
        .set_topics(topic)
        .set_group_id(settings.compute.job_name)
        .set_client_id_prefix(f"{settings.compute.job_name}-{topic}")
        .set_property("partition.discovery.interval.ms", "10000")
        .set_property("fetch.max.wait.ms", "50")
        .set_property("commit.offsets.on.checkpoint", "true")
    )
    for key, value in {**java_security_properties(kafka), **kafka.client_config}.items():
        builder = builder.set_property(key, value)
    return builder


def kafka_source(settings: Settings, topic: str) -> KafkaSource:
    """``topic``'s records as input rows (operators.input_row_type), from the job's committed
    offsets (else start_from)."""
    builder = _kafka_builder(settings, topic)
    # PyFlink's KafkaOffsetResetStrategy names the shaded Kafka classes of the SQL connector
    # jar; the DataStream connector uses kafka-clients unshaded, so name the enum directly.
    jvm = get_gateway().jvm
    reset = KafkaOffsetsInitializer(
        jvm.org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer.committedOffsets(
            getattr(
                jvm.org.apache.kafka.clients.consumer.OffsetResetStrategy,
                settings.compute.start_from.upper(),
            )
        )
    )
    builder = builder.set_starting_offsets(reset)
    builder._j_builder.setDeserializer(history.java_class("gss.flink.KafkaRowDeserializer")())
    source: KafkaSource = builder.build()
    return source


def content_source(
    env: StreamExecutionEnvironment, settings: Settings, topic: str, topics: int
) -> DataStream:
    """A topic's records as input rows (operators.input_row_type; tombstones are dropped by
    the deserializer): live from Kafka, or (``compute.history_from`` / ``history_positions``)
    the archive then Kafka, through one HybridSource (compute/flink/history.py)."""
    connectors = ensure_connectors(settings.compute.jars_dir).resolve().as_uri()
    add_jars_to_context_class_loader([connectors])
    if not settings.compute.reads_history:
        return env.from_source(
            kafka_source(settings, topic),
            WatermarkStrategy.no_watermarks(),
            f"source {topic}",
            ops.input_row_type(),
        ).uid(_uid("source", topic))
    return history.history_stream(
        env,
        settings,
        topic,
        aligned=topics > 1,
        kafka_builder=_kafka_builder(settings, topic),
        uid=_uid("history-source", topic),
    )


def kafka_sink(settings: Settings) -> KafkaSink:
    """One sink for every row: Row(topic, key, value), the topic chosen per row."""
    kafka = settings.kafka
    assert kafka.bootstrap_servers
    jvm = get_gateway().jvm
    serializer = (
        KafkaRecordSerializationSchema.builder()
        .set_key_serialization_schema(RowFieldExtractorSchema(1))
        .set_value_serialization_schema(RowFieldExtractorSchema(2))
    )
    # The topic is the row's first field, picked in Java. PyFlink's own topic selector would
    # add a Python step before the sink just to compute it.
    serializer._j_builder.setTopicSelector(
        jvm.org.apache.flink.python.util.PythonConnectorUtils.createFirstColumnTopicSelector(
            get_java_class(jvm.org.apache.flink.connector.kafka.sink.TopicSelector)
        )
    )
    exactly_once = settings.compute.delivery_guarantee == "exactly-once"
    builder = (
        KafkaSink.builder()
        .set_bootstrap_servers(kafka.bootstrap_servers)
        .set_delivery_guarantee(
            DeliveryGuarantee.EXACTLY_ONCE if exactly_once else DeliveryGuarantee.AT_LEAST_ONCE
        )
        .set_transactional_id_prefix(settings.compute.job_name)
        .set_property("linger.ms", "5")
    )
    if exactly_once:
        builder = builder.set_property("transaction.timeout.ms", "900000")
    for key, value in {**java_security_properties(kafka), **kafka.client_config}.items():
        builder = builder.set_property(key, value)
    # Set on the Java builder directly: the Python one would re-wrap the serializers for its
    # Python topic selector.
    builder._j_builder.setRecordSerializer(serializer.build()._j_serialization_schema)
    return builder.build()


def _uid(*parts: str) -> str:
    # Stable operator ids keep checkpoints and savepoints restorable across job versions.
    return "gss-" + "-".join(p.replace("/", "_").replace("@", "_v") for p in parts)


def build_pipeline(
    env: StreamExecutionEnvironment, bounds: Sequence[Bound], settings: Settings
) -> None:
    """Add the whole job for ``bounds`` to ``env`` (sources, plugins, sink)."""
    if not bounds:
        raise InvalidArgumentError("no plugins to run: check compute.plugins")
    rows: list[DataStream] = []
    by_topic: dict[str, list[Bound]] = defaultdict(list)
    joins_by_topic: dict[str, list[Bound]] = defaultdict(list)
    for bound in bounds:
        target = joins_by_topic if bound.plugin.join is not None else by_topic
        target[bound.input_topic].append(bound)
    topics = sorted(set(by_topic) | set(joins_by_topic))
    for topic in topics:
        raw = content_source(env, settings, topic, len(topics))
        group = by_topic.get(topic, [])
        rows.extend(_content_branches(raw, topic, group, settings))
        if joins_by_topic.get(topic):
            rows.extend(_join_branches(raw, topic, joins_by_topic[topic], settings))
    sink_input = rows[0].union(*rows[1:]) if len(rows) > 1 else rows[0]
    sink_input.sink_to(kafka_sink(settings)).name("changelogs and dead letters").uid(_uid("sink"))


def _content_branches(
    raw: DataStream, topic: str, group: list[Bound], settings: Settings
) -> list[DataStream]:
    rows: list[DataStream] = []
    # Map plugins that read the topic the same way (schema, entity field, galaxy) share one
    # keyed operator; plugins of the topic that read it differently get their own.
    maps: dict[tuple[str, str, str], list[Bound]] = defaultdict(list)
    for bound in group:
        if bound.plugin.shape is Shape.MAP and bound.plugin.model is None:
            assert bound.plugin.source is not None
            source = bound.plugin.source
            maps[(source.schema.DESCRIPTOR.full_name, source.entity, bound.galaxy)].append(bound)
    for n, same in enumerate(maps.values()):
        suffix = "" if n == 0 else f"-{n}"
        results = (
            _batched(raw, settings, f"{topic}{suffix}")
            .process(ops.RunMaps(same), output_type=ops.batch_type(ops.sink_row_type()))
            .name(f"map plugins of {topic}{suffix}")
            .uid(_uid("maps", topic + suffix))
        )
        rows.append(_flattened(results, f"{topic}{suffix}"))
    for bound in (b for b in group if b.plugin.model is not None):
        rows.append(
            AsyncDataStream.ordered_wait(
                raw,
                ops.RunModel(bound, settings.triton),
                Time.milliseconds(int(settings.compute.model_timeout_seconds * 1000)),
                settings.compute.model_concurrency,
                ops.sink_row_type(),
            )
            .name(f"model plugin {bound.ref}")
            .uid(_uid("model", bound.ref))
        )
    for bound in (b for b in group if b.plugin.shape is Shape.GROUP_BY):
        rows.extend(_group_by(raw, bound, settings))
    return rows


def _batched(stream: DataStream, settings: Settings, name: str) -> DataStream:
    """Input rows in batches for a Python step (gss.flink.RowBatcher, chained to the source)."""
    compute = settings.compute
    batcher = history.java_class("gss.flink.RowBatcher")(
        compute.batch_max_records, int(compute.batch_max_delay_seconds * 1000)
    )
    j_type = ops.batch_type(ops.input_row_type()).get_java_type_info()
    batches = DataStream(stream._j_data_stream.transform(f"batches of {name}", j_type, batcher))
    return batches.uid(_uid("batches", name))


def _flattened(batches: DataStream, name: str) -> DataStream:
    """A Python step's batches of sink rows back into sink rows, in Java."""
    flatten = history.java_class("gss.flink.RowBatcher$Flatten")()
    j_type = ops.sink_row_type().get_java_type_info()
    rows = DataStream(batches._j_data_stream.flatMap(flatten, j_type))
    return rows.name(f"results of {name}").uid(_uid("results", name))


def _group_by(raw: DataStream, bound: Bound, settings: Settings) -> list[DataStream]:
    plugin = bound.plugin
    assert plugin.group_by is not None
    assert plugin.source is not None
    group_by = plugin.group_by
    extracted = (
        _batched(raw, settings, bound.ref)
        .process(ops.Extract(bound))
        .name(f"extract {bound.ref}")
        .uid(_uid("extract", bound.ref))
    )
    watermarks = (
        WatermarkStrategy.for_bounded_out_of_orderness(
            Duration.of_millis(execution.millis(plugin.source.max_out_of_orderness))
        )
        .with_idleness(Duration.of_millis(int(settings.compute.idle_source_seconds * 1000)))
        .with_timestamp_assigner(ops.ItemTime())
    )
    size = Time.milliseconds(execution.millis(group_by.window.size))
    assigner: Any = (
        SlidingEventTimeWindows.of(size, Time.milliseconds(execution.millis(group_by.window.slide)))
        if isinstance(group_by.window, Sliding)
        else TumblingEventTimeWindows.of(size)
    )
    late_tag = OutputTag(f"late-{bound.ref}", Types.PICKLED_BYTE_ARRAY())
    windows = (
        extracted.assign_timestamps_and_watermarks(watermarks)
        .filter(lambda item: item.extracted is not None)
        .key_by(lambda item: item.entity, key_type=Types.PICKLED_BYTE_ARRAY())
        .window(assigner)
    )
    if group_by.early_firing is not None and not settings.compute.reads_history:
        # Live only: over history, processing-time firings would write arbitrary partial
        # values, and a backfill must write the same values every time it runs.
        slide = (
            execution.millis(group_by.window.slide)
            if isinstance(group_by.window, Sliding)
            else None
        )
        lead = execution.millis(plugin.source.max_out_of_orderness) + 1
        windows = windows.trigger(
            ops.EarlyFiring(execution.millis(group_by.early_firing), slide, lead)
        )
    values = (
        windows.allowed_lateness(execution.millis(group_by.allowed_lateness))
        .side_output_late_data(late_tag)
        .aggregate(
            ops.WindowAggregate(bound),
            ops.WindowValue(bound),
            accumulator_type=Types.PICKLED_BYTE_ARRAY(),
            output_type=ops.sink_row_type(),
        )
        .name(f"windows of {bound.ref}")
        .uid(_uid("window", bound.ref))
    )
    if settings.compute.stateful_slot_sharing_group:
        values = values.slot_sharing_group(settings.compute.stateful_slot_sharing_group)
    late = values.get_side_output(late_tag).map(
        ops.LateEvent(bound), output_type=ops.sink_row_type()
    )
    dead = extracted.get_side_output(ops.sink_tag())
    return [values, late, dead]


def _join_branches(
    raw: DataStream, topic: str, joins: list[Bound], settings: Settings
) -> list[DataStream]:
    joined = (
        _batched(raw, settings, f"{topic}-joins")
        .process(ops.JoinUpdates(joins))
        .name(f"join inputs from {topic}")
        .key_by(lambda item: (item[0], item[1].entity), key_type=Types.PICKLED_BYTE_ARRAY())
        .process(ops.JoinInputs(joins), output_type=ops.sink_row_type())
        .name(f"joins on {topic}")
        .uid(_uid("join", topic))
    )
    if settings.compute.stateful_slot_sharing_group:
        # The match steps below take the group of their input.
        joined = joined.slot_sharing_group(settings.compute.stateful_slot_sharing_group)
    rows = [joined]
    if any(b.plugin.shape is Shape.MATCH for b in joins):
        gathered = (
            joined.get_side_output(ops.match_tag())
            .key_by(lambda item: (item.index, item.key), key_type=Types.PICKLED_BYTE_ARRAY())
            .process(ops.MatchBucket(joins))
            .name("match buckets")
            .uid(_uid("match-bucket", topic))
            .key_by(lambda item: (item.index, item.entity), key_type=Types.PICKLED_BYTE_ARRAY())
            .process(ops.MatchGather(joins), output_type=ops.sink_row_type())
            .name("match gather")
            .uid(_uid("match-gather", topic))
        )
        rows.append(gathered)
    return rows


def plugin_jobs_summary(bounds: Sequence[Bound]) -> list[str]:
    """One line per plugin: what reads what and writes where (for logs and the CLI)."""
    return [
        f"{b.ref} ({b.plugin.shape}{', model ' + b.plugin.model if b.plugin.model else ''}): "
        f"{b.input_topic} -> {b.changelog_topic}"
        for b in bounds
    ]
