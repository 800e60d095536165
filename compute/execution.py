"""How a plugin's input becomes a signal record or a dead letter, whatever runs it.

The local harness (:mod:`compute.harness`) and the Flink operators (:mod:`compute.flink`)
both call these functions, so a plugin behaves the same in a test and on a cluster:
decoding, retries, output checks, the record and envelope written, the dead letter.

A *sink row* is ``(topic, key, value)``: the changelog or dead-letter topic, the entity's
canonical bytes (a dead letter of an input without a known entity: empty), and a serialized
``gss.v1.SignalRecord`` or ``gss.v1.DeadLetter`` (:mod:`contract.deadletter`, the format the
ingester writes to the same topic).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from google.protobuf.message import DecodeError, Message

from compute.binding import Bound
from compute.plugin import Inputs, Retry, Sliding, Tumbling
from contract import deadletter
from contract.v1 import envelope_pb2

log = structlog.get_logger(__name__)

SinkRow = tuple[str, bytes, bytes]
# Counts what happened to a plugin's records: tally(counter_name, amount).
Tally = Callable[[str, int], None]

Reason = deadletter.Reason

# Counter names, shared by the harness's metrics and Flink's (docs/compute.md lists them).
INPUTS = "inputs_total"
VALUES = "values_total"
EMPTY = "empty_total"
RETRIES = "retries_total"
DEAD_LETTERS = "dead_letters_total"
LATE = "late_events_total"
# Inputs that never decode (BAD_INPUT); the Flink job labels this one by topic and partition.
BAD_INPUTS = "bad_inputs_total"


def no_tally(name: str, amount: int) -> None:
    """A tally that counts nothing."""


class BadInput(ValueError):
    """An input record that can never be processed as sent."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where an input was read: what a dead letter names so it can be found and replayed.

    The Flink job knows it for every record (its sources yield partition, offset, Kafka
    timestamp and key beside the value); the in-process harness has no Kafka and passes none.
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    key: bytes | None = None

    @property
    def source(self) -> Source:
        return (self.topic, self.partition, self.offset)


# Where a value's input was read: (topic, partition, offset), recorded in its envelope.
Source = tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class Event:
    """A decoded content event: the entity it is about and when it happened."""

    entity: bytes
    event_ms: int
    message: Message


def ms_of(ts: Any) -> int:
    """Milliseconds since the epoch of a protobuf Timestamp."""
    return int(ts.seconds) * 1000 + int(ts.nanos) // 1_000_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def decode_event(bound: Bound, payload: bytes) -> Event:
    """Parse a content event of the plugin's source; BadInput names what is wrong."""
    source = bound.plugin.source
    assert source is not None
    try:
        message = source.schema.FromString(payload)
    except DecodeError as exc:
        raise BadInput(f"not a {source.schema.DESCRIPTOR.full_name}: {exc}") from None
    if not message.HasField(source.event_time):
        raise BadInput(f"{source.schema.DESCRIPTOR.name}.{source.event_time} is not set")
    raw_id = getattr(message, source.entity)
    try:
        entity = bound.codec.to_bytes(raw_id)
    except ValueError as exc:
        raise BadInput(f"{source.schema.DESCRIPTOR.name}.{source.entity}: {exc}") from None
    return Event(entity, ms_of(getattr(message, source.event_time)), message)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of calling plugin code with retries."""

    value: Any
    error: BaseException | None
    attempts: int


def call_with_retry(
    retry: Retry,
    call: Callable[[], Any],
    tally: Tally = no_tally,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Call ``call`` until it returns or the policy's attempts are spent (blocking backoff)."""
    for attempt in range(1, retry.attempts + 1):
        try:
            return Outcome(call(), None, attempt)
        except Exception as exc:  # plugin code: any failure is retried, then dead-lettered
            if attempt == retry.attempts:
                return Outcome(None, exc, attempt)
            tally(RETRIES, 1)
            sleep(retry.delay_seconds(attempt))
    raise AssertionError("unreachable")


