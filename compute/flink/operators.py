"""The Python functions the Flink job runs: thin shells around :mod:`compute.execution`.

Each function holds the :class:`~compute.binding.Bound` plugins it serves (pickled into the
job) and turns elements into *sink rows* ``Row(topic, key, value)`` for the one KafkaSink,
or into intermediate items for the next keyed step. Their input is an *input row*
``Row(partition, offset, timestamp_ms, key, value)`` as every source of the job yields it
(:func:`input_row_type`), so a dead letter names where its input was read. Counters go to
Flink's metric system under the group ``signal=<galaxy/name@version>`` (docs/compute.md
lists them); ``bad_inputs_total`` also by ``topic`` and ``partition``.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pyflink.common import Row, Time, Types
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import (
    AggregateFunction,
    KeyedProcessFunction,
    ProcessFunction,
    ProcessWindowFunction,
    RuntimeContext,
)
from pyflink.datastream.functions import AsyncFunction, MapFunction
from pyflink.datastream.output_tag import OutputTag
from pyflink.datastream.state import StateTtlConfig, ValueStateDescriptor
from pyflink.datastream.window import TimeWindow, Trigger, TriggerResult

from compute import execution
from compute.binding import Bound
from compute.execution import SinkRow
from compute.plugin import Inputs, Shape
from contract import logs
from contract.settings import TritonSettings


def input_row_type() -> Any:
    """Row(partition, offset, timestamp_ms, key, value): a record as the job's sources yield it
    (the Java ``gss.flink.KafkaRowDeserializer`` and ``ArchiveManifestRowFormat``).

    A new object per job: PyFlink caches the Java type in it, which dies with its gateway.
    """
    return Types.ROW_NAMED(
        ["partition", "offset", "timestamp_ms", "key", "value"],
        [
            Types.INT(),
            Types.LONG(),
            Types.LONG(),
            Types.PRIMITIVE_ARRAY(Types.BYTE()),
            Types.PRIMITIVE_ARRAY(Types.BYTE()),
        ],
    )


def read_input(topic: str, row: Any) -> tuple[bytes, execution.Position]:
    """An input row's value bytes and where it was read."""
    key = row[3]
    position = execution.Position(
        topic, int(row[0]), int(row[1]), int(row[2]), None if key is None else bytes(key)
    )
    return bytes(row[4]), position


class KeepFrom:
    """The first Python step of a run from history: drops the records before its start (a
    timestamp, or per-partition offsets) and from its end, and tombstones (no value: an
    archived one; the Kafka deserializer drops them already)."""

    def __init__(
        self,
        from_timestamp_ms: int | None = None,
        from_offsets: dict[int, int] | None = None,
        until_timestamp_ms: int | None = None,
    ) -> None:
        self.from_timestamp_ms = from_timestamp_ms
        self.from_offsets = from_offsets or {}
        self.until_timestamp_ms = until_timestamp_ms

    def __call__(self, row: Any) -> bool:
        if row[4] is None:
            return False
        if self.from_timestamp_ms is not None and row[2] < self.from_timestamp_ms:
            return False
        if self.until_timestamp_ms is not None and row[2] >= self.until_timestamp_ms:
            return False
        return bool(row[1] >= self.from_offsets.get(row[0], 0))


def sink_row_type() -> Any:
    """Row(topic, key, value): what the KafkaSink takes (see compute.flink.job.kafka_sink).

    A new object per job: PyFlink caches the Java type in it, which dies with its gateway.
    """
    return Types.ROW(
        [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.PRIMITIVE_ARRAY(Types.BYTE())]
    )


def sink_tag() -> OutputTag:
    """Rows that leave an operator beside its main output (dead letters of a pre-step)."""
    return OutputTag(SINK_TAG_ID, sink_row_type())


def match_tag() -> OutputTag:
    """Match items on their way to the bucket step of Match joins."""
    return OutputTag(MATCH_TAG_ID, Types.PICKLED_BYTE_ARRAY())


# Python workers route side outputs by tag id; these never reach the JVM.
SINK_TAG_ID = "gss-sink-rows"
MATCH_TAG_ID = "gss-match-items"
SINK_TAG = sink_tag()
MATCH_TAG = match_tag()


def sink_row(row: SinkRow) -> Row:
    return Row(row[0], row[1], row[2])


@functools.cache
def worker_logging() -> None:
    """GSS's logging in a Python worker: JSON lines on stderr, which Flink keeps in its logs,
    INFO and above (workers are handed plugins, not settings; nothing here logs below INFO)."""
    logs.configure(fmt="json")


