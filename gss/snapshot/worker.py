"""Turning stored records into Parquet part files: the per-process half of an export.

The exporter scans one consistent view of the store and hands batches of (key, stored
record) to :class:`GalaxyWriter` instances, one per worker process, each writing its own part
file per signal. A value that cannot be converted is counted, written to the partition's
rejects file with its reason, and never silently dropped.
"""

from __future__ import annotations

import base64
import json
import multiprocessing.connection
import struct
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import structlog
from google.protobuf import symbol_database
from google.protobuf.message import DecodeError, Message

from gss.snapshot import layout
from gss.snapshot.convert import ENVELOPE_FIELDS, ConversionError, Transcoder, transcoder
from store import records
from store.keys import EntityCodec, KeyType, split_store_key

log = structlog.get_logger(__name__)

# Rejected values kept in a manifest as examples (all of them go to the rejects file).
REJECT_SAMPLES = 10
# What a value that cannot be converted raises (anything else is a bug and stops the export).
_REJECTABLE = (
    ValueError,
    DecodeError,
    ConversionError,
    UnicodeError,
    OverflowError,
    TypeError,
    IndexError,
    struct.error,
)


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
    part_file: str | None = None
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


def resolve_message_class(value_type: str, imports: tuple[str, ...]) -> type[Message]:
    """The protobuf class of ``value_type`` after importing the registry's modules."""
    import importlib

    for module in imports:
        importlib.import_module(module)
    cls: type[Message] = symbol_database.Default().GetSymbol(value_type)
    return cls


