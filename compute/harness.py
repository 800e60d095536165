"""Run plugins in-process over events, without Flink or Kafka: the signal developer's test bed.

    harness = LocalHarness([dominant_colors, dhash])
    harness.send("content.images", image_event)     # -> the outputs it caused
    harness.latest("images", image_id, "dhash@1")   # -> the DHash value written
    harness.close()                                 # end of input: closes open windows

It applies the same rules as the Flink job (the shared :mod:`compute.execution`): decoding,
retries and dead letters, the records written, event-time windows with watermarks and
allowed lateness, joins fed by the values other plugins write. Differences: the watermark
moves after every event (Flink emits it periodically, so an event Flink still counts on
time may already be late here), everything runs in order in one thread, and join state
expires by the harness's ``clock``. ``gss signal test`` and the ``signal_harness`` pytest
fixture (:mod:`compute.testing`) are thin layers over this class.

Settings are the caller's: ``LocalHarness(plugins, settings=load_settings())`` to honour
``GSS_*`` variables; without ``settings`` the built-in defaults (the example registry).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, symbol_database
from google.protobuf.message import Message

from compute import execution
from compute.binding import Bound, bind
from compute.execution import SinkRow
from compute.inference import Submitter
from compute.plugin import Inputs, Plugin, Shape
from contract import deadletter
from contract.errors import InvalidArgumentError
from contract.registry import Registry, load_registry
from contract.settings import Settings, default_settings
from contract.v1 import dead_letter_pb2, envelope_pb2


@dataclass(frozen=True)
class Output:
    """One record a run wrote: a signal record to a changelog, or a dead letter."""

    topic: str
    key: bytes
    record: envelope_pb2.SignalRecord | None = None
    dead_letter: dead_letter_pb2.DeadLetter | None = None


@dataclass
class _Window:
    aggregate: Any
    fired: bool = False
    current: bool = False  # early firing: writes its running value (execution.current_from)


class LocalHarness:
    """Plugins run in-process over events sent one at a time; see the module docstring."""

    def __init__(
        self,
        plugins: Sequence[Plugin],
        *,
        settings: Settings | None = None,
        registry: Registry | None = None,
        models: Submitter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or default_settings()
        self.registry = registry or load_registry(self.settings.registry_path)
        self.bounds = bind(plugins, self.registry, self.settings)
        self.models = models
        self.clock = clock
        self.outputs: list[Output] = []
        self.metrics: Counter[tuple[str, str]] = Counter()
        self._by_topic: dict[str, list[Bound]] = defaultdict(list)
        self._joins: list[Bound] = [b for b in self.bounds if b.plugin.join is not None]
        for bound in self.bounds:
            if bound.plugin.join is None:
                self._by_topic[bound.input_topic].append(bound)
        self._max_ts: dict[int, int] = {}
        self._windows: dict[int, dict[tuple[bytes, int], _Window]] = defaultdict(dict)
        self._join_state: dict[tuple[int, bytes], execution.Held] = {}
        self._buckets: dict[tuple[int, Any], dict[bytes, tuple[Inputs, float]]] = defaultdict(dict)
        self._gathered: dict[tuple[int, bytes], execution.Gathered] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- input ---------------------------------------------------------------------------

    @property
    def topics(self) -> list[str]:
        """The content topics the plugins read (joins read changelogs and need no input)."""
        return sorted(self._by_topic)

    def send(self, topic: str, event: Message | bytes) -> list[Output]:
        """Process one content event (or changelog record) and return what it caused."""
        payload = event if isinstance(event, bytes) else event.SerializeToString()
        start = len(self.outputs)
        bounds = self._by_topic.get(topic)
        is_changelog = any(b.input_topic == topic for b in self._joins)
        if not bounds and not is_changelog:
            raise InvalidArgumentError(
                f"no plugin reads topic {topic!r}; these do: {', '.join(self.topics) or 'none'}"
            )
        rows: list[SinkRow] = []
        for bound in bounds or ():
            rows.extend(self._process(bound, payload))
        if is_changelog:
            rows.extend(self._feed_joins(topic, payload))
        self._emit(rows)
        return self.outputs[start:]

    def send_all(self, events: Iterable[tuple[str, Message | bytes]]) -> list[Output]:
        start = len(self.outputs)
        for topic, event in events:
            self.send(topic, event)
        return self.outputs[start:]

    def close(self) -> list[Output]:
        """End of input: every open window fires, as when a bounded Flink source ends."""
        start = len(self.outputs)
        for index, bound in enumerate(self.bounds):
            if bound.plugin.shape is Shape.GROUP_BY:
                self._emit(self._advance(index, bound, 2**62))
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        return self.outputs[start:]

    # -- results -------------------------------------------------------------------------

    @property
    def records(self) -> list[envelope_pb2.SignalRecord]:
        """Every signal record written, in order."""
        return [o.record for o in self.outputs if o.record is not None]

    @property
    def dead_letters(self) -> list[dead_letter_pb2.DeadLetter]:
        return [o.dead_letter for o in self.outputs if o.dead_letter is not None]

    def values(self, galaxy: str, entity_id: str | int | bytes, signal: str) -> list[Message]:
        """Every value written for one entity's signal (``"name@version"``), in order."""
        codec = self.registry.galaxy(galaxy).codec
        text = codec.canonical_text(entity_id)
        name, _, version = signal.partition("@")
        spec = self.registry.galaxy(galaxy).signal(name, int(version or 0))
        return [
            spec.unpack(r.value)
            for r in self.records
            if r.galaxy == galaxy
            and r.entity_id == text
            and r.signal.name == spec.name
            and r.signal.version == spec.version
        ]

    def latest(self, galaxy: str, entity_id: str | int | bytes, signal: str) -> Message | None:
        """The value GSS would serve: the newest by event time, then by write order."""
        codec = self.registry.galaxy(galaxy).codec
        text = codec.canonical_text(entity_id)
        name, _, version = signal.partition("@")
        spec = self.registry.galaxy(galaxy).signal(name, int(version or 0))
        best: tuple[int, int] | None = None
        value = None
        for position, r in enumerate(self.records):
            if (r.galaxy, r.entity_id, r.signal.name, r.signal.version) != (
                galaxy,
                text,
                spec.name,
                spec.version,
            ):
                continue
            order = (execution.ms_of(r.envelope.event_time), position)
            if best is None or order > best:
                best, value = order, r
        return spec.unpack(value.value) if value is not None else None

    # -- internals -----------------------------------------------------------------------

    def _tally(self, bound: Bound) -> execution.Tally:
        def tally(name: str, amount: int) -> None:
            self.metrics[(bound.ref, name)] += amount

        return tally

    def _emit(self, rows: list[SinkRow]) -> None:
        pending = list(rows)
        while pending:
            topic, key, value = pending.pop(0)
            if any(b.dlq_topic == topic for b in self.bounds):
                self.outputs.append(Output(topic, key, dead_letter=deadletter.parse(value)))
                continue
            self.outputs.append(
                Output(topic, key, record=envelope_pb2.SignalRecord.FromString(value))
            )
            if any(b.input_topic == topic for b in self._joins):
                pending.extend(self._feed_joins(topic, value))

    def _process(self, bound: Bound, payload: bytes) -> list[SinkRow]:
        tally = self._tally(bound)
        plugin = bound.plugin
        if plugin.shape is Shape.MAP and plugin.model is None:
            return execution.run_map(bound, payload, tally)
        if plugin.shape is Shape.MAP:
            if self.models is None:
                raise InvalidArgumentError(
                    f"{bound.ref} calls model {plugin.model!r}: pass models=<a model client> "
                    "(compute.inference.connect(settings.triton) for a Triton server)"
                )
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
            return self._loop.run_until_complete(
                execution.run_model(bound, payload, self.models, tally)
            )
        return self._group(bound, payload, tally)

    def _group(self, bound: Bound, payload: bytes, tally: execution.Tally) -> list[SinkRow]:
        index = self.bounds.index(bound)
        event, extracted, rows = execution.extract(bound, payload, tally)
        if event is None:
            return rows
        group_by = bound.plugin.group_by
        source = bound.plugin.source
        assert group_by is not None
        assert source is not None
        size = _ms(group_by.window.size)
        lateness = _ms(group_by.allowed_lateness)
        watermark = self._watermark(index, bound)
        newest = max(self._max_ts.get(index, event.event_ms), event.event_ms)
        if extracted is not None and not rows:
            windows = self._windows[index]
            starts = execution.window_starts(group_by.window, event.event_ms)
            live = [s for s in starts if s + size - 1 + lateness > watermark]
            if not live:
                rows.append(execution.too_late(bound, event, payload, tally))
            for start in live:
                window = windows.get((event.entity, start))
                if window is None:
                    window = windows[(event.entity, start)] = _Window(group_by.aggregate.zero())
                window.aggregate = group_by.aggregate.add(window.aggregate, extracted)
                # A late event within allowed lateness fires the window again; with early
                # firing an open window writes its running value at once (Flink: within the
                # early_firing interval).
                current_from = execution.current_from(group_by.window, start)
                if group_by.early_firing is not None and (
                    current_from is None or newest >= current_from
                ):
                    window.current = True
                if window.fired or window.current:
                    rows.extend(
                        execution.window_result(
                            bound, event.entity, window.aggregate, start, start + size, tally
                        )
                    )
        self._max_ts[index] = max(self._max_ts.get(index, event.event_ms), event.event_ms)
        rows.extend(self._advance(index, bound, self._watermark(index, bound)))
        return rows

    def _watermark(self, index: int, bound: Bound) -> int:
        source = bound.plugin.source
        assert source is not None
        if index not in self._max_ts:
            return -(2**62)
        # Flink's bounded-out-of-orderness generator: newest timestamp - bound - 1 ms.
        return self._max_ts[index] - _ms(source.max_out_of_orderness) - 1

    def _advance(self, index: int, bound: Bound, watermark: int) -> list[SinkRow]:
        group_by = bound.plugin.group_by
        source = bound.plugin.source
        assert group_by is not None
        assert source is not None
        size = _ms(group_by.window.size)
        lateness = _ms(group_by.allowed_lateness)
        newest = watermark + _ms(source.max_out_of_orderness) + 1
        rows: list[SinkRow] = []
        windows = self._windows[index]
        for (entity, start), window in sorted(windows.items(), key=lambda kv: kv[0][1]):
            if window.fired:
                continue
            current_from = execution.current_from(group_by.window, start)
            closes = start + size - 1 <= watermark
            # With early firing a sliding window writes once it becomes the first to end.
            becomes_current = (
                group_by.early_firing is not None
                and not window.current
                and current_from is not None
                and newest >= current_from
            )
            if closes or becomes_current:
                window.fired = closes
                window.current = True
                rows.extend(
                    execution.window_result(
                        bound, entity, window.aggregate, start, start + size, self._tally(bound)
                    )
                )
        for key in [k for k in windows if k[1] + size - 1 + lateness <= watermark]:
            del windows[key]
        return rows

    def _feed_joins(self, topic: str, payload: bytes) -> list[SinkRow]:
        rows: list[SinkRow] = []
        try:
            updates = execution.join_updates(self._joins, payload)
        except execution.BadInput:
            for bound in self._joins:
                if bound.input_topic == topic:
                    self._tally(bound)(execution.BAD_INPUTS, 1)
            return rows
        for index, update in updates:
            bound = self._joins[index]
            tally = self._tally(bound)
            tally(execution.INPUTS, 1)
            now = self.clock()
            state = self._join_state.setdefault((index, update.entity), {})
            if not execution.hold_input(bound, state, update, now):
                continue  # an older value of this input: the newer one stays
            inputs = execution.join_inputs(bound, update.entity, state)
            if inputs is None:
                continue
            if bound.plugin.shape is Shape.JOIN:
                rows.extend(execution.run_join(bound, update.entity, inputs, tally))
                continue
            keys, dead = execution.match_keys(bound, update.entity, inputs, tally)
            rows.extend(dead)
            if not keys:
                continue
            peers: dict[str, Inputs] = {}
            late: dict[bytes, Inputs] = {}
            for key in keys:
                bucket = self._buckets[(index, key)]
                for entity, peer in execution.bucket_members(
                    bound, bucket, update.entity, inputs, now
                ):
                    peers[peer.entity_id] = peer
                    if peer.event_time > inputs.event_time:
                        late[entity] = peer
            gathered = self._gathered.setdefault((index, update.entity), execution.Gathered())
            # All keys report at once here; Flink gathers one report per key.
            rows.extend(
                execution.gather_report(
                    bound, update.entity, gathered, "", 1, inputs, list(peers.values()), tally
                )
            )
            for entity in late:
                other = self._gathered.get((index, entity))
                if other is not None:
                    rows.extend(execution.late_peer(bound, entity, other, inputs, tally))
        return rows


