"""The transactional outbox: availability events (and dead letters) committed with the values.

:meth:`Outbox.apply_with_events` is the store write path with events: it calls
:meth:`store.db.SignalStore.apply` with a ``derive_meta`` that turns every write that wins
(as if applied one at a time: the same whatever the batching, on every replica) into an outbox
entry, so a value, its event and the changelog offsets it came from are in one
WriteBatch. :class:`gss.kafka.publisher.OutboxPublisher` sends the entries and deletes each
only after the broker acknowledged it.

Entries just committed also wait in memory (:attr:`Outbox.pending`), as the publisher sends
them, so it need not decode what it reads back; the store stays the record of what is to be
sent and in which order.

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
from typing import NamedTuple

import structlog

from contract import headers, protowire
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
    encode_header,
    entry_head,
    join_entry,
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


class WriteFacts(NamedTuple):
    """What the changelog ingester's hot path already knows of a write it decoded
    (gss.kafka.ingester), so the write's event is spliced from serialized parts
    (:meth:`EventBuilder.fact_entry`) instead of decoding the stored record again."""

    entity_text: str
    event_time_us: int
    event_time: bytes  # the serialized Timestamp
    write_time: bytes  # the serialized Timestamp (the batch's)
    position: bytes  # the serialized ChangelogPosition
    partition: int
    offset: int
    value: bytes  # the serialized Any
    value_bytes: bytes  # the Any's value
    envelope: envelope_pb2.Envelope  # the record's: producer, model, backfill


# An entry as the publisher sends it: kind, galaxy, Kafka key, value, headers.
Pending = tuple[EntryKind, str, bytes | None, bytes, list[tuple[str, bytes]]]


@dataclass(frozen=True, slots=True)
class _SignalInfo:
    galaxy: GalaxySpec
    ref: envelope_pb2.SignalRef
    inline: bool
    header: bytes
    # Encoded once for the spliced events and entries of WriteFacts.
    event_fields: bytes  # SignalAvailable.galaxy and .signal
    entry_head: bytes
    entry_headers: bytes  # the headers after the event id
    id_prefix: bytes  # what the event id's hash starts with
    header_pairs: tuple[tuple[str, bytes], ...]  # the headers after the event id


# SignalAvailable's field tags, as encoded (events.proto).
_EVENT_ID_TAG = protowire.tag(1, 2) + protowire.varint(32)
_VALUE_HASH_TAG = protowire.tag(8, 2) + protowire.varint(32)
_BACKFILL_TRUE = protowire.varint_field(13, 1)
_EVENT_ID_HEADER = encode_header(headers.EVENT_ID, b"")[:-4] + struct.pack(">I", 32)


class EventBuilder:
    """Builds the availability event of a stored write."""

    def __init__(self, registry: Registry, kafka: KafkaSettings) -> None:
        self.registry = registry
        self.inline_max = kafka.inline_value_max_bytes
        self._signals: dict[tuple[str, bytes], _SignalInfo] = {}
        self._key_lengths: dict[str, int] = {}
        self._write_time = b""
        self._write_time_field = b""

    def _info(self, galaxy_name: str, key: bytes) -> tuple[_SignalInfo, bytes]:
        """What the event needs to know about the signal of a store key, and the entity."""
        length = self._key_lengths.get(galaxy_name)
        if length is None:
            length = self._key_lengths[galaxy_name] = self.registry.galaxy(galaxy_name).codec.length
        cache_key = (galaxy_name, key[length:])
        info = self._signals.get(cache_key)
        if info is None:
            galaxy = self.registry.galaxy(galaxy_name)
            _, name, version = split_store_key(key, length)
            spec = galaxy.signal(name, version)
            ref = envelope_pb2.SignalRef(name=name, version=version)
            info = _SignalInfo(
                galaxy,
                ref,
                spec.inline_value,
                spec.ref.encode(),
                protowire.length_delimited(2, galaxy_name.encode())
                + protowire.length_delimited(4, ref.SerializeToString()),
                entry_head(EntryKind.AVAILABLE, galaxy_name, has_key=True),
                encode_header(headers.SIGNAL, spec.ref.encode())
                + encode_header(headers.CONTENT_TYPE, headers.SIGNAL_AVAILABLE_CONTENT_TYPE),
                galaxy_name.encode() + b"\x00",
                (
                    (headers.SIGNAL, spec.ref.encode()),
                    (headers.CONTENT_TYPE, headers.SIGNAL_AVAILABLE_CONTENT_TYPE),
                ),
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

    def fact_entry(self, write: Write, facts: WriteFacts) -> tuple[bytes, bool, Pending]:
        """The encoded outbox entry of a write the ingester's hot path decoded (a value, never
        a tombstone), whether it announces a backfilled value, and the entry as the publisher
        sends it. Equal, as messages and entries, to :meth:`marked_entry`'s."""
        info, entity = self._info(write.galaxy, write.key)
        value_bytes = facts.value_bytes
        value_hash = hashlib.sha256(value_bytes).digest()
        id_bytes = (
            hashlib.sha256(
                b"".join(
                    (
                        info.id_prefix,
                        write.key,
                        b"\x00",
                        _ID_PARTS.pack(facts.event_time_us, facts.offset, facts.partition),
                        value_hash,
                    )
                )
            )
            .hexdigest()[:32]
            .encode()
        )
        if facts.write_time is not self._write_time:
            self._write_time = facts.write_time
            self._write_time_field = protowire.length_delimited(6, facts.write_time)
        varint = protowire.varint
        entity_text = facts.entity_text.encode()
        event_time, position = facts.event_time, facts.position
        parts = [
            _EVENT_ID_TAG,
            id_bytes,
            info.event_fields,
            b"\x1a",  # entity_id
            varint(len(entity_text)),
            entity_text,
            b"\x2a",  # event_time
            varint(len(event_time)),
            event_time,
            self._write_time_field,
            b"\x3a",  # position
            varint(len(position)),
            position,
            _VALUE_HASH_TAG,
            value_hash,
        ]
        if info.inline and len(value_bytes) <= self.inline_max:
            parts += (b"\x4a", varint(len(facts.value)), facts.value)  # value
        envelope = facts.envelope
        producer, model_name, model_version = (
            envelope.producer,
            envelope.model_name,
            envelope.model_version,
        )
        if producer:
            parts.append(protowire.length_delimited(10, producer.encode()))
        if model_name:
            parts.append(protowire.length_delimited(11, model_name.encode()))
        if model_version:
            parts.append(protowire.length_delimited(12, model_version.encode()))
        backfill = envelope.backfill
        if backfill:
            parts.append(_BACKFILL_TRUE)
        event = b"".join(parts)
        encoded = join_entry(
            info.entry_head, entity, event, 3, _EVENT_ID_HEADER + id_bytes + info.entry_headers
        )
        pending: Pending = (
            EntryKind.AVAILABLE,
            write.galaxy,
            entity,
            event,
            [(headers.EVENT_ID, id_bytes), *info.header_pairs],
        )
        return encoded, backfill, pending

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
        # Entries just committed, as the publisher sends them, by outbox key: the publisher
        # takes them from here instead of decoding what it reads back from the store (which
        # stays the one record of what is to be sent, and in which order). Bounded: past it,
        # entries are decoded from the store.
        self.pending: dict[bytes, Pending] = {}
        self._pending_max = 2 * kafka.outbox_max_in_flight
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
        facts: Sequence[WriteFacts | None] | None = None,
    ) -> AppliedBatch:
        """:meth:`SignalStore.apply <store.db.SignalStore.apply>` (the one write path) with an
        availability event for every write that wins, plus the given dead letters, all in the
        same WriteBatch. ``facts[i]``, when given and not None, is what the ingester knew of
        ``writes[i]`` (its event is then spliced, not rebuilt from the stored record)."""
        added = 0
        cached: list[bytes] = []
        known = (
            {id(w): f for w, f in zip(writes, facts, strict=True) if f is not None} if facts else {}
        )
        builder = self.builder

        def derive(winners: Sequence[Write]) -> list[tuple[bytes, bytes]]:
            nonlocal added
            entries: list[tuple[bytes, bool, Pending | None]] = []
            for w in winners:
                fact = known.get(id(w))
                if fact is not None:
                    entries.append(builder.fact_entry(w, fact))
                else:
                    entry, backfill = builder.marked_entry(w)
                    entries.append((entry.encode(), backfill, None))
            entries.extend((d.encode(), False, None) for d in dead_letters)
            out = []
            cache = len(self.pending) < self._pending_max
            with self._lock:
                # One block of sequences for the batch: wall-clock nanoseconds keep them
                # growing across restarts too.
                sequence = max(self._last_sequence + 1, time.time_ns())
                for encoded, backfill, pending in entries:
                    key = outbox_key(sequence, backfill=backfill)
                    sequence += 1
                    out.append((key, encoded))
                    if pending is not None and cache:
                        self.pending[key] = pending
                        cached.append(key)
                self._last_sequence = sequence - 1
            added = len(out)
            return out

        try:
            result = self.store.apply(writes, meta=meta, derive_meta=derive)
        except BaseException:
            for key in cached:  # never committed: never read back, never sent
                self.pending.pop(key, None)
            raise
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
        if self.pending:
            for key in keys:
                self.pending.pop(key, None)
        with self._lock:
            self._depth = max(0, self._depth - len(keys))
            metrics.OUTBOX_ENTRIES.set(self._depth)

    def wait(self, timeout: float) -> None:
        """Block until new entries were committed, or ``timeout`` passed."""
        self._wake.wait(timeout)
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()