async def call_with_retry_async(
    retry: Retry, call: Callable[[], Awaitable[Any]], tally: Tally = no_tally
) -> Outcome:
    """:func:`call_with_retry` for coroutines; backoff does not block other records."""
    for attempt in range(1, retry.attempts + 1):
        try:
            return Outcome(await call(), None, attempt)
        except Exception as exc:
            if attempt == retry.attempts:
                return Outcome(None, exc, attempt)
            tally(RETRIES, 1)
            await asyncio.sleep(retry.delay_seconds(attempt))
    raise AssertionError("unreachable")


def _timestamp(ms: int) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def signal_record(
    bound: Bound,
    entity: bytes,
    value: Message,
    event_ms: int,
    model_name: str = "",
    model_version: str = "",
    lineage: Sequence[Source] = (),
) -> envelope_pb2.SignalRecord:
    """The changelog record of one value; TypeError if the value is not the signal's type.

    Its envelope names the plugin and its revision, and ``lineage``: the records the value was
    computed from."""
    if not isinstance(value, Message) or value.DESCRIPTOR.full_name != bound.value_type:
        got = value.DESCRIPTOR.full_name if isinstance(value, Message) else type(value).__name__
        raise TypeError(
            f"{bound.ref} returned a {got}; its registered value type is {bound.value_type}"
        )
    record = envelope_pb2.SignalRecord(
        galaxy=bound.galaxy,
        entity_id=bound.codec.to_text(entity),
        signal=envelope_pb2.SignalRef(name=bound.plugin.name, version=bound.plugin.version),
        envelope=envelope_pb2.Envelope(
            producer=bound.producer,
            model_name=model_name,
            model_version=model_version,
            backfill=bound.backfill,
            inputs=[
                envelope_pb2.RecordPosition(topic=t, partition=p, offset=o) for t, p, o in lineage
            ],
            plugin=bound.code,
            plugin_revision=bound.revision,
        ),
    )
    record.value.Pack(value)
    record.envelope.event_time.FromMilliseconds(event_ms)
    return record


def dead_letter(
    bound: Bound,
    reason: int,
    *,
    entity: bytes | None,
    payload: bytes,
    event_ms: int | None,
    error: BaseException | None = None,
    attempts: int = 0,
    at: Position | None = None,
) -> SinkRow:
    """The dead-letter row for an input the plugin could not turn into a value.

    ``at`` fills the input's topic, partition, offset, key and Kafka timestamp; without it
    (the harness, a window's or join's result) only the topic is named, the plugin's input
    topic. Headers stay unset: the job's sources do not carry them.
    """
    letter = deadletter.build(
        reason,
        galaxy=bound.galaxy,
        producer=bound.producer,
        input_topic=at.topic if at is not None else bound.input_topic,
        input_partition=at.partition if at is not None else None,
        input_offset=at.offset if at is not None else None,
        input_key=at.key if at is not None else None,
        input_timestamp_ms=at.timestamp_ms if at is not None and at.timestamp_ms else None,
        input=payload,
        error=error,
        attempts=attempts,
        signal=envelope_pb2.SignalRef(name=bound.plugin.name, version=bound.plugin.version),
        entity_id=bound.codec.to_text(entity) if entity else "",
        event_time_ms=event_ms,
        failed_at_ms=now_ms(),
        plugin=bound.code,
        plugin_revision=bound.revision,
    )
    log.warning(
        "dead_letter",
        signal=bound.ref,
        reason=Reason.Name(reason),  # type: ignore[arg-type]
        entity_id=letter.entity_id,
        error_type=letter.error_type,
        error=letter.error[:200],
        attempts=attempts,
        input_topic=letter.input_topic,
        input_partition=at.partition if at is not None else None,
        input_offset=at.offset if at is not None else None,
    )
    return bound.dlq_topic, deadletter.kafka_key(entity, None) or b"", deadletter.serialize(letter)


