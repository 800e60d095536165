"""A consistent, read-only view of the signal store for one export.

Two ways in, one result (a frozen point-in-time view that ingestion and serving keep writing
past):

- **In-process** (:meth:`StoreView.from_store`), given the live :class:`~store.db.SignalStore`:
  a RocksDB checkpoint (hard links to the SST files, memtables flushed first) is taken and
  opened read-only. This is ``SignalStore.checkpoint``.
- **By path** (:meth:`StoreView.from_path`), for a store directory a running server owns: the
  store is opened as a RocksDB *secondary* instance and caught up with the primary once
  (``try_catch_up_with_primary``); it then stays frozen at that point. All table files are
  opened up front (``max_open_files=-1``), so the primary's compactions deleting files do not
  disturb the scan.

Measured with rocksdict 0.3.29 against a primary writing in another process: a checkpoint
taken *from* a read-only or secondary instance contains only the primary's flushed SST files
(no WAL), so it misses up to a memtable of recent writes; the caught-up secondary itself sees
them all. So the path mode reads the secondary directly instead of checkpointing it.

``snapshot_time`` is taken just before the checkpoint or catch-up starts: every write
acknowledged before it is in the view (a few later ones may be too).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import cast

import numpy as np
import structlog
from rocksdict import AccessType, Options, Rdict, ReadOptions

from contract.errors import InvalidArgumentError, UnavailableError
from store import columnar
from store.columnar import Array
from store.db import META_CF, SignalStore

log = structlog.get_logger(__name__)


def _open_options(max_open_files: int | None = None) -> Options:
    opts = Options(raw_mode=True)
    if max_open_files is not None:
        opts.set_max_open_files(max_open_files)
    return opts


@dataclass
class ScanBatch:
    """Consecutive (key, stored record) pairs of a galaxy, each side laid end to end in one
    buffer: it crosses a pipe as a few buffers and is decoded in place."""

    keys: columnar.Batch
    values: columnar.Batch

    def __len__(self) -> int:
        return len(self.keys.start)

    def buffers(self) -> tuple[Array, ...]:
        """What :meth:`from_buffers` rebuilds the batch from (sent as raw bytes, not pickled)."""
        return self.keys.buf, self.keys.end, self.values.buf, self.values.end

    @classmethod
    def from_buffers(cls, parts: list[bytes]) -> ScanBatch:
        keys, key_ends, values, value_ends = parts
        return cls(_batch(keys, key_ends), _batch(values, value_ends))


def _batch(data: bytes, ends: bytes) -> columnar.Batch:
    end = np.frombuffer(ends, np.int64)
    start = np.zeros(len(end), np.int64)
    start[1:] = end[:-1]
    return columnar.Batch(np.frombuffer(data, np.uint8), start, end)


class StoreView:
    """Frozen, read-only access to every galaxy's values at ``snapshot_time_us``."""

    def __init__(
        self,
        db: Rdict,
        column_families: list[str],
        snapshot_time_us: int,
        cleanup: list[Path],
        mode: str,
    ) -> None:
        self._db = db
        self.snapshot_time_us = snapshot_time_us
        self.mode = mode
        self._cleanup = cleanup
        self._cfs = {
            n: db.get_column_family(n) for n in column_families if n not in ("default", META_CF)
        }

    # -- construction --------------------------------------------------------------------

    @classmethod
    def from_store(cls, store: SignalStore, work_dir: Path) -> StoreView:
        """A checkpoint of a live, open store, taken under ``work_dir`` (same file system)."""
        work_dir.mkdir(parents=True, exist_ok=True)
        target = Path(tempfile.mkdtemp(prefix="checkpoint-", dir=work_dir))
        target.rmdir()  # RocksDB creates the checkpoint directory itself
        snapshot_us = time.time_ns() // 1000
        started = time.perf_counter()
        try:
            store.checkpoint(target)
            cfs = Rdict.list_cf(str(target), _open_options())
            db = Rdict(
                str(target),
                _open_options(),
                column_families={n: _open_options() for n in cfs if n != "default"},
                access_type=AccessType.read_only(False),
            )
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        log.info(
            "export_checkpoint_taken",
            checkpoint_path=str(target),
            duration_seconds=round(time.perf_counter() - started, 3),
        )
        return cls(db, cfs, snapshot_us, [target], "checkpoint")

    @classmethod
    def from_path(cls, store_path: Path, work_dir: Path) -> StoreView:
        """A caught-up secondary instance of the store at ``store_path``."""
        if not (store_path / "CURRENT").is_file():
            raise InvalidArgumentError(
                f"no signal store at {store_path}: set store.path (GSS_STORE__PATH) or --store to "
                "the directory the server uses"
            )
        work_dir.mkdir(parents=True, exist_ok=True)
        secondary = Path(tempfile.mkdtemp(prefix="secondary-", dir=work_dir))
        started = time.perf_counter()
        try:
            cfs = Rdict.list_cf(str(store_path), _open_options())
            db = Rdict(
                str(store_path),
                _open_options(-1),
                column_families={n: _open_options(-1) for n in cfs if n != "default"},
                access_type=AccessType.secondary(str(secondary)),
            )
            snapshot_us = time.time_ns() // 1000
            db.try_catch_up_with_primary()
        except Exception as exc:
            shutil.rmtree(secondary, ignore_errors=True)
            raise UnavailableError(
                f"cannot read the store at {store_path} as a RocksDB secondary: {exc}. The "
                "directory must be writable (rocksdict writes its config file there), and "
                "export.work_dir must be writable"
            ) from exc
        except BaseException:
            shutil.rmtree(secondary, ignore_errors=True)
            raise
        log.info(
            "export_secondary_caught_up",
            store_path=str(store_path),
            duration_seconds=round(time.perf_counter() - started, 3),
        )
        return cls(db, cfs, snapshot_us, [secondary], "secondary")

    # -- reading -------------------------------------------------------------------------

    def has_galaxy(self, galaxy: str) -> bool:
        return galaxy in self._cfs

    def estimated_keys(self, galaxy: str) -> int:
        cf = self._cfs.get(galaxy)
        return int(cf.property_int_value("rocksdb.estimate-num-keys") or 0) if cf is not None else 0

    def batches(
        self, galaxy: str, batch_rows: int, batch_bytes: int = 64 << 20
    ) -> Iterator[ScanBatch]:
        """Every (key, stored record) of a galaxy in key order, ``batch_rows`` at a time, fewer
        when the records are large: a batch holds about ``batch_bytes`` of records at most
        (judged from the previous batch's records, so the scan loop does not count bytes)."""
        cf = self._cfs.get(galaxy)
        if cf is None:
            return
        ropts = ReadOptions()
        ropts.fill_cache(False)  # type: ignore[call-arg]  # the stub lacks the argument
        ropts.set_readahead_size(4 * 1024 * 1024)
        # items() iterates in Rust and hands out (key, value) pairs: a fifth cheaper per row
        # than calling valid/key/value/next on an iterator.
        pairs = cast(Iterator[tuple[bytes, bytes]], cf.items(read_opt=ropts))  # raw mode: bytes
        rows = min(batch_rows, 1024)  # until the size of records is known
        while True:
            keys: list[bytes] = []
            values: list[bytes] = []
            add_key, add_value = keys.append, values.append
            for key, value in islice(pairs, rows):
                add_key(key)
                add_value(value)
            if not keys:
                break
            batch = ScanBatch(columnar.Batch.of(keys), columnar.Batch.of(values))
            mean = int(batch.values.end[-1]) // len(keys) + 1
            rows = max(1, min(batch_rows, batch_bytes // mean))
            yield batch

    def close(self) -> None:
        """Close the instance and delete the checkpoint or secondary directory."""
        self._cfs.clear()
        self._db.close()
        for path in self._cleanup:
            shutil.rmtree(path, ignore_errors=True)

    def __enter__(self) -> StoreView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