class _SignalBuffer:
    """Rows of one signal waiting to become a row group, and the part file they go to."""

    def __init__(
        self, job: GalaxyJob, sig: SignalJob, worker_index: int, codec: EntityCodec
    ) -> None:
        self.sig = sig
        self.job = job
        self.message_class = resolve_message_class(sig.value_type, job.imports)
        self.transcoder: Transcoder = transcoder(self.message_class)
        self.type_url = "type.googleapis.com/" + sig.value_type
        self.to_text = codec.to_text
        self.path = Path(sig.staging) / layout.part_file_name(worker_index)
        self.rejects_path = Path(sig.staging) / f"_rejects-{worker_index:05d}.jsonl"
        self.schema = self.transcoder.schema.with_metadata(self.transcoder.footer_metadata())
        self.stats = SignalStats()
        self.value_columns = self.transcoder.new_value_columns()
        self.add_value = self.value_columns.add
        self._writer: pq.ParquetWriter | None = None
        self._expired_before = (
            (job.snapshot_time_us - sig.ttl_us) if sig.ttl_us is not None else None
        )
        self.entity: list[str] = []
        self.event: list[int] = []
        self.write_s: list[int] = []
        self.write_ns: list[int] = []
        self.producer: list[str] = []
        self.model_name: list[str] = []
        self.model_version: list[str] = []
        self.thrift: list[bytes] = []
        self._columns = (
            self.entity,
            self.event,
            self.write_s,
            self.write_ns,
            self.producer,
            self.model_name,
            self.model_version,
            self.thrift,
        )
        self.pending_bytes = 0

    def _reset(self) -> None:
        # Cleared in place: add_many keeps bound appenders across row groups.
        for column in self._columns:
            column.clear()
        self.pending_bytes = 0

    def add_many(self, entities: list[bytes], stored_values: list[bytes]) -> None:
        """Convert and buffer stored records of this signal (the hot loop: locals only)."""
        # store.records' own pieces (header, then the cell) rather than StoredRecord.decode:
        # its frozen dataclass costs 0.7 µs a row, a tenth of the export's time.
        header, cell_of, version = records.HEADER.unpack_from, records.cell_of, records.FORMAT_V1
        type_url = self.type_url
        parse = self.message_class.FromString
        add_value = self.value_columns.add
        to_text = self.to_text
        entity_app, event_app = self.entity.append, self.event.append
        write_s_app, write_ns_app = self.write_s.append, self.write_ns.append
        producer_app, name_app, version_app = (
            self.producer.append,
            self.model_name.append,
            self.model_version.append,
        )
        thrift_app = self.thrift.append
        row_limit, byte_limit = self.job.row_group_rows, self.job.row_group_bytes
        rows, pending = len(self.entity), self.pending_bytes
        for entity, stored in zip(entities, stored_values, strict=True):
            try:
                fmt, event_us, _ = header(stored)
                if fmt != version:
                    records.StoredRecord.decode(stored)  # raises, naming the format
                record = cell_of(stored)
                value = record.value
                if value.type_url != type_url:
                    raise ConversionError(
                        f"value has type {value.type_url or 'unset'}; signal "
                        f"{self.sig.name}@{self.sig.version} stores {self.sig.value_type}"
                    )
                text = to_text(entity)
                raw = value.value
                encoded = add_value(parse(raw), raw)
            except _REJECTABLE as exc:
                self.value_columns.rollback(rows)
                self.reject(entity, stored, exc)
                continue
            env = record.envelope
            written = env.write_time
            entity_app(text)
            event_app(event_us)
            write_s_app(written.seconds)
            write_ns_app(written.nanos)
            producer_app(env.producer)
            name_app(env.model_name)
            version_app(env.model_version)
            thrift_app(encoded)
            rows += 1
            pending += len(stored)
            if rows >= row_limit or pending >= byte_limit:
                self.flush()
                rows = pending = 0
        self.pending_bytes = pending

    def reject(self, entity: bytes, stored: bytes, exc: BaseException) -> None:
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
            "reason": f"{type(exc).__name__}: {exc}",
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

    def flush(self) -> None:
        """Write the buffered rows as one row group and update the counts from them."""
        if not self.entity:
            return
        event = np.array(self.event, dtype=np.int64)
        write = (
            np.array(self.write_s, dtype=np.int64) * 1_000_000
            + np.array(self.write_ns, dtype=np.int64) // 1000
        )
        expired = (
            event < self._expired_before
            if self._expired_before is not None
            else np.zeros(len(event), bool)
        )
        stats = self.stats
        stats.rows += len(event)
        stats.expired_rows += int(expired.sum())
        stats.rows_after_dt += int((event >= self.job.dt_end_us).sum())
        low, high = int(event.min()), int(event.max())
        stats.min_event_time_us = (
            low if stats.min_event_time_us is None else min(low, stats.min_event_time_us)
        )
        stats.max_event_time_us = (
            high if stats.max_event_time_us is None else max(high, stats.max_event_time_us)
        )
        ts = ENVELOPE_FIELDS[1][1]
        arrays = [
            pa.array(self.entity, pa.string()),
            pa.array(event, ts),
            pa.array(write, ts),
            pa.array(self.producer, pa.string()),
            pa.array(self.model_name, pa.string()),
            pa.array(self.model_version, pa.string()),
            pa.array(expired, pa.bool_()),
            self.value_columns.finish(),
            pa.array(self.thrift, pa.binary()),
        ]
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        if self._writer is None:
            self._writer = open_part_writer(self.path, self.schema, self.job.compression)
        self._writer.write_table(table, row_group_size=table.num_rows)
        self._reset()

    def close(self) -> SignalStats:
        self.flush()
        if self._writer is not None:
            self._writer.close()
            layout.fsync_file(self.path)
            self.stats.part_file = self.path.name
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

    def add(self, keys: list[bytes], values: list[bytes]) -> None:
        """Route a batch of (key, stored record) to the signals' buffers and convert it."""
        length = self.job.key_length
        buffers = self._buffers
        groups: dict[bytes, tuple[list[bytes], list[bytes]]] = {}
        for key, stored in zip(keys, values, strict=True):
            suffix = key[length:]
            group = groups.get(suffix)
            if group is None:
                if suffix not in buffers:
                    self._unrouted(key)
                    continue
                group = groups[suffix] = ([], [])
            group[0].append(key[:length])
            group[1].append(stored)
        for suffix, (entities, stored_values) in groups.items():
            buffers[suffix].add_many(entities, stored_values)

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
    """A worker process: ``("begin", job)``, ``("rows", keys, values)``..., ``("end",)``, ``("stop",)``.

    ``rows`` messages are not answered (a blocking send is the exporter's flow control);
    ``end`` is answered with ``("done", WorkerResult)``; any failure with ``("error", text)``.
    A closed pipe (the exporter died) ends the process.
    """
    from gss import logs

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
                writer.add(msg[1], msg[2])
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
