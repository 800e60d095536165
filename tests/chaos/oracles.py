"""The chaos run's oracles, each counting exactly what it finds:

- :func:`check_writer`: every acknowledged PutSignals value readable and equal to the last
  acknowledged write of its key (or to a later write whose call failed: unknown outcome).
- :func:`check_compute`: every acknowledged content event has, for every plugin, a value or
  a dead letter; every value equals what the plugin computes in-process
  (:class:`compute.harness.LocalHarness`, the same code without Flink).
- :func:`replay_changelog`: the store equals a replay of the changelog up to its stored
  offsets (the ingester's own batch step into a fresh store, then
  :func:`gss.rebuild.verify_stores`), for every key; it also yields the changelog records
  that a newer-wins store applies, the values that must each have an event.
- :func:`check_events`: every applied record's event delivered; after dedupe by event id
  exactly one event per value; a redelivered id carries the same event; per entity,
  (event time, position) never goes backwards in delivery order.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from clients.lookup import GssClient
from contract.registry import Registry
from contract.settings import KafkaSettings
from contract.v1 import dead_letter_pb2, envelope_pb2, signals_pb2
from tests.chaos.load import Delivered, WriterModel

# -- reading topics -------------------------------------------------------------------------


def read_topic(
    bootstrap: str, topic: str, *, until: dict[int, int] | None = None, timeout: float = 60.0
) -> list[Message]:
    """Every record of ``topic`` from offset 0, up to ``until`` (partition -> next offset;
    default: each partition's end now), partition by partition in offset order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "chaos-oracle",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        partitions = sorted(meta.topics[topic].partitions) if topic in meta.topics else []
        got: dict[int, list[Message]] = defaultdict(list)
        deadline = time.monotonic() + timeout
        if until is None:
            # To the end: until nothing came for 3 s (the local broker's high watermarks are
            # not to be trusted: gss/cli/backfill.py).
            consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
            idle_since = time.monotonic()
            while time.monotonic() - idle_since < 3.0 and time.monotonic() < deadline:
                msgs = [m for m in consumer.consume(1000, 0.5) if m.error() is None]
                if msgs:
                    idle_since = time.monotonic()
                for msg in msgs:
                    got[msg.partition()].append(msg)
            return [m for p in sorted(got) for m in sorted(got[p], key=lambda m: m.offset())]
        wanted = {p: until.get(p, 0) for p in partitions if until.get(p, 0) > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in wanted])
        while wanted and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is not None:
                    continue
                p = msg.partition()
                if p in wanted and msg.offset() < wanted[p]:
                    got[p].append(msg)
                    if msg.offset() + 1 >= wanted[p]:
                        del wanted[p]
        if wanted:
            raise AssertionError(f"could not read {topic} up to {wanted} within {timeout:.0f} s")
        return [m for p in sorted(got) for m in sorted(got[p], key=lambda m: m.offset())]
    finally:
        consumer.close()


# -- the writer -----------------------------------------------------------------------------


@dataclass
class WriterCheck:
    keys: int = 0
    acked_keys: int = 0
    equal_last_acked: int = 0
    equal_unknown_outcome: int = 0
    lost: int = 0  # acknowledged, then not readable or an older value
    examples: list[str] = field(default_factory=list)


def check_writer(client: GssClient, model: WriterModel, signal: str) -> WriterCheck:
    out = WriterCheck()
    keys = sorted(set(model.acked) | set(model.pending))
    out.keys = len(keys)
    out.acked_keys = len(model.acked)
    for start in range(0, len(keys), 200):
        chunk = keys[start : start + 200]
        for entity, row in zip(chunk, client.get("images", chunk, [signal]), strict=True):
            cell = row.signals[signal]
            stored = cell.value.hash if cell.found and cell.value is not None else None  # type: ignore[attr-defined]
            acked = model.acked.get(entity)
            pending = model.pending.get(entity, [])
            if acked is not None and stored == acked:
                out.equal_last_acked += 1
            elif stored is not None and stored in pending:
                out.equal_unknown_outcome += 1
            elif acked is None and stored is None:
                continue  # never acknowledged, not applied either
            else:
                out.lost += 1
                if len(out.examples) < 5:
                    out.examples.append(f"{entity}: stored {stored}, last acked {acked}")
    return out


# -- compute ----------------------------------------------------------------------------------


@dataclass
class ComputeCheck:
    events: int = 0
    expected: int = 0  # events x plugins
    values: int = 0
    equal: int = 0
    different: int = 0
    dead_lettered: int = 0
    missing: int = 0  # neither value nor dead letter: silently dropped
    dead_letters_by_reason: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)


def dead_letters(bootstrap: str, topic: str) -> list[dead_letter_pb2.DeadLetter]:
    return [
        dead_letter_pb2.DeadLetter.FromString(m.value() or b"")
        for m in read_topic(bootstrap, topic)
    ]


