"""Turning stored records into Parquet part files: the per-process half of an export.

The exporter scans one consistent view of the store and hands batches of (key, stored
record) to :class:`GalaxyWriter` instances, one per worker process, each writing its own part
file per signal. A batch is routed to its signals with numpy and each signal's share is
converted at once (:mod:`store.record_batches` for the records, the value type's
:class:`~gss.snapshot.convert.Transcoder` for the values). A value that cannot be converted
is counted, written to the partition's rejects file with its reason, and never silently
dropped.
"""

from __future__ import annotations

import base64
import binascii
import json
import multiprocessing.connection
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import structlog
from google.protobuf import symbol_database
from google.protobuf.message import Message
from numpy.lib.stride_tricks import sliding_window_view

from contract.keys import EntityCodec, KeyType, split_store_key
from contract.snapshot import layout
from gss.snapshot import manifest
from gss.snapshot.convert import (
    ENVELOPE_FIELDS,
    Transcoder,
    arrow_scalar,
    numpy_array,
    numpy_bools,
    transcoder,
)
from store import columnar, record_batches
from store.columnar import Array
from store.scan import ScanBatch

log = structlog.get_logger(__name__)

# Rejected values kept in a manifest as examples (all of them go to the rejects file).
REJECT_SAMPLES = 10


@dataclass(frozen=True, slots=True)
class SignalJob:
    """One signal version of a galaxy export, as a worker needs it (picklable)."""

    name: str
    version: int
    value_type: str
    key_suffix: bytes
    ttl_us: int | None
    staging: str


@dataclass(frozen=True, slots=True)
class GalaxyJob:
    """Everything a worker needs to convert one galaxy's records (picklable)."""

    galaxy: str
    key_type: str
    key_length: int
    signals: tuple[SignalJob, ...]
    imports: tuple[str, ...]
    snapshot_time_us: int
    # Start of the day after dt: values with a later event time are counted in the manifest.
    dt_end_us: int
    compression: str
    row_group_rows: int
    row_group_bytes: int


@dataclass
class SignalStats:
    """What one worker wrote for one signal."""

    rows: int = 0
    expired_rows: int = 0
    rows_after_dt: int = 0
    rejected_rows: int = 0
    min_event_time_us: int | None = None
    max_event_time_us: int | None = None
    # The part file written (its footer's row count, size and SHA-256, taken by the process
    # that wrote it, right after closing it).
    part_file: manifest.PartFile | None = None
    rejects_file: str | None = None
    reject_samples: list[dict[str, str]] = field(default_factory=list)


@dataclass
class WorkerResult:
    """What one worker did for one galaxy."""

    signals: dict[tuple[str, int], SignalStats]
    # Values of signals the registry does not declare, by "name@version".
    unregistered: dict[str, int]
    # Keys that are not signal store keys at all.
    malformed_keys: int


def entity_texts(codec: EntityCodec, entities: Array) -> pa.Array:
    """The text form of entity ids given as rows of an (n, key length) uint8 matrix, as
    EntityCodec.to_text gives it: decimal for int64 galaxies, lowercase hex for bytes ones."""
    if codec.key_type is KeyType.INT64:
        ids = np.ascontiguousarray(entities).view(">u8").reshape(-1).astype(np.uint64)
        return numpy_array(ids, pa.uint64()).cast(pa.string())
    width = 2 * codec.length
    text = np.frombuffer(binascii.hexlify(np.ascontiguousarray(entities).data), np.uint8)
    offsets = np.arange(0, (len(entities) + 1) * width, width, dtype=np.int32)
    return columnar.Blobs(text, offsets).arrow(pa.string())


def resolve_message_class(value_type: str, imports: tuple[str, ...]) -> type[Message]:
    """The protobuf class of ``value_type`` after importing the registry's modules."""
    import importlib

    for module in imports:
        importlib.import_module(module)
    cls: type[Message] = symbol_database.Default().GetSymbol(value_type)
    return cls