class Tallies:
    """Flink counters of each plugin, created on first use: ``tallies.of(bound)(name, n)``.

    ``tallies.of(bound, at)`` also labels ``bad_inputs_total`` with the input's topic and
    partition (``gss.signal=<ref>.topic=<t>.partition=<p>``). Made in every function's
    ``open``, which is also where worker logging is set up.
    """

    def __init__(self, context: RuntimeContext) -> None:
        worker_logging()
        self._group = context.get_metrics_group().add_group("gss")
        self._counters: dict[tuple[str, ...], Any] = {}
        self._tallies: dict[tuple[str, str, int], execution.Tally] = {}

    def of(self, bound: Bound, at: execution.Position | None = None) -> execution.Tally:
        # One function per plugin and input partition, made once: this runs for every record.
        key = (bound.ref, at.topic, at.partition) if at is not None else (bound.ref, "", -1)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = self._tally(bound, at)
        return tally

    def _tally(self, bound: Bound, at: execution.Position | None) -> execution.Tally:
        def tally(name: str, amount: int) -> None:
            where = (
                (at.topic, str(at.partition))
                if at is not None and name == execution.BAD_INPUTS
                else ()
            )
            counter = self._counters.get((bound.ref, name, *where))
            if counter is None:
                group = self._group.add_group("signal", bound.ref)
                if where:
                    group = group.add_group("topic", where[0]).add_group("partition", where[1])
                counter = group.counter(name)
                self._counters[(bound.ref, name, *where)] = counter
            counter.inc(amount)

        return tally


# ---- map plugins -------------------------------------------------------------------------


class RunMaps(ProcessFunction):  # type: ignore[misc]
    """Every map plugin of one topic over each record of a batch (gss.flink.RowBatcher); the
    batch's sink rows leave as one element (flattened in Java).

    Not keyed: map plugins hold no state, and a record stays in its source partition's
    subtask (chained to the source), so each partition's order is kept without a shuffle or
    a Python key selector in front (docs/compute.md, "Performance").
    """

    def __init__(self, bounds: list[Bound]) -> None:
        self.bounds = bounds

    def open(self, runtime_context: RuntimeContext) -> None:
        self.tallies = Tallies(runtime_context)

    def process_element(self, value: Any, ctx: ProcessFunction.Context) -> Iterator[list[Row]]:
        topic = self.bounds[0].input_topic
        out: list[Row] = []
        for record in value:
            payload, at = read_input(topic, record)
            for bound in self.bounds:
                for row in execution.run_map(bound, payload, self.tallies.of(bound, at), at):
                    out.append(sink_row(row))
        if out:
            yield out


def batch_type(row_type: Any) -> Any:
    """An array of rows of ``row_type``: a batch (gss.flink.RowBatcher)."""
    return Types.OBJECT_ARRAY(row_type)


class RunModel(AsyncFunction):  # type: ignore[misc]
    """One model plugin; many records in flight, so their model calls share Triton batches."""

    def __init__(self, bound: Bound, triton: TritonSettings) -> None:
        self.bound = bound
        self.triton = triton

    def open(self, runtime_context: RuntimeContext) -> None:
        from compute.inference import connect

        self.tallies = Tallies(runtime_context)
        self.client = connect(self.triton)

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None and hasattr(client, "close"):
            client.close()

    async def async_invoke(self, value: Any) -> list[Row]:
        payload, at = read_input(self.bound.input_topic, value)
        rows = await execution.run_model(
            self.bound, payload, self.client, self.tallies.of(self.bound, at), at
        )
        return [sink_row(row) for row in rows]

    def timeout(self, value: Any) -> list[Row]:
        payload, at = read_input(self.bound.input_topic, value)
        tally = self.tallies.of(self.bound)
        tally(execution.DEAD_LETTERS, 1)
        error = TimeoutError(f"{self.bound.ref}: no answer within the model timeout")
        row = execution.dead_letter(
            self.bound,
            execution.Reason.PLUGIN_ERROR,
            entity=None,
            payload=payload,
            event_ms=None,
            error=error,
            attempts=1,
            at=at,
        )
        return [sink_row(row)]


# ---- group-by ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """A group-by's event after its per-event step: entity, event time, extracted value."""

    entity: bytes
    event_ms: int
    extracted: Any
    payload: bytes
    at: execution.Position