def _same(a: Any, b: Any) -> bool:
    """Values equal; a model's float score within 1e-4 (Triton may batch differently)."""
    if isinstance(a, signals_pb2.SafetyScore) and isinstance(b, signals_pb2.SafetyScore):
        return abs(a.score - b.score) <= 1e-4 and a.model_version == b.model_version
    return bool(a == b)


def expected_outputs(
    plugins: Sequence[Any], settings: Any, registry: Registry, events: dict[str, bytes], models: Any
) -> dict[tuple[str, str], Any]:
    """(entity, name@version) -> the value the plugins compute in-process for ``events``;
    a dead letter in the harness is left out (the oracle then accepts the job's either way)."""
    from compute.harness import LocalHarness

    harness = LocalHarness(plugins, settings=settings, registry=registry, models=models)
    out: dict[tuple[str, str], Any] = {}
    for payload in events.values():
        for output in harness.send("content.images", payload):
            if output.record is None:
                continue
            record = output.record
            from clients.lookup import decode_value

            out[(record.entity_id, f"{record.signal.name}@{record.signal.version}")] = decode_value(
                record.value
            )
    return out


def check_compute(
    client: GssClient,
    events: dict[str, bytes],
    signals: Sequence[str],
    expected: dict[tuple[str, str], Any],
    letters: Iterable[dead_letter_pb2.DeadLetter],
) -> ComputeCheck:
    out = ComputeCheck(events=len(events), expected=len(events) * len(signals))
    lettered = set()
    for letter in letters:
        if letter.producer.startswith("flink:"):
            key = (letter.entity_id, f"{letter.signal.name}@{letter.signal.version}")
            lettered.add(key)
            out.dead_letters_by_reason[dead_letter_pb2.DeadLetter.Reason.Name(letter.reason)] += 1
    entities = sorted(events)
    for start in range(0, len(entities), 200):
        chunk = entities[start : start + 200]
        for entity, row in zip(chunk, client.get("images", chunk, list(signals)), strict=True):
            for signal in signals:
                cell = row.signals[signal]
                if cell.found:
                    out.values += 1
                    want = expected.get((entity, signal))
                    if want is None or _same(cell.value, want):
                        out.equal += 1
                    else:
                        out.different += 1
                        if len(out.examples) < 5:
                            out.examples.append(f"{entity} {signal}: {cell.value} != {want}")
                elif (entity, signal) in lettered:
                    out.dead_lettered += 1
                else:
                    out.missing += 1
                    if len(out.examples) < 5:
                        out.examples.append(f"{entity} {signal}: no value, no dead letter")
    return out


def compute_done(
    client: GssClient,
    events: dict[str, bytes],
    signals: Sequence[str],
    lettered: set[tuple[str, str]],
) -> int:
    """How many (event, plugin) pairs have neither a value nor a dead letter yet."""
    entities = sorted(events)
    left = 0
    for start in range(0, len(entities), 200):
        chunk = entities[start : start + 200]
        for entity, row in zip(chunk, client.get("images", chunk, list(signals)), strict=True):
            left += sum(
                1 for s in signals if not row.signals[s].found and (entity, s) not in lettered
            )
    return left


# -- the store against its changelog ----------------------------------------------------------


@dataclass
class ReplayCheck:
    changelog_records: int = 0
    keys_compared: int = 0
    keys_differing: int = 0
    offsets_differing: int = 0
    applied_records: int = 0
    examples: list[str] = field(default_factory=list)
    # (partition, offset) of every record a newer-wins store applies, with its entity.
    applied: dict[tuple[int, int], tuple[str, str, int]] = field(default_factory=dict)


def applied_records(
    records: Iterable[tuple[int, int, envelope_pb2.SignalRecord]],
) -> dict[tuple[int, int], tuple[str, str, int]]:
    """The changelog records (partition, offset, record; each partition in offset order) that
    the store applies, hence announces: newer-wins by (event time, offset), and a record
    whose event time and value bytes equal the stored one's is no new value (skipped, no
    event: store.records.same_value). (partition, offset) -> (entity, signal, event time)."""
    stored: dict[tuple[str, str, int], tuple[int, int, bytes]] = {}
    out: dict[tuple[int, int], tuple[str, str, int]] = {}
    for partition, offset, record in records:
        key = (record.entity_id, record.signal.name, record.signal.version)
        event_time = record.envelope.event_time.ToMicroseconds()
        value = record.value.value
        previous = stored.get(key)
        if previous is not None:
            if (event_time, offset) <= previous[:2]:
                continue
            if event_time == previous[0] and value == previous[2]:
                continue
        stored[key] = (event_time, offset, value)
        out[(partition, offset)] = (
            record.entity_id,
            f"{record.signal.name}@{record.signal.version}",
            event_time,
        )
    return out


