"""The transactional outbox: availability events (and dead letters) committed with the values.

:meth:`Outbox.apply_with_events` is the store write path with events: it calls
:meth:`store.db.SignalStore.apply` with a ``derive_meta`` that turns every write that wins
into an outbox entry, so a value, its event and the changelog offsets it came from are in one
WriteBatch. :class:`gss.kafka.publisher.OutboxPublisher` sends the entries and deletes each
only after the broker acknowledged it.

Event ids are a hash of what was written (galaxy, store key, event time, changelog partition
and offset, value hash): the same on every redelivery of the entry, and the same again if the
store is rebuilt by replaying the changelog.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import structlog

from contract import headers
from contract.keys import split_store_key
from contract.registry import GalaxySpec, Registry
from contract.settings import KafkaSettings
from contract.v1 import envelope_pb2, events_pb2
from gss.kafka import metrics
from gss.kafka.meta import (
    BACKFILL_OUTBOX_PREFIX,
    OUTBOX_PREFIX,
    EntryKind,
    OutboxEntry,
    outbox_key,
    outbox_sequence,
)
from store.db import AppliedBatch, SignalStore, Write
from store.records import StoredRecord

log = structlog.get_logger(__name__)

_ID_PARTS = struct.Struct(">qqi")
# Stands for a tombstone's value in its event id, so a deletion's id never equals a value's.
_TOMBSTONE_HASH = hashlib.sha256(b"gss-tombstone").digest()


def event_id(
    galaxy: str,
    store_key: bytes,
    event_time_us: int,
    partition: int,
    offset: int,
    value_hash: bytes,
) -> str:
    """The stable id of the event for one stored write (32 hex characters)."""
    digest = hashlib.sha256()
    digest.update(galaxy.encode() + b"\x00" + store_key + b"\x00")
    digest.update(_ID_PARTS.pack(event_time_us, offset, partition))
    digest.update(value_hash)
    return digest.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class _SignalInfo:
    galaxy: GalaxySpec
    ref: envelope_pb2.SignalRef
    inline: bool
    header: bytes


class EventBuilder:
    """Builds the availability event of a stored write."""

    def __init__(self, registry: Registry, kafka: KafkaSettings) -> None:
        self.registry = registry
        self.inline_max = kafka.inline_value_max_bytes
        self._signals: dict[tuple[str, bytes], _SignalInfo] = {}

    def _info(self, galaxy_name: str, key: bytes) -> tuple[_SignalInfo, bytes]:
        """What the event needs to know about the signal of a store key, and the entity."""
        galaxy = self.registry.galaxy(galaxy_name)
        length = galaxy.codec.length
        cache_key = (galaxy_name, key[length:])
        info = self._signals.get(cache_key)
        if info is None:
            _, name, version = split_store_key(key, length)
            spec = galaxy.signal(name, version)
            info = _SignalInfo(
                galaxy,
                envelope_pb2.SignalRef(name=name, version=version),
                spec.inline_value,
                spec.ref.encode(),
            )
            self._signals[cache_key] = info
        return info, key[:length]

    def event(self, write: Write) -> events_pb2.SignalAvailable:
        return self._event(write, *self._info(write.galaxy, write.key))

    def _event(self, write: Write, info: _SignalInfo, entity: bytes) -> events_pb2.SignalAvailable:
        stored = StoredRecord.decode(write.stored)
        envelope = stored.envelope
        value_hash = (
            _TOMBSTONE_HASH if stored.deleted else hashlib.sha256(stored.value.value).digest()
        )
        source = envelope.source if envelope.HasField("source") else None
        event = events_pb2.SignalAvailable(
            event_id=event_id(
                write.galaxy,
                write.key,
                stored.event_time_us,
                source.partition if source else -1,
                source.offset if source else -1,
                value_hash,
            ),
            galaxy=write.galaxy,
            entity_id=info.galaxy.codec.to_text(entity),
            signal=info.ref,
            event_time=envelope.event_time,
            write_time=envelope.write_time,
            value_hash=b"" if stored.deleted else value_hash,
            deleted=stored.deleted,
            producer=envelope.producer,
            model_name=envelope.model_name,
            model_version=envelope.model_version,
            position=source,
            backfill=envelope.backfill,
        )
        if info.inline and not stored.deleted and len(stored.value.value) <= self.inline_max:
            event.value.CopyFrom(stored.value)
        return event

    def entry(self, write: Write) -> OutboxEntry:
        return self.marked_entry(write)[0]

    def marked_entry(self, write: Write) -> tuple[OutboxEntry, bool]:
        """The write's outbox entry, and whether it announces a backfilled value."""
        info, entity = self._info(write.galaxy, write.key)
        event = self._event(write, info, entity)
        return self._entry(write, info, entity, event), event.backfill

    def _entry(
        self, write: Write, info: _SignalInfo, entity: bytes, event: events_pb2.SignalAvailable
    ) -> OutboxEntry:
        return OutboxEntry(
            EntryKind.AVAILABLE,
            write.galaxy,
            entity,
            event.SerializeToString(),
            (
                (headers.EVENT_ID, event.event_id.encode()),
                (headers.SIGNAL, info.header),
                (headers.CONTENT_TYPE, headers.SIGNAL_AVAILABLE_CONTENT_TYPE),
            ),
        )