class Extract(ProcessFunction):  # type: ignore[misc]
    """A group-by's per-event step over a batch of records (gss.flink.RowBatcher); failures
    leave as dead letters on SINK_TAG."""

    def __init__(self, bound: Bound) -> None:
        self.bound = bound

    def open(self, runtime_context: RuntimeContext) -> None:
        self.tallies = Tallies(runtime_context)

    def process_element(self, value: Any, ctx: ProcessFunction.Context) -> Iterator[Any]:
        for record in value:
            payload, at = read_input(self.bound.input_topic, record)
            event, extracted, rows = execution.extract(
                self.bound, payload, self.tallies.of(self.bound, at), at
            )
            for row in rows:
                yield SINK_TAG, sink_row(row)
            if event is not None and not rows:
                # Items with nothing to add still move the watermark; dropped after it.
                yield Item(event.entity, event.event_ms, extracted, payload, at)


class EarlyFiring(Trigger):  # type: ignore[misc]
    """Event-time windows that also fire while open: at most ``interval_ms`` of processing
    time after an element changed the window, then once the watermark passes its end (and for
    each late element within the allowed lateness), as Flink's EventTimeTrigger does.

    Sliding windows (``slide_ms``) fire early only once they are the first to end after the
    newest event time (:func:`compute.execution.current_from`), and also fire when they become
    it. ``lead_ms`` is how far the newest event time runs ahead of the watermark (the source's
    max_out_of_orderness + 1 ms), so the watermark at which that happens is known.
    """

    def __init__(self, interval_ms: int, slide_ms: int | None = None, lead_ms: int = 0) -> None:
        self.interval_ms = interval_ms
        self.slide_ms = slide_ms
        self.lead_ms = lead_ms
        self.pending = ValueStateDescriptor("early-firing-pending", Types.BOOLEAN())

    def _current_from(self, window: TimeWindow) -> int | None:
        # The watermark of execution.current_from's event time (window.end is exclusive).
        if self.slide_ms is None:
            return None
        return int(window.end) - self.slide_ms - 1 - self.lead_ms

    def on_element(
        self, element: Any, timestamp: int, window: TimeWindow, ctx: Trigger.TriggerContext
    ) -> TriggerResult:
        watermark = ctx.get_current_watermark()
        if window.max_timestamp() <= watermark:
            return TriggerResult.FIRE
        ctx.register_event_time_timer(window.max_timestamp())
        current_from = self._current_from(window)
        if current_from is not None and current_from > watermark:
            # Not the trailing window yet: it writes when it becomes it (on_event_time), so
            # no processing-time firing (of an element's size/slide windows, one is current).
            ctx.register_event_time_timer(current_from)
            return TriggerResult.CONTINUE
        pending = ctx.get_partitioned_state(self.pending)
        if not pending.value():
            ctx.register_processing_time_timer(ctx.get_current_processing_time() + self.interval_ms)
            pending.update(True)
        return TriggerResult.CONTINUE

    def on_processing_time(
        self, time: int, window: TimeWindow, ctx: Trigger.TriggerContext
    ) -> TriggerResult:
        ctx.get_partitioned_state(self.pending).clear()
        watermark = ctx.get_current_watermark()
        if window.max_timestamp() <= watermark:
            return TriggerResult.CONTINUE  # the event-time firing has written it already
        current_from = self._current_from(window)
        if current_from is not None and watermark < current_from:
            return TriggerResult.CONTINUE  # not current yet: its event-time timer fires it
        return TriggerResult.FIRE

    def on_event_time(
        self, time: int, window: TimeWindow, ctx: Trigger.TriggerContext
    ) -> TriggerResult:
        if time == window.max_timestamp() or time == self._current_from(window):
            return TriggerResult.FIRE
        return TriggerResult.CONTINUE

    def on_merge(self, window: TimeWindow, ctx: Trigger.OnMergeContext) -> None:
        raise AssertionError("tumbling and sliding windows never merge")

    def clear(self, window: TimeWindow, ctx: Trigger.TriggerContext) -> None:
        ctx.delete_event_time_timer(window.max_timestamp())
        current_from = self._current_from(window)
        if current_from is not None:
            ctx.delete_event_time_timer(current_from)
        ctx.get_partitioned_state(self.pending).clear()


class ItemTime(TimestampAssigner):  # type: ignore[misc]
    def extract_timestamp(self, value: Item, record_timestamp: int) -> int:
        return value.event_ms