class _SignalBuffer:
    """One signal's share of a worker: converts its records as they come and writes them to its
    part file, a row group at a time.

    Each batch's records of the signal are converted at once (decoded into columns, checked,
    transcoded); the converted tables wait until they make a row group.
    """

    def __init__(
        self, job: GalaxyJob, sig: SignalJob, worker_index: int, codec: EntityCodec
    ) -> None:
        self.sig = sig
        self.job = job
        self.message_class = resolve_message_class(sig.value_type, job.imports)
        self.transcoder: Transcoder = transcoder(self.message_class)
        self.type_url = "type.googleapis.com/" + sig.value_type
        self._type_url_scalar = arrow_scalar(self.type_url.encode(), pa.string())
        self.codec = codec
        self.to_text = codec.to_text
        self.path = Path(sig.staging) / layout.part_file_name(worker_index)
        self.rejects_path = Path(sig.staging) / f"_rejects-{worker_index:05d}.jsonl"
        self.schema = self.transcoder.schema.with_metadata(self.transcoder.footer_metadata())
        self.stats = SignalStats()
        self._writer: pq.ParquetWriter | None = None
        self._expired_before = (
            (job.snapshot_time_us - sig.ttl_us) if sig.ttl_us is not None else None
        )
        # Converted rows waiting to make a row group, and the stored bytes they came from.
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._pending_bytes = 0

    def add(self, entities: Array, records: columnar.Batch) -> None:
        """Convert stored records of this signal (``entities``: their ids, one row each)."""
        table, event, rejected = self._convert(entities, records)
        for row, reason in rejected:
            entity = entities[row].tobytes()
            stored = records.buf[records.start[row] : records.end[row]].tobytes()
            self.reject(entity, stored, reason)
        if table is None:
            return
        self._count(event)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self._pending_bytes += int((records.end - records.start).sum())
        if (
            self._pending_rows >= self.job.row_group_rows
            or self._pending_bytes >= self.job.row_group_bytes
        ):
            self._write_pending()

    def _convert(
        self, entities: Array, batch: columnar.Batch
    ) -> tuple[pa.Table | None, Array, list[tuple[int, str]]]:
        """The records as a table of the good rows, their event times, and (row, reason) of
        the others."""
        columns = record_batches.decode(batch)
        rejected: dict[int, str] = {
            int(row): columns.reason(row) for row in np.flatnonzero(columns.error)
        }
        wrong_type = ~numpy_bools(pc.equal(columns.type_url, self._type_url_scalar))
        wrong_type &= (columns.error == 0) & ~columns.deleted
        for row in np.flatnonzero(wrong_type).tolist():
            found = columns.type_url[row].as_py()
            rejected[row] = (
                f"ConversionError: value has type {found or 'unset'}; signal "
                f"{self.sig.name}@{self.sig.version} stores {self.sig.value_type}"
            )
        candidates = None  # rows whose value is converted (None: all)
        values = columns.values
        # Tombstones: the value was deleted, so the snapshot has no row for it (not a reject).
        deleted = np.flatnonzero(columns.deleted)
        if rejected or len(deleted):
            left_out = np.concatenate([np.fromiter(rejected, np.int64, len(rejected)), deleted])
            candidates = np.setdiff1d(np.arange(len(batch.start)), left_out)
            values = columnar.Batch(batch.buf, values.start[candidates], values.end[candidates])
        converted = self.transcoder.convert(values)
        value, thrift = converted.value, converted.thrift
        if converted.error.any():
            bad = np.flatnonzero(converted.error)
            for at in bad.tolist():
                row = at if candidates is None else int(candidates[at])
                rejected[row] = converted.reason(at)
            fine = converted.error == 0
            candidates = np.flatnonzero(fine) if candidates is None else candidates[fine]
            mask = numpy_array(fine, pa.bool_())
            value, thrift = value.filter(mask), thrift.filter(mask)
        reasons = sorted(rejected.items())
        keep = candidates
        if keep is not None and not len(keep):
            return None, np.zeros(0, np.int64), reasons
        event = columns.event_us if keep is None else columns.event_us[keep]
        expired = (
            event < self._expired_before
            if self._expired_before is not None
            else np.zeros(len(event), bool)
        )
        write = columns.write_us if keep is None else columns.write_us[keep]
        entity = entity_texts(self.codec, entities if keep is None else entities[keep])
        texts = [columns.producer, columns.model_name, columns.model_version]
        if keep is not None:
            indices = numpy_array(keep, pa.int64())
            texts = [text.take(indices) for text in texts]
        ts = ENVELOPE_FIELDS[1][1]
        arrays = [
            entity,
            numpy_array(event, ts),
            numpy_array(write, ts),
            *texts,
            numpy_array(expired, pa.bool_()),
            value,
            thrift,
        ]
        return pa.Table.from_arrays(arrays, schema=self.schema), event, reasons

    def reject(self, entity: bytes, stored: bytes, reason: str) -> None:
        """Count a value that cannot be converted and keep it, with the reason, in the rejects file."""
        stats = self.stats
        stats.rejected_rows += 1
        try:
            entity_text = self.to_text(entity)
        except ValueError:
            entity_text = entity.hex()
        entry = {
            "entity_id": entity_text,
            "signal": f"{self.sig.name}@{self.sig.version}",
            "reason": reason,
            "stored_base64": base64.b64encode(stored).decode(),
        }
        if len(stats.reject_samples) < REJECT_SAMPLES:
            stats.reject_samples.append({k: v for k, v in entry.items() if k != "stored_base64"})
        with open(self.rejects_path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
        stats.rejects_file = self.rejects_path.name
        if stats.rejected_rows <= REJECT_SAMPLES:  # the rest are counted and in the file
            log.warning(
                "export_value_rejected",
                galaxy=self.job.galaxy,
                signal=self.sig.name,
                signal_version=self.sig.version,
                entity_id=entity_text,
                reason=entry["reason"],
                rejects_path=str(self.rejects_path),
            )

    def _count(self, event: Array) -> None:
        stats = self.stats
        stats.rows += len(event)
        if self._expired_before is not None:
            stats.expired_rows += int((event < self._expired_before).sum())
        stats.rows_after_dt += int((event >= self.job.dt_end_us).sum())
        low, high = int(event.min()), int(event.max())
        stats.min_event_time_us = (
            low if stats.min_event_time_us is None else min(low, stats.min_event_time_us)
        )
        stats.max_event_time_us = (
            high if stats.max_event_time_us is None else max(high, stats.max_event_time_us)
        )

    def _write_pending(self, final: bool = False) -> None:
        """Write full row groups (``row_group_rows`` rows, or fewer once their stored bytes
        reach ``row_group_bytes``); with ``final``, the rest too."""
        if not self._pending_rows:
            return
        table = pa.concat_tables(self._pending)
        self._pending = []
        row_limit = self.job.row_group_rows
        if self._writer is None:
            self._writer = open_part_writer(self.path, self.schema, self.job.compression)
        by_bytes = self._pending_bytes >= self.job.row_group_bytes
        at = 0
        while table.num_rows - at >= row_limit or (at < table.num_rows and (final or by_bytes)):
            size = min(row_limit, table.num_rows - at)
            self._writer.write_table(table.slice(at, size), row_group_size=size)
            at += size
        rest = table.num_rows - at
        if rest:
            self._pending = [table.slice(at)]
        self._pending_bytes = self._pending_bytes * rest // max(self._pending_rows, 1)
        self._pending_rows = rest

    def close(self) -> SignalStats:
        self._write_pending(final=True)
        if self._writer is not None:
            self._writer.close()
            layout.fsync_file(self.path)
            self.stats.part_file = manifest.describe_file(self.path)
        return self.stats


def open_part_writer(path: Path, schema: pa.Schema, compression: str) -> pq.ParquetWriter:
    """A Parquet writer with the snapshot's settings (3-level lists, dictionary-coded envelope)."""
    return pq.ParquetWriter(
        str(path),
        schema,
        compression=compression,
        use_compliant_nested_type=True,  # lists as <name> (LIST) / list / element
        use_dictionary=["producer", "model_name", "model_version"],
        write_statistics=["entity_id", "event_time", "write_time", "expired"],
        store_schema=True,
    )


class GalaxyWriter:
    """Converts one galaxy's records into one part file per signal (one worker's share)."""

    def __init__(self, job: GalaxyJob, worker_index: int) -> None:
        self.job = job
        self.codec = EntityCodec(KeyType(job.key_type), job.key_length)
        self._buffers = {
            sig.key_suffix: _SignalBuffer(job, sig, worker_index, self.codec) for sig in job.signals
        }
        self._unregistered: dict[str, int] = {}
        self._malformed = 0

    def add(self, batch: ScanBatch) -> None:
        """Route a batch of (key, stored record) to the signals and convert it."""
        keys, length = batch.keys, self.job.key_length
        key_length = keys.end - keys.start
        routed = np.zeros(len(batch), bool)
        for suffix, buffer in self._buffers.items():
            rows = np.flatnonzero(key_length == length + len(suffix))
            if not rows.size:
                continue
            tails = sliding_window_view(keys.buf, len(suffix))[keys.start[rows] + length]
            rows = rows[(tails == np.frombuffer(suffix, np.uint8)).all(axis=1)]
            if not rows.size:
                continue
            routed[rows] = True
            entities = sliding_window_view(keys.buf, length)[keys.start[rows]]
            values = batch.values
            buffer.add(entities, columnar.Batch(values.buf, values.start[rows], values.end[rows]))
        for row in np.flatnonzero(~routed).tolist():
            self._unrouted(keys.buf[keys.start[row] : keys.end[row]].tobytes())

    def _unrouted(self, key: bytes) -> None:
        try:
            _, name, version = split_store_key(key, self.job.key_length)
        except ValueError:
            self._malformed += 1
            if self._malformed <= REJECT_SAMPLES:
                log.warning("export_malformed_key", galaxy=self.job.galaxy, key_hex=key.hex())
            return
        ref = f"{name}@{version}"
        if ref not in self._unregistered:
            log.warning(
                "export_unregistered_signal",
                galaxy=self.job.galaxy,
                signal=name,
                signal_version=version,
            )
        self._unregistered[ref] = self._unregistered.get(ref, 0) + 1

    def close(self) -> WorkerResult:
        stats = {(b.sig.name, b.sig.version): b.close() for b in self._buffers.values()}
        return WorkerResult(stats, dict(self._unregistered), self._malformed)


# -- the worker process ------------------------------------------------------------------


def worker_main(
    conn: multiprocessing.connection.Connection, index: int, log_level: str, log_format: str
) -> None:
    """A worker process: ``("begin", job)``, ``("rows",)`` + the batch's buffers (see
    ScanBatch.buffers)..., ``("end",)``, ``("stop",)``.

    ``rows`` messages are not answered (a blocking send is the exporter's flow control);
    ``end`` is answered with ``("done", WorkerResult)``; any failure with ``("error", text)``.
    A closed pipe (the exporter died) ends the process.
    """
    from contract import logs

    logs.configure(log_level, "json" if log_format == "auto" else log_format)  # type: ignore[arg-type]
    writer: GalaxyWriter | None = None
    while True:
        try:
            msg: tuple[Any, ...] = conn.recv()
        except (EOFError, OSError):
            return
        try:
            kind = msg[0]
            if kind == "begin":
                writer = GalaxyWriter(msg[1], index)
            elif kind == "rows":
                assert writer is not None
                writer.add(ScanBatch.from_buffers([conn.recv_bytes() for _ in range(4)]))
            elif kind == "end":
                assert writer is not None
                conn.send(("done", writer.close()))
                writer = None
            else:
                return
        except Exception:
            conn.send(("error", traceback.format_exc()))
            return


def worker_from_argv(argv: list[str]) -> None:
    """Entry of a worker subprocess (see gss.snapshot.pool): ``fd index log_level log_format``."""
    fd, index, log_level, log_format = argv
    worker_main(multiprocessing.connection.Connection(int(fd)), int(index), log_level, log_format)