class Outbox:
    """Allocates outbox sequences in commit order, tracks the outbox depth, wakes the publisher.

    Only one Outbox may write to a store: sequences are allocated inside the store's write lock
    and must reach RocksDB in the order they were allocated.
    """

    def __init__(self, store: SignalStore, registry: Registry, kafka: KafkaSettings) -> None:
        self.store = store
        self.builder = EventBuilder(registry, kafka)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        depth, last = 0, 0
        for prefix in (OUTBOX_PREFIX, BACKFILL_OUTBOX_PREFIX):
            for key, _ in store.scan_meta(prefix):
                depth += 1
                last = max(last, outbox_sequence(key))
        self._last_sequence = last
        self._depth = depth
        metrics.OUTBOX_ENTRIES.set(depth)
        if depth:
            log.info("outbox_resumed", outbox_entries=depth)

    @property
    def depth(self) -> int:
        """Entries committed and not yet acknowledged by the broker."""
        return self._depth

    def _next_key(self, backfill: bool = False) -> bytes:
        # Wall-clock nanoseconds keep sequences growing across restarts too.
        self._last_sequence = max(self._last_sequence + 1, time.time_ns())
        return outbox_key(self._last_sequence, backfill=backfill)

    def apply_with_events(
        self,
        writes: Sequence[Write],
        *,
        meta: Mapping[bytes, bytes] | None = None,
        dead_letters: Iterable[OutboxEntry] = (),
    ) -> AppliedBatch:
        """:meth:`SignalStore.apply <store.db.SignalStore.apply>` (the one write path) with an
        availability event for every write that wins, plus the given dead letters, all in the
        same WriteBatch."""
        added = 0

        def derive(winners: Sequence[Write]) -> list[tuple[bytes, bytes]]:
            nonlocal added
            entries = [self.builder.marked_entry(w) for w in winners]
            entries.extend((d, False) for d in dead_letters)
            with self._lock:
                out = [(self._next_key(backfill), e.encode()) for e, backfill in entries]
            added = len(out)
            return out

        result = self.store.apply(writes, meta=meta, derive_meta=derive)
        if added:
            with self._lock:
                self._depth += added
                metrics.OUTBOX_ENTRIES.set(self._depth)
            self._wake.set()
        return result

    def removed(self, keys: Sequence[bytes]) -> None:
        """Delete entries the broker acknowledged."""
        if not keys:
            return
        # Unsynced: an entry that survives a power cut is only published again.
        self.store.delete_meta(keys, sync=False)
        with self._lock:
            self._depth = max(0, self._depth - len(keys))
            metrics.OUTBOX_ENTRIES.set(self._depth)

    def wait(self, timeout: float) -> None:
        """Block until new entries were committed, or ``timeout`` passed."""
        self._wake.wait(timeout)
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()