def finish(
    bound: Bound,
    outcome: Outcome,
    *,
    entity: bytes,
    event_ms: int,
    payload: bytes,
    tally: Tally,
    model_name: str = "",
    model_version: str = "",
    at: Position | None = None,
    lineage: Sequence[Source] = (),
) -> list[SinkRow]:
    """Rows for an outcome: the value, nothing (None), or a dead letter. The value's lineage is
    ``lineage``, else the one input read at ``at``."""
    if outcome.error is not None:
        tally(DEAD_LETTERS, 1)
        return [
            dead_letter(
                bound,
                Reason.PLUGIN_ERROR,
                entity=entity,
                payload=payload,
                event_ms=event_ms,
                error=outcome.error,
                attempts=outcome.attempts,
                at=at,
            )
        ]
    if outcome.value is None:
        tally(EMPTY, 1)
        return []
    try:
        record = signal_record(
            bound,
            entity,
            outcome.value,
            event_ms,
            model_name,
            model_version,
            lineage or ((at.source,) if at is not None else ()),
        )
    except TypeError as exc:
        tally(DEAD_LETTERS, 1)
        return [
            dead_letter(
                bound,
                Reason.BAD_OUTPUT,
                entity=entity,
                payload=payload,
                event_ms=event_ms,
                error=exc,
                attempts=outcome.attempts,
                at=at,
            )
        ]
    tally(VALUES, 1)
    return [(bound.changelog_topic, entity, record.SerializeToString())]


def bad_input(
    bound: Bound, payload: bytes, error: BaseException, tally: Tally, at: Position | None = None
) -> SinkRow:
    """The BAD_INPUT dead letter of an input that does not decode; counted in BAD_INPUTS."""
    tally(BAD_INPUTS, 1)
    tally(DEAD_LETTERS, 1)
    return dead_letter(
        bound,
        Reason.BAD_INPUT,
        entity=None,
        payload=payload,
        event_ms=None,
        error=error,
        attempts=0,
        at=at,
    )


# ---- map -----------------------------------------------------------------------------------


def run_map(
    bound: Bound, payload: bytes, tally: Tally = no_tally, at: Position | None = None
) -> list[SinkRow]:
    """One content event (read at ``at``, when known) through a map plugin."""
    tally(INPUTS, 1)
    try:
        event = decode_event(bound, payload)
    except BadInput as exc:
        return [bad_input(bound, payload, exc, tally, at)]
    plugin = bound.plugin
    outcome = call_with_retry(plugin.retry, lambda: plugin.fn(event.message), tally)
    return finish(
        bound,
        outcome,
        entity=event.entity,
        event_ms=event.event_ms,
        payload=payload,
        tally=tally,
        at=at,
    )


async def run_model(
    bound: Bound,
    payload: bytes,
    client: Any,
    tally: Tally = no_tally,
    at: Position | None = None,
) -> list[SinkRow]:
    """One content event through a model plugin; its model calls join micro-batches."""
    from compute.inference import Model

    tally(INPUTS, 1)
    try:
        event = decode_event(bound, payload)
    except BadInput as exc:
        return [bad_input(bound, payload, exc, tally, at)]
    plugin = bound.plugin
    assert plugin.model is not None
    model = Model(client, plugin.model)
    outcome = await call_with_retry_async(
        plugin.retry, lambda: plugin.fn(event.message, model), tally
    )
    return finish(
        bound,
        outcome,
        entity=event.entity,
        event_ms=event.event_ms,
        payload=payload,
        tally=tally,
        model_name=plugin.model,
        model_version=model.used_version,
        at=at,
    )


# ---- group-by ------------------------------------------------------------------------------