def replay_changelog(
    store_path: Path, work: Path, registry: Registry, kafka: KafkaSettings, bootstrap: str
) -> ReplayCheck:
    """See the module docstring. The server must be stopped (the store is opened here)."""
    from gss.kafka.ingester import decode_batch, stored_offsets
    from gss.rebuild import verify_stores
    from gss.writes import now_us
    from store.db import SignalStore

    out = ReplayCheck()
    with SignalStore(store_path, list(registry.galaxies)) as store:
        replay_path = work / "replay-store"
        with SignalStore(replay_path, list(registry.galaxies)) as replay:
            for galaxy in registry:
                topic = kafka.topic(kafka.changelog_topic, galaxy.name)
                offsets = stored_offsets(store, topic)
                msgs = read_topic(bootstrap, topic, until=offsets) if offsets else []
                out.changelog_records += len(msgs)
                for start in range(0, len(msgs), 5000):
                    batch = decode_batch(
                        {topic: galaxy}, registry, msgs[start : start + 5000], now_us()
                    )
                    replay.apply(batch.writes, meta=batch.offset_meta())
                if galaxy.name == "images":
                    out.applied.update(
                        applied_records(
                            (
                                m.partition(),
                                m.offset(),
                                envelope_pb2.SignalRecord.FromString(m.value() or b""),
                            )
                            for m in msgs
                        )
                    )
            replay.flush()
            verification = verify_stores(store, replay, registry, kafka)
    out.applied_records = len(out.applied)
    out.keys_compared = sum(verification.values.keys.values())
    out.keys_differing = verification.values.differing
    out.offsets_differing = len(verification.offset_differences)
    out.examples = [
        str(d) for d in verification.values.differences[:5]
    ] + verification.offset_differences[:5]
    return out


# -- events ----------------------------------------------------------------------------------


@dataclass
class EventCheck:
    delivered: int = 0  # every delivery, redeliveries included
    unique_ids: int = 0
    redeliveries: int = 0  # deliveries of an id already seen (removed by dedupe)
    redelivered_different: int = 0  # an id seen again with other content
    expected: int = 0  # values applied (records a newer-wins store applies)
    lost: int = 0  # applied values without an event
    duplicates: int = 0  # values with more than one event id (after dedupe)
    unexpected: int = 0  # events for no applied value
    order_inversions: int = 0  # per entity, (event time, position) going backwards
    # Of the lost: how many are on the availability topic all the same (so the subscriber
    # missed them), and how many never reached it (GSS did not publish them).
    lost_but_on_topic: int = 0
    lost_not_on_topic: int = 0
    on_topic: int = 0  # distinct event ids on the availability topic at the end
    examples: list[str] = field(default_factory=list)


def topic_events(bootstrap: str, topic: str) -> dict[tuple[int, int], set[str]]:
    """Changelog position -> the event ids the availability topic holds for it."""
    from contract.v1 import events_pb2

    out: dict[tuple[int, int], set[str]] = defaultdict(set)
    for msg in read_topic(bootstrap, topic):
        event = events_pb2.SignalAvailable.FromString(msg.value() or b"")
        out[(event.position.partition, event.position.offset)].add(event.event_id)
    return out


def check_events(
    delivered: Sequence[Delivered],
    applied: dict[tuple[int, int], Any],
    on_topic: dict[tuple[int, int], set[str]] | None = None,
) -> EventCheck:
    out = EventCheck(delivered=len(delivered), expected=len(applied))
    on_topic = on_topic or {}
    out.on_topic = sum(len(ids) for ids in on_topic.values())
    first: dict[str, Delivered] = {}
    ids_by_position: dict[tuple[int, int], set[str]] = defaultdict(set)
    last_by_entity: dict[str, tuple[int, int, int]] = {}
    for d in delivered:
        seen = first.get(d.event_id)
        if seen is not None:
            out.redeliveries += 1
            if seen != d:
                out.redelivered_different += 1
            continue
        first[d.event_id] = d
        ids_by_position[(d.partition, d.offset)].add(d.event_id)
        order = (d.event_time_us, d.partition, d.offset)
        previous = last_by_entity.get(d.entity_id)
        if previous is not None and order < previous:
            out.order_inversions += 1
            if len(out.examples) < 5:
                out.examples.append(f"{d.entity_id}: {order} after {previous}")
        last_by_entity[d.entity_id] = max(order, previous) if previous else order
    out.unique_ids = len(first)
    for position, what in applied.items():
        if position not in ids_by_position:
            out.lost += 1
            if position in on_topic:
                out.lost_but_on_topic += 1
            else:
                out.lost_not_on_topic += 1
            if len(out.examples) < 100:
                out.examples.append(f"no event for changelog record {position}: {what}")
    out.duplicates = sum(len(ids) - 1 for ids in ids_by_position.values())
    out.unexpected = sum(1 for p in ids_by_position if p not in applied)
    return out