def _ms(delta: Any) -> int:
    return execution.millis(delta)


def read_events(
    harness: LocalHarness, lines: Iterable[str], default_topic: str | None = None
) -> Iterator[tuple[str, Message]]:
    """Events from JSON lines: ``{"topic": ..., "event": {...}}`` (protobuf JSON of the
    topic's source schema) or ``{"topic": <a changelog>, "record": {...}}`` (a SignalRecord).
    ``topic`` may be left out when the plugins read a single topic; lines of topics no
    plugin reads are skipped."""
    schemas: dict[str, type[Message]] = {}
    for bound in harness.bounds:
        if bound.plugin.source is not None:
            schemas[bound.input_topic] = bound.plugin.source.schema
    if default_topic is None and len(harness.topics) == 1:
        default_topic = harness.topics[0]
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            topic = item.get("topic", default_topic)
            if "record" in item:
                yield topic, json_format.ParseDict(item["record"], envelope_pb2.SignalRecord())
                continue
            if topic is None:
                raise InvalidArgumentError("no topic: give one per line or --topic")
            if topic not in schemas:
                continue  # a topic none of these plugins reads
            yield topic, json_format.ParseDict(item["event"], schemas[topic]())
        except (ValueError, KeyError, json_format.ParseError) as exc:
            raise InvalidArgumentError(f"events line {number}: {exc}") from None


def output_json(output: Output) -> dict[str, Any]:
    """An output as the JSON object ``gss signal test`` prints."""
    if output.dead_letter is not None:
        letter = json_format.MessageToDict(output.dead_letter, preserving_proto_field_name=True)
        letter.pop("input", None)
        return {"topic": output.topic, "dead_letter": letter}
    record = output.record
    assert record is not None
    value_type = symbol_database.Default().GetSymbol(record.value.TypeName())
    return {
        "topic": output.topic,
        "galaxy": record.galaxy,
        "entity_id": record.entity_id,
        "signal": f"{record.signal.name}@{record.signal.version}",
        "event_time": record.envelope.event_time.ToJsonString(),
        "value": json_format.MessageToDict(
            value_type.FromString(record.value.value), preserving_proto_field_name=True
        ),
        **(
            {"model": f"{record.envelope.model_name}/{record.envelope.model_version}"}
            if record.envelope.model_name
            else {}
        ),
    }