def extract(
    bound: Bound, payload: bytes, tally: Tally = no_tally, at: Position | None = None
) -> tuple[Event | None, Any, list[SinkRow]]:
    """A group-by's per-event step: (event, extracted value or None, dead-letter rows)."""
    tally(INPUTS, 1)
    try:
        event = decode_event(bound, payload)
    except BadInput as exc:
        return None, None, [bad_input(bound, payload, exc, tally, at)]
    group_by = bound.plugin.group_by
    assert group_by is not None
    outcome = call_with_retry(
        bound.plugin.retry, lambda: group_by.aggregate.extract(event.message), tally
    )
    if outcome.error is not None:
        tally(DEAD_LETTERS, 1)
        return (
            event,
            None,
            [
                dead_letter(
                    bound,
                    Reason.PLUGIN_ERROR,
                    entity=event.entity,
                    payload=payload,
                    event_ms=event.event_ms,
                    error=outcome.error,
                    attempts=outcome.attempts,
                    at=at,
                )
            ],
        )
    return event, outcome.value, []


def millis(delta: timedelta) -> int:
    """Whole milliseconds of a duration, exactly (float seconds would turn 8.081 s into 8080)."""
    return delta // timedelta(milliseconds=1)


def window_starts(window: Tumbling | Sliding, event_ms: int) -> list[int]:
    """Starts of the windows an event time falls in, as Flink's assigners compute them."""
    size = millis(window.size)
    if isinstance(window, Tumbling):
        return [event_ms - (event_ms % size)]
    slide = millis(window.slide)
    last = event_ms - (event_ms % slide)
    return list(range(last, event_ms - size, -slide))


def current_from(window: Tumbling | Sliding, start_ms: int) -> int | None:
    """With early firing, the newest event time from which an open window writes its running
    value: any (None) for tumbling windows; for sliding ones, once events have reached the last
    ms of the window before it. Only the window that ends first after the newest event writes
    early, so the value a lookup sees (the newest event time wins) is the trailing count, never
    a window reaching further into the future that has seen only the newest events. (Flink's
    watermark trails the newest event time by the source's max_out_of_orderness + 1 ms.)"""
    if isinstance(window, Tumbling):
        return None
    return start_ms + millis(window.size) - millis(window.slide) - 1  # the previous one's last ms


def window_result(
    bound: Bound, entity: bytes, aggregate: Any, start_ms: int, end_ms: int, tally: Tally = no_tally
) -> list[SinkRow]:
    """A closed (or late-updated) window's value. Its event time is the window's last ms."""
    from compute.plugin import WindowSpan

    plugin = bound.plugin
    span = WindowSpan.from_ms(start_ms, end_ms)
    outcome = call_with_retry(plugin.retry, lambda: plugin.fn(aggregate, span), tally)
    return finish(
        bound,
        outcome,
        entity=entity,
        event_ms=end_ms - 1,
        payload=repr(aggregate).encode()[:4096],
        tally=tally,
    )


def too_late(
    bound: Bound, event: Event, payload: bytes, tally: Tally = no_tally, at: Position | None = None
) -> SinkRow:
    tally(LATE, 1)
    tally(DEAD_LETTERS, 1)
    return dead_letter(
        bound,
        Reason.TOO_LATE,
        entity=event.entity,
        payload=payload,
        event_ms=event.event_ms,
        at=at,
    )


# ---- joins ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JoinUpdate:
    """A changelog record that feeds a join: which input, for which entity, and its value."""

    entity: bytes
    key: str  # the input's name as declared in Join.inputs
    value: bytes  # serialized value message
    event_ms: int
    source: Source | None = None  # the changelog record it came from


