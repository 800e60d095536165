"""SignalStore: RocksDB through rocksdict, one column family per galaxy.

One write path: :meth:`SignalStore.apply` commits a batch of writes, and whatever else must
change with them (changelog offsets, outbox entries), in one atomic WriteBatch, keeping only
writes newer than what is stored. Reads go through RocksDB multi-get.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import structlog
from rocksdict import (
    AccessType,
    BlockBasedOptions,
    Cache,
    Checkpoint,
    DBCompressionType,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

from store import records

log = structlog.get_logger(__name__)

# Offsets, the outbox and other bookkeeping; galaxy names start with a letter, so no clash.
META_CF = "_gss_meta"


@dataclass(frozen=True, slots=True)
class Write:
    """One value (or tombstone) to store: ``stored`` is a :func:`store.records.encode` (or
    :func:`store.records.encode_tombstone`) result. ``override`` applies it even if it is not
    newer than the stored record (an admin's correction); it still competes by order with the
    other writes to its key in the same batch."""

    galaxy: str
    key: bytes
    stored: bytes
    override: bool = False


@dataclass(frozen=True, slots=True)
class AppliedBatch:
    """What :meth:`SignalStore.apply` did: ``applied[i]`` is True if ``writes[i]`` is now stored."""

    applied: list[bool]

    @property
    def applied_count(self) -> int:
        return sum(self.applied)

    @property
    def skipped_count(self) -> int:
        return len(self.applied) - self.applied_count


# Given the writes that won (each replaced its key's value, in batch order: the writes stored and
# any the batch itself superseded), the meta-CF puts to commit with them (outbox entries).
DeriveMeta = Callable[[Sequence[Write]], Iterable[tuple[bytes, bytes]]]


@dataclass(frozen=True, slots=True)
class MemoryLimits:
    """What bounds a store's memory (settings ``store.*``, docs/serving.md): one block cache
    shared by every column family; per column family up to ``max_write_buffers`` memtables
    of ``write_buffer_bytes``; ``max_open_files`` table readers (-1: all)."""

    block_cache_bytes: int = 256 * 1024 * 1024
    write_buffer_bytes: int = 64 * 1024 * 1024
    max_write_buffers: int = 2
    max_open_files: int = -1


def _options(limits: MemoryLimits, cache: Cache, *, secondary: bool = False) -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(not secondary)
    opts.create_missing_column_families(not secondary)
    opts.set_compression_type(DBCompressionType.lz4())
    opts.increase_parallelism(2)
    opts.set_write_buffer_size(limits.write_buffer_bytes)
    opts.set_max_write_buffer_number(limits.max_write_buffers)
    # A secondary instance must keep every file open: the primary may delete a compacted file
    # it still reads (RocksDB's requirement for secondaries).
    opts.set_max_open_files(-1 if secondary else limits.max_open_files)
    table = BlockBasedOptions()
    # One cache for every column family (a cache per family would multiply the bound).
    table.set_block_cache(cache)
    # Lookups of absent values are common (signals not computed yet): bloom filters answer them
    # without reading data blocks.
    table.set_bloom_filter(10, False)
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    opts.set_block_based_table_factory(table)
    return opts


class SignalStore:
    """The RocksDB materialisation of every galaxy's changelog.

    Thread-safe: reads run concurrently; :meth:`apply` serialises writers, because deciding
    whether a write is newer reads the stored value first.
    """

    def __init__(
        self,
        path: str | Path,
        galaxies: Iterable[str],
        *,
        sync_writes: bool = True,
        block_cache_bytes: int | None = None,
        limits: MemoryLimits | None = None,
        secondary_path: str | Path | None = None,
    ) -> None:
        """``secondary_path``: open a read-only RocksDB *secondary instance* of the primary at
        ``path`` (its own files go to ``secondary_path``); it sees the primary's writes as of
        its last :meth:`catch_up`, and :meth:`apply` refuses."""
        self.path = Path(path)
        self.galaxies = tuple(galaxies)
        self.secondary = secondary_path is not None
        if limits is None:
            limits = MemoryLimits()
        if block_cache_bytes is not None:
            limits = MemoryLimits(
                block_cache_bytes,
                limits.write_buffer_bytes,
                limits.max_write_buffers,
                limits.max_open_files,
            )
        self.limits = limits
        cache = Cache(limits.block_cache_bytes)
        opts = _options(limits, cache, secondary=self.secondary)
        if secondary_path is not None:
            Path(secondary_path).mkdir(parents=True, exist_ok=True)
            existing = set(Rdict.list_cf(str(self.path), opts))
            self._db = Rdict(
                str(self.path),
                opts,
                column_families={
                    name: _options(limits, cache, secondary=True)
                    for name in existing
                    if name != "default"
                },
                access_type=AccessType.secondary(str(secondary_path)),
            )
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            existing = (
                set(Rdict.list_cf(str(self.path), opts))
                if (self.path / "CURRENT").exists()
                else set()
            )
            wanted = existing | set(self.galaxies) | {META_CF}
            self._db = Rdict(
                str(self.path),
                opts,
                column_families={
                    name: _options(limits, cache) for name in wanted if name != "default"
                },
            )
        self._cfs = {name: self._db.get_column_family(name) for name in (*self.galaxies, META_CF)}
        self._handles = {name: self._db.get_column_family_handle(name) for name in self._cfs}
        self._write_opts = WriteOptions()
        self._write_opts.sync = sync_writes
        self._nosync_opts = WriteOptions()
        self._nosync_opts.sync = False
        self._lock = threading.Lock()
        self._closed = False
        # Called with (writes, applied flags) after every committed apply: metrics hook.
        self.on_apply: Callable[[Sequence[Write], list[bool]], None] | None = None
        log.info(
            "store_opened",
            store_path=str(self.path),
            galaxies=list(self.galaxies),
            sync_writes=sync_writes,
            secondary=self.secondary,
            block_cache_bytes=limits.block_cache_bytes,
            write_buffer_bytes=limits.write_buffer_bytes,
            max_write_buffers=limits.max_write_buffers,
        )

    def sequence(self) -> int:
        """RocksDB's last sequence number this instance sees: every committed batch up to it
        is readable here (a secondary: as of its last :meth:`catch_up`)."""
        return int(self._db.latest_sequence_number())

    def catch_up(self) -> int:
        """A secondary instance: replay what the primary committed since the last call (WAL
        and manifest); returns the sequence now readable here."""
        if not self.secondary:
            return self.sequence()
        with self._lock:
            if self._closed:
                raise RuntimeError("the signal store is closed")
            self._db.try_catch_up_with_primary()
            return int(self._db.latest_sequence_number())

    # -- reads ---------------------------------------------------------------------------

    def get_many(self, galaxy: str, keys: list[bytes]) -> list[bytes | None]:
        """Stored records of ``keys`` in one RocksDB multi-get, in order (None: absent)."""
        return cast("list[bytes | None]", self._cfs[galaxy].get(cast("list[Any]", keys)))

    def get_meta(self, key: bytes) -> bytes | None:
        return cast("bytes | None", self._cfs[META_CF].get(key))

    def scan_meta(
        self, prefix: bytes, limit: int | None = None, *, start: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Meta-CF entries whose key starts with ``prefix``, in key order (from ``start`` on,
        when given: a cursor that need not re-read what is before it)."""
        ropts = ReadOptions()
        ropts.set_iterate_lower_bound(prefix)
        upper = _prefix_upper_bound(prefix)
        if upper is not None:
            ropts.set_iterate_upper_bound(upper)
        it = self._cfs[META_CF].iter(ropts)
        it.seek(max(prefix, start) if start is not None else prefix)
        count = 0
        while it.valid() and (limit is None or count < limit):
            yield it.key(), it.value()
            count += 1
            it.next()

    def scan(self, galaxy: str) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, stored record) of a galaxy in key order."""
        it = self._cfs[galaxy].iter(ReadOptions())
        it.seek_to_first()
        while it.valid():
            yield it.key(), it.value()
            it.next()

    # -- the write path ------------------------------------------------------------------

    def apply(
        self,
        writes: Sequence[Write],
        *,
        meta: Mapping[bytes, bytes] | None = None,
        derive_meta: DeriveMeta | None = None,
        delete_meta: Iterable[bytes] = (),
    ) -> AppliedBatch:
        """Store the writes that are newer than what is stored, atomically.

        A write is newer if its (event time, changelog offset) is greater than the stored
        record's (an ``override`` write skips that comparison); a tombstone orders like a
        value; of several writes to one key in the batch, the newest wins and the others
        count as skipped. A write whose event time and value bytes equal the stored record's
        (:func:`store.records.same_value`; envelope aside) is skipped too: repeating a value
        (a re-run, a backfill) writes nothing and derives no outbox entry. ``meta`` (for
        example changelog offsets) and the entries ``derive_meta`` returns for the winning
        writes (for example outbox events) are put in the meta column family in the same
        WriteBatch, so all or none of it is durable.

        ``derive_meta`` gets every write that wins as if the batch's writes were applied one
        at a time, in order: each newer than the key's value before it (stored, or an earlier
        write of the batch) and no equal fact — a write the batch itself supersedes too,
        though only the last is stored. So what is derived does not depend on how writes are
        split into batches: replicas batch one changelog differently (one catching up takes
        large batches, a live one small ones), and their events must be the same, ids and
        all (docs/cluster.md: a takeover resends what lies beyond the last commit).
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the signal store is closed")
            if self.secondary:
                raise RuntimeError("a secondary instance of the store is read-only")
            winners: dict[tuple[str, bytes], int] = {}
            by_galaxy: dict[str, list[int]] = {}
            for i, write in enumerate(writes):
                by_galaxy.setdefault(write.galaxy, []).append(i)
            # The writes derive_meta gets: each that replaced its key's pending value, in batch
            # order (the batch applied one write at a time), not only the last, which is stored.
            won: list[int] = []
            # Whether a key's first write of the batch repeats the stored fact (asked once).
            repeats: dict[int, bool] = {}
            for galaxy, indexes in by_galaxy.items():
                current = self.get_many(galaxy, [writes[i].key for i in indexes])
                best: dict[bytes, tuple[tuple[int, int], int]] = {}
                for i, stored in zip(indexes, current, strict=True):
                    write = writes[i]
                    order = records.order_of(write.stored)
                    held = best.get(write.key)
                    floor = (
                        held[0]
                        if held
                        else (
                            records.order_of(stored)
                            if stored is not None and not write.override
                            else None
                        )
                    )
                    if floor is None or order > floor:
                        if held and records.same_value(write.stored, writes[held[1]].stored):
                            continue  # repeats the batch's pending value
                        best[write.key] = (order, i)
                        if not held:
                            repeats[i] = stored is not None and records.same_value(
                                write.stored, stored
                            )
                        if held or not repeats[i]:
                            won.append(i)
                stored_of = dict(zip(indexes, current, strict=True))
                for key, (_, i) in best.items():
                    # An equal fact (event time and value bytes) is no new value: skipped, so
                    # re-runs and backfills over the same input write and announce nothing.
                    held_stored = stored_of[i]
                    repeat = repeats.get(i)
                    if repeat is None:
                        repeat = held_stored is not None and records.same_value(
                            writes[i].stored, held_stored
                        )
                    if repeat:
                        continue
                    winners[(galaxy, key)] = i
            applied = [False] * len(writes)
            batch = WriteBatch(raw_mode=True)
            for (galaxy, key), i in winners.items():
                batch.put(key, writes[i].stored, self._handles[galaxy])
                applied[i] = True
            meta_cf = self._handles[META_CF]
            for key, value in (meta or {}).items():
                batch.put(key, value, meta_cf)
            if derive_meta is not None:
                for key, value in derive_meta([writes[i] for i in sorted(won)]):
                    batch.put(key, value, meta_cf)
            for key in delete_meta:
                batch.delete(key, meta_cf)
            if not batch.is_empty():
                self._db.write(batch, self._write_opts)
            if self.on_apply is not None:
                self.on_apply(writes, applied)
            return AppliedBatch(applied)

    def delete_meta(self, keys: Iterable[bytes], *, sync: bool = True) -> None:
        """Remove meta entries (e.g. outbox entries whose delivery was confirmed).

        ``sync=False`` skips the fsync, for deletions whose loss is harmless (an outbox entry
        that comes back after a power cut is only published again)."""
        batch = WriteBatch(raw_mode=True)
        for key in keys:
            batch.delete(key, self._handles[META_CF])
        if not batch.is_empty():
            self._db.write(batch, self._write_opts if sync else self._nosync_opts)

    # -- operations ----------------------------------------------------------------------

    def checkpoint(self, target: str | Path) -> Path:
        """A consistent, hard-linked copy of the whole store at ``target`` (must not exist)."""
        Checkpoint(self._db).create_checkpoint(str(target))
        return Path(target)

    def estimated_keys(self, galaxy: str) -> int:
        """RocksDB's estimate of a galaxy's stored values (0 once closed)."""
        cf = self._cfs.get(galaxy)
        return int(cf.property_int_value("rocksdb.estimate-num-keys") or 0) if cf else 0

    def size_bytes(self) -> int:
        """SST files plus memtables of every column family (0 once closed)."""
        total = 0
        for cf in list(self._cfs.values()):
            for prop in ("rocksdb.total-sst-files-size", "rocksdb.cur-size-all-mem-tables"):
                total += int(cf.property_int_value(prop) or 0)
        return total

    def flush(self) -> None:
        self._db.flush_wal(True)

    def close(self) -> None:
        """Flush and close. Further calls fail; close twice is harmless."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self.secondary:
                self._db.flush_wal(True)
            # Column-family objects keep the DB (and its LOCK file) alive until dropped.
            self._cfs.clear()
            self._handles.clear()
            self._db.close()
            log.info("store_closed", store_path=str(self.path))

    def __enter__(self) -> SignalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _prefix_upper_bound(prefix: bytes) -> bytes | None:
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])
