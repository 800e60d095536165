"""Dead letters fed back through their plugin once it is fixed: what `gss dlq redrive` runs.

A map or model plugin's dead letter carries the content event it could not turn into a value
(its bytes, and since compute records it, its topic, partition, offset, key and Kafka
timestamp): re-driving runs the plugin on it through the same code as the Flink job
(:mod:`compute.execution`), so the value, its envelope and its lineage (the original input's
position) are what live processing would have written. A window's or join's dead letter holds a
summary of many inputs, not one input, and cannot be re-driven: backfill the signal instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

from compute import execution
from compute.binding import Bound
from compute.plugin import Shape
from contract import deadletter
from contract.errors import InvalidArgumentError
from contract.v1 import envelope_pb2

# What a redrive can fix: the plugin raised, returned the wrong type, or could not read the
# input (a fixed schema or decoder may read it now).
REDRIVABLE = frozenset({"plugin_error", "bad_output", "bad_input"})
PRODUCER = "gss-redrive"


@dataclass(frozen=True)
class Redriven:
    """What one dead letter gave this time: the value's changelog rows, or a new failure."""

    rows: list[execution.SinkRow]
    failure: deadletter.DeadLetter | None

    @property
    def ok(self) -> bool:
        return self.failure is None


def redrivable(bound: Bound) -> Bound:
    """``bound`` as a redrive runs it (its values' producer is ``gss-redrive``); refuses a
    plugin whose dead letters do not hold one input."""
    if bound.plugin.shape is not Shape.MAP:
        raise InvalidArgumentError(
            f"{bound.ref} is a {bound.plugin.shape} plugin: its dead letters summarise many "
            "inputs, so they cannot be re-driven one by one; backfill the signal instead "
            "(gss signal backfill)"
        )
    return dataclasses.replace(bound, producer=PRODUCER)


def position_of(letter: deadletter.DeadLetter) -> execution.Position | None:
    """Where the dead letter's input was read, if its writer knew."""
    if not letter.HasField("input_offset"):
        return None
    return execution.Position(
        letter.input_topic,
        letter.input_partition,
        letter.input_offset,
        letter.input_timestamp.ToMilliseconds() if letter.HasField("input_timestamp") else None,
        letter.input_key if letter.HasField("input_key") else None,
    )


def redrive(bound: Bound, letter: deadletter.DeadLetter, models: Any = None) -> Redriven:
    """Run ``bound``'s plugin (see :func:`redrivable`) on the dead letter's input, once."""
    at = position_of(letter)
    if bound.plugin.model is None:
        rows = execution.run_map(bound, letter.input, at=at)
    else:
        if models is None:
            raise InvalidArgumentError(
                f"{bound.ref} calls model {bound.plugin.model!r}: pass models"
            )
        rows = asyncio.run(execution.run_model(bound, letter.input, models, at=at))
    failures = [deadletter.parse(value) for topic, _, value in rows if topic == bound.dlq_topic]
    values = [row for row in rows if row[0] == bound.changelog_topic]
    return Redriven(values, failures[0] if failures else None)


def resolved_by(stored: envelope_pb2.Envelope | None, letter: deadletter.DeadLetter) -> bool:
    """True if the stored value already answers the dead letter: it was computed from the
    same input (its lineage names the input's position), or it is at least as new (the store
    would keep it over a re-driven value anyway)."""
    if stored is None:
        return False
    at = position_of(letter)
    if at is not None and any((p.topic, p.partition, p.offset) == at.source for p in stored.inputs):
        return True
    return letter.HasField("event_time") and (
        stored.event_time.ToMilliseconds() >= letter.event_time.ToMilliseconds()
    )