def join_updates(
    bounds: list[Bound], payload: bytes, at: Position | None = None
) -> list[tuple[int, JoinUpdate]]:
    """The (join index, update) pairs a changelog record (read at ``at``) feeds; empty if none
    reads it.

    BadInput if it is not a SignalRecord: callers count it (BAD_INPUTS) but write no dead
    letter, since the changelog ingester dead-letters the same record.
    """
    try:
        record = envelope_pb2.SignalRecord.FromString(payload)
    except DecodeError as exc:
        raise BadInput(f"not a gss.v1.SignalRecord: {exc}") from None
    out = []
    for index, bound in enumerate(bounds):
        if record.galaxy != bound.galaxy:
            continue
        for join_input in bound.join_inputs:
            if (record.signal.name, record.signal.version) == (join_input.name, join_input.version):
                try:
                    entity = bound.codec.to_bytes(record.entity_id)
                except ValueError:
                    continue
                out.append(
                    (
                        index,
                        JoinUpdate(
                            entity,
                            join_input.key,
                            record.value.value,
                            ms_of(record.envelope.event_time),
                            at.source if at is not None else None,
                        ),
                    )
                )
    return out


# An entity's join state: input name -> (value, event ms, stored at, source). Entries written
# before lineage was recorded have no source (three items).
Held = dict[str, tuple[Any, ...]]


def hold_input(bound: Bound, held: Held, update: JoinUpdate, now: float) -> bool:
    """Keep ``update`` in an entity's join state (input -> (value, event ms, stored at, source)).

    Inputs stored more than the join's TTL ago are forgotten first. Returns False (and
    keeps the held value) if the update is older, by event time, than the value held.
    """
    join = bound.plugin.join
    assert join is not None
    ttl = join.ttl.total_seconds()
    for key in [k for k, entry in held.items() if now - entry[2] >= ttl]:
        del held[key]
    current = held.get(update.key)
    if current is not None and current[1] > update.event_ms:
        return False
    held[update.key] = (update.value, update.event_ms, now, update.source)
    return True


def bucket_members(
    bound: Bound,
    bucket: dict[bytes, tuple[Inputs, float]],
    entity: bytes,
    inputs: Inputs,
    now: float,
) -> list[tuple[bytes, Inputs]]:
    """A Match bucket's other members seen within the TTL; then ``entity`` joins it."""
    join = bound.plugin.join
    assert join is not None
    ttl = join.ttl.total_seconds()
    for member in [e for e, (_, at) in bucket.items() if now - at >= ttl]:
        del bucket[member]
    members = [(e, peer) for e, (peer, _) in bucket.items() if e != entity]
    bucket[entity] = (inputs, now)
    return members


def join_inputs(bound: Bound, entity: bytes, state: Held) -> Inputs | None:
    """The entity's :class:`Inputs` when every input is in ``state`` (:func:`hold_input`'s)."""
    if any(j.key not in state for j in bound.join_inputs):
        return None
    values = {
        j.key: bound.message_class(j.value_type).FromString(state[j.key][0])
        for j in bound.join_inputs
    }
    sources = {
        j.key: tuple(state[j.key][3])
        for j in bound.join_inputs
        if len(state[j.key]) > 3 and state[j.key][3] is not None
    }
    newest = max(entry[1] for entry in state.values())
    return Inputs(
        bound.codec.to_text(entity),
        datetime.fromtimestamp(newest / 1000, UTC),
        values,
        sources,
    )


def inputs_ms(inputs: Inputs) -> int:
    return int(inputs.event_time.timestamp() * 1000)


def run_join(
    bound: Bound,
    entity: bytes,
    inputs: Inputs,
    tally: Tally = no_tally,
    peers: list[Inputs] | None = None,
) -> list[SinkRow]:
    """A join's function over an entity's complete inputs (and, for a Match, its peers)."""
    plugin = bound.plugin
    args = (inputs,) if peers is None else (inputs, peers)
    outcome = call_with_retry(plugin.retry, lambda: plugin.fn(*args), tally)
    return finish(
        bound,
        outcome,
        entity=entity,
        event_ms=inputs_ms(inputs),
        payload=_inputs_payload(inputs),
        tally=tally,
        lineage=[inputs.sources[j.key] for j in bound.join_inputs if j.key in inputs.sources],
    )