class WindowAggregate(AggregateFunction):  # type: ignore[misc]
    def __init__(self, bound: Bound) -> None:
        assert bound.plugin.group_by is not None
        self.aggregation = bound.plugin.group_by.aggregate

    def create_accumulator(self) -> Any:
        return self.aggregation.zero()

    def add(self, value: Item, accumulator: Any) -> Any:
        return self.aggregation.add(accumulator, value.extracted)

    def get_result(self, accumulator: Any) -> Any:
        return accumulator

    def merge(self, a: Any, b: Any) -> Any:
        return self.aggregation.merge(a, b)


class WindowValue(ProcessWindowFunction):  # type: ignore[misc]
    """Turns a window's aggregate into the signal's value (or a dead letter)."""

    def __init__(self, bound: Bound) -> None:
        self.bound = bound

    def open(self, runtime_context: RuntimeContext) -> None:
        self.tallies = Tallies(runtime_context)

    def process(
        self, key: bytes, context: ProcessWindowFunction.Context, elements: Iterable[Any]
    ) -> Iterator[Row]:
        window = context.window()
        for aggregate in elements:
            rows = execution.window_result(
                self.bound,
                bytes(key),
                aggregate,
                window.start,
                window.end,
                self.tallies.of(self.bound),
            )
            for row in rows:
                yield sink_row(row)


class LateEvent(MapFunction):  # type: ignore[misc]
    def __init__(self, bound: Bound) -> None:
        self.bound = bound

    def open(self, runtime_context: RuntimeContext) -> None:
        self.tallies = Tallies(runtime_context)

    def map(self, value: Item) -> Row:
        event = execution.Event(value.entity, value.event_ms, None)  # type: ignore[arg-type]
        return sink_row(
            execution.too_late(
                self.bound, event, value.payload, self.tallies.of(self.bound), value.at
            )
        )


# ---- joins -------------------------------------------------------------------------------


class JoinUpdates(ProcessFunction):  # type: ignore[misc]
    """A batch of changelog records (gss.flink.RowBatcher) -> (join index, JoinUpdate) for
    each join that reads them; the records of signals no join reads go no further.

    A record that is not a SignalRecord is counted (``bad_inputs_total`` of every join on the
    topic) and skipped: the changelog ingester dead-letters it.
    """

    def __init__(self, bounds: list[Bound]) -> None:
        self.bounds = bounds

    def open(self, runtime_context: RuntimeContext) -> None:
        self.tallies = Tallies(runtime_context)

    def process_element(self, value: Any, ctx: ProcessFunction.Context) -> Iterator[Any]:
        topic = self.bounds[0].input_topic
        for record in value:
            payload, at = read_input(topic, record)
            try:
                yield from execution.join_updates(self.bounds, payload, at)
            except execution.BadInput:
                for bound in self.bounds:
                    self.tallies.of(bound, at)(execution.BAD_INPUTS, 1)


def _ttl(bound: Bound) -> StateTtlConfig:
    assert bound.plugin.join is not None
    seconds = max(1, int(bound.plugin.join.ttl.total_seconds()))
    # ReturnExpiredIfNotCleanedUp, not NeverReturnExpired: PyFlink turns its Python-side state
    # cache off for the whole worker when any state never returns expired values, and then
    # every update is a blocking round trip to the JVM (most of the join's time in the
    # profile, docs/compute.md "Performance"). Expiry that matters is applied in
    # compute.execution (hold_input, bucket_members) by the join's TTL, as in the harness.
    return (
        StateTtlConfig.new_builder(Time.seconds(seconds))
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
        .set_state_visibility(StateTtlConfig.StateVisibility.ReturnExpiredIfNotCleanedUp)
        .build()
    )


@dataclass(frozen=True, slots=True)
class MatchItem:
    """An entity's complete inputs on their way to one of its match keys' buckets."""

    index: int
    key: Any
    entity: bytes
    round: str
    keys: int
    inputs: Inputs


def _value_state(context: RuntimeContext, name: str, bound: Bound) -> Any:
    # One value per key (a small dict), read and written once per element: PyFlink reaches
    # keyed state through the Beam state API, and a MapState costs a round trip per call.
    # Entries expire by the join's TTL in execution.hold_input (as in the harness); the state TTL
    # drops keys that go quiet altogether.
    descriptor = ValueStateDescriptor(name, Types.PICKLED_BYTE_ARRAY())
    descriptor.enable_time_to_live(_ttl(bound))
    return context.get_state(descriptor)


