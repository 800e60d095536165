"""Turning signal records into store writes: the validation every write path shares.

PutSignals (direct or through the changelog) and the changelog ingester both call
:func:`to_write`, so a value is accepted or refused by the same rules wherever it enters.
:func:`check_event_times` is the gRPC edge's extra rule (event times not far in the future):
records of the changelog come from trusted producers and may be replayed long after.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

from google.protobuf.message import DecodeError

from contract.errors import InvalidArgumentError, NotFoundError
from contract.registry import GalaxySpec, Registry, SignalSpec
from contract.v1 import envelope_pb2
from store import records
from store.db import Write

# The range of google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def now_us() -> int:
    return time.time_ns() // 1000


def resolve(registry: Registry, record: envelope_pb2.SignalRecord) -> tuple[GalaxySpec, SignalSpec]:
    """The galaxy and signal a record names; a write must name its version."""
    galaxy = registry.galaxy(record.galaxy)
    if not record.signal.name:
        raise InvalidArgumentError("signal.name is empty")
    if record.signal.version == 0:
        raise InvalidArgumentError(
            f"signal {record.signal.name!r} has no version: writes must name one (e.g. version 1)"
        )
    return galaxy, galaxy.signal(record.signal.name, record.signal.version)


def to_write(
    registry: Registry,
    record: envelope_pb2.SignalRecord,
    *,
    write_time_us: int,
    position: envelope_pb2.ChangelogPosition | None = None,
) -> Write:
    """Validate one record and encode it for the store.

    Raises NotFoundError for an unknown galaxy or signal, InvalidArgumentError for anything
    else that is wrong with it (id, value type, undecodable value, missing event time, a
    tombstone with a value). A tombstone becomes a :func:`store.records.encode_tombstone`
    write; ``override_ordering`` becomes :attr:`Write.override`.
    """
    galaxy, spec = resolve(registry, record)
    entity = galaxy.codec.to_bytes(record.entity_id)
    if record.tombstone:
        if record.HasField("value"):
            raise InvalidArgumentError(
                f"a tombstone of {spec.ref} deletes the value and carries none: leave value unset"
            )
    elif record.value.type_url != spec.type_url:
        raise InvalidArgumentError(
            f"signal {spec.ref} takes {spec.value_type}; the value is "
            f"{record.value.type_url or 'empty'}"
        )
    try:
        if not record.tombstone:
            spec.message_class.FromString(record.value.value)
    except DecodeError as exc:
        raise InvalidArgumentError(
            f"value of {spec.ref} does not decode as {spec.value_type}: {exc}"
        ) from None
    if not record.envelope.HasField("event_time"):
        raise InvalidArgumentError(
            "envelope.event_time is required (it orders writes and drives TTL)"
        )
    event_time = record.envelope.event_time
    if not (_MIN_SECONDS <= event_time.seconds <= _MAX_SECONDS and 0 <= event_time.nanos < 10**9):
        raise InvalidArgumentError(
            "envelope.event_time is not a valid timestamp (years 1 to 9999, nanos below 1e9)"
        )
    envelope = envelope_pb2.Envelope()
    envelope.CopyFrom(record.envelope)
    envelope.write_time.FromMicroseconds(write_time_us)
    if position is not None:
        envelope.source.CopyFrom(position)
    else:
        envelope.ClearField("source")
    stored = (
        records.encode_tombstone(spec.version, envelope)
        if record.tombstone
        else records.encode(spec.version, record.value, envelope)
    )
    return Write(galaxy.name, spec.store_key(entity), stored, record.override_ordering)


def check_event_times(
    batch: Sequence[envelope_pb2.SignalRecord], *, max_future_seconds: float, now: int | None = None
) -> None:
    """Refuse a record whose event time lies more than ``max_future_seconds`` ahead of now
    (µs ``now``, default the clock): under newer-wins it would freeze its value against every
    later correction. Raises InvalidArgumentError naming the record's index."""
    limit = (now_us() if now is None else now) + int(max_future_seconds * 1_000_000)
    for i, record in enumerate(batch):
        event_us = records.timestamp_us(record.envelope.event_time)
        if event_us > limit:
            try:
                at = datetime.fromtimestamp(event_us / 1_000_000, UTC).isoformat()
            except (OverflowError, ValueError, OSError):
                at = f"{event_us} µs after the epoch"
            raise InvalidArgumentError(
                f"records[{i}]: envelope.event_time {at} is more than {max_future_seconds:g} s "
                "in the future (server.max_future_event_seconds); fix the producer's clock or "
                "the time it sends"
            )


def to_writes(
    registry: Registry,
    batch: Sequence[envelope_pb2.SignalRecord],
    *,
    positions: Sequence[envelope_pb2.ChangelogPosition] | None = None,
) -> list[Write]:
    """Validate a whole batch; the first bad record raises, naming its index."""
    write_time = now_us()
    writes = []
    for i, record in enumerate(batch):
        try:
            writes.append(
                to_write(
                    registry,
                    record,
                    write_time_us=write_time,
                    position=positions[i] if positions else None,
                )
            )
        except (InvalidArgumentError, NotFoundError) as exc:
            raise type(exc)(f"records[{i}]: {exc}") from None
    return writes