def match_keys(
    bound: Bound, entity: bytes, inputs: Inputs, tally: Tally = no_tally
) -> tuple[list[Any], list[SinkRow]]:
    """A Match's keys for an entity's inputs (deduplicated, in order), or a dead letter."""
    from compute.plugin import Match

    join = bound.plugin.join
    assert isinstance(join, Match)
    outcome = call_with_retry(
        bound.plugin.retry, lambda: list(dict.fromkeys(join.keys(inputs))), tally
    )
    if outcome.error is not None:
        tally(DEAD_LETTERS, 1)
        return [], [
            dead_letter(
                bound,
                Reason.PLUGIN_ERROR,
                entity=entity,
                payload=_inputs_payload(inputs),
                event_ms=inputs_ms(inputs),
                error=outcome.error,
                attempts=outcome.attempts,
            )
        ]
    return list(outcome.value), []


# Unfinished gather rounds kept per entity (older ones are dropped).
_MAX_ROUNDS = 4


@dataclass
class Gathered:
    """A Match's per-entity state: its inputs and peers as last evaluated, and open rounds.

    A round is one version of the entity's inputs travelling to each of its match keys; it
    completes when every key's bucket has reported its peers.
    """

    inputs: Inputs | None = None
    peers: dict[str, Inputs] | None = None
    rounds: dict[str, tuple[int, dict[str, Inputs]]] | None = None
    # Digest of the records last written for the entity: a re-evaluation that writes the same
    # records again (a late peer that changes nothing) writes nothing.
    written: bytes | None = None


def _evaluate(bound: Bound, entity: bytes, gathered: Gathered, tally: Tally) -> list[SinkRow]:
    assert gathered.inputs is not None
    assert gathered.peers is not None
    ordered = sorted(gathered.peers.values(), key=lambda p: (p.event_time, p.entity_id))
    rows = run_join(bound, entity, gathered.inputs, tally, ordered)
    digest = hashlib.sha1(b"\0".join(row[2] for row in rows)).digest()
    if digest == gathered.written:
        return []
    gathered.written = digest
    return rows


def gather_report(
    bound: Bound,
    entity: bytes,
    gathered: Gathered,
    round_id: str,
    keys: int,
    inputs: Inputs,
    peers: Sequence[Inputs],
    tally: Tally = no_tally,
) -> list[SinkRow]:
    """Add one bucket's report to ``gathered``; run the function when the round completes."""
    rounds = gathered.rounds if gathered.rounds is not None else {}
    reports, found = rounds.get(round_id, (0, {}))
    for peer in peers:
        found[peer.entity_id] = peer
    if reports + 1 < keys:
        rounds[round_id] = (reports + 1, found)
        while len(rounds) > _MAX_ROUNDS:
            del rounds[next(iter(rounds))]
        gathered.rounds = rounds
        return []
    rounds.pop(round_id, None)
    gathered.rounds = rounds or None
    gathered.inputs, gathered.peers = inputs, found
    return _evaluate(bound, entity, gathered, tally)


def late_peer(
    bound: Bound, entity: bytes, gathered: Gathered, peer: Inputs, tally: Tally = no_tally
) -> list[SinkRow]:
    """A peer with an earlier event time arrived after the entity was evaluated: re-run."""
    if gathered.inputs is None or gathered.peers is None:
        return []  # not evaluated yet: its round will see the peer
    known = gathered.peers.get(peer.entity_id)
    if known is not None and known.event_time == peer.event_time:
        return []  # already seen (the newcomer shares several keys with the entity)
    gathered.peers[peer.entity_id] = peer
    return _evaluate(bound, entity, gathered, tally)


def _inputs_payload(inputs: Inputs) -> bytes:
    # A dead letter of a join carries its inputs as a SignalRecord-free, readable summary.
    return repr({k: str(v).replace("\n", " ") for k, v in inputs.items()}).encode()[:4096]
