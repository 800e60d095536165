"""Turning signal records into store writes: the validation every write path shares.

PutSignals (direct or through the changelog) and the changelog ingester both call
:func:`to_write`, so a value is accepted or refused by the same rules wherever it enters.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from google.protobuf.message import DecodeError

from contract.errors import InvalidArgumentError, NotFoundError
from contract.registry import GalaxySpec, Registry, SignalSpec
from contract.v1 import envelope_pb2
from store import records
from store.db import Write


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
    else that is wrong with it (id, value type, undecodable value, missing event time).
    """
    galaxy, spec = resolve(registry, record)
    entity = galaxy.codec.to_bytes(record.entity_id)
    if record.value.type_url != spec.type_url:
        raise InvalidArgumentError(
            f"signal {spec.ref} takes {spec.value_type}; the value is "
            f"{record.value.type_url or 'empty'}"
        )
    try:
        spec.message_class.FromString(record.value.value)
    except DecodeError as exc:
        raise InvalidArgumentError(
            f"value of {spec.ref} does not decode as {spec.value_type}: {exc}"
        ) from None
    if not record.envelope.HasField("event_time"):
        raise InvalidArgumentError(
            "envelope.event_time is required (it orders writes and drives TTL)"
        )
    envelope = envelope_pb2.Envelope()
    envelope.CopyFrom(record.envelope)
    envelope.write_time.FromMicroseconds(write_time_us)
    if position is not None:
        envelope.source.CopyFrom(position)
    else:
        envelope.ClearField("source")
    return Write(
        galaxy.name, spec.store_key(entity), records.encode(spec.version, record.value, envelope)
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