class JoinInputs(KeyedProcessFunction):  # type: ignore[misc]
    """Keyed by (join index, entity): the latest value of each input, kept for the join's TTL.

    A Join's function runs here when all inputs are present; a Match's complete inputs go
    on (MATCH_TAG) to each of the entity's match keys.
    """

    def __init__(self, bounds: list[Bound]) -> None:
        self.bounds = bounds

    def open(self, runtime_context: RuntimeContext) -> None:
        self.tallies = Tallies(runtime_context)
        self.states = [
            _value_state(runtime_context, f"join-inputs-{index}", bound)
            for index, bound in enumerate(self.bounds)
        ]

    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        index, update = value
        bound = self.bounds[index]
        tally = self.tallies.of(bound)
        tally(execution.INPUTS, 1)
        state = self.states[index]
        held: execution.Held = state.value() or {}
        if not execution.hold_input(bound, held, update, time.time()):
            state.update(held)
            return  # an older value of this input: the newer one stays
        state.update(held)
        inputs = execution.join_inputs(bound, update.entity, held)
        if inputs is None:
            return
        if bound.plugin.shape is Shape.JOIN:
            for row in execution.run_join(bound, update.entity, inputs, tally):
                yield sink_row(row)
            return
        keys, dead = execution.match_keys(bound, update.entity, inputs, tally)
        for row in dead:
            yield sink_row(row)
        # Identifies this version of the inputs, so the gather step never mixes two versions.
        current = sorted((key, entry[0], entry[1]) for key, entry in held.items())
        round_id = hashlib.sha1(repr(current).encode()).hexdigest()
        for key in keys:
            yield MATCH_TAG, MatchItem(index, key, update.entity, round_id, len(keys), inputs)


@dataclass(frozen=True, slots=True)
class Peers:
    """One bucket's report for an entity's round: the other entities under that key."""

    index: int
    entity: bytes
    round: str
    keys: int
    inputs: Inputs
    peers: tuple[Inputs, ...]


@dataclass(frozen=True, slots=True)
class LatePeer:
    """An entity with an earlier event time appeared under a key ``entity`` is in."""

    index: int
    entity: bytes
    peer: Inputs


class MatchBucket(KeyedProcessFunction):  # type: ignore[misc]
    """Keyed by (join index, match key): the entities seen under the key within the TTL.

    Reports each arriving entity's peers to its gather step, and tells every member with a
    later event time about the newcomer (it may now match something earlier than before).
    """

    def __init__(self, bounds: list[Bound]) -> None:
        self.bounds = bounds

    def open(self, runtime_context: RuntimeContext) -> None:
        self.states = [
            _value_state(runtime_context, f"match-bucket-{index}", bound)
            for index, bound in enumerate(self.bounds)
        ]

    def process_element(self, value: MatchItem, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        state = self.states[value.index]
        bucket: dict[bytes, tuple[Inputs, float]] = state.value() or {}
        members = execution.bucket_members(
            self.bounds[value.index], bucket, value.entity, value.inputs, time.time()
        )
        state.update(bucket)
        yield Peers(
            value.index,
            value.entity,
            value.round,
            value.keys,
            value.inputs,
            tuple(inputs for _, inputs in members),
        )
        for entity, inputs in members:
            if inputs.event_time > value.inputs.event_time:
                yield LatePeer(value.index, entity, value.inputs)


class MatchGather(KeyedProcessFunction):  # type: ignore[misc]
    """Keyed by (join index, entity): runs a Match's function once every key has reported.

    Keeps the entity's inputs and peers (for the join's TTL) so a late peer re-runs it.
    """

    def __init__(self, bounds: list[Bound]) -> None:
        self.bounds = bounds

    def open(self, runtime_context: RuntimeContext) -> None:
        self.tallies = Tallies(runtime_context)
        self.states = [
            _value_state(runtime_context, f"match-gather-{index}", bound)
            for index, bound in enumerate(self.bounds)
        ]

    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[Row]:
        state = self.states[value.index]
        gathered: execution.Gathered = state.value() or execution.Gathered()
        bound = self.bounds[value.index]
        if isinstance(value, LatePeer):
            rows = execution.late_peer(
                bound, value.entity, gathered, value.peer, self.tallies.of(bound)
            )
        else:
            rows = execution.gather_report(
                bound,
                value.entity,
                gathered,
                value.round,
                value.keys,
                value.inputs,
                value.peers,
                self.tallies.of(bound),
            )
        state.update(gathered)
        for row in rows:
            yield sink_row(row)
