"""Stored records (the layout in :mod:`store.records`) decoded a row group at a time.

Each record is ``header ‖ EntitySignals with one SignalCell``; the header's event time and the
cell's envelope become the snapshot's envelope columns, and the cell's ``Any`` value is left
in place as a byte range for the value type's :class:`~gss.snapshot.convert.Transcoder`.
Tombstones (deleted values) decode like values, flagged in ``deleted``: a snapshot leaves them
out (the value is absent), and they are not errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from numpy.lib.stride_tricks import sliding_window_view

from contract.v1 import signal_service_pb2
from store import columnar, records
from store.columnar import Array

# One merged cell per record (a record holds exactly one), the value's bytes left in place.
_PLAN = columnar.plan(
    signal_service_pb2.EntitySignals.DESCRIPTOR,
    as_singular=["gss.v1.EntitySignals.cells"],
    as_range=["google.protobuf.Any.value"],
)


@dataclass
class StoredColumns:
    """Columns of a batch of stored records; row i is unusable if ``error[i]`` is set."""

    event_us: Array
    write_us: Array
    producer: pa.Array
    model_name: pa.Array
    model_version: pa.Array
    type_url: pa.Array
    # The cell's value bytes: a batch for Transcoder.convert.
    values: columnar.Batch
    error: Array
    reasons: columnar.Reasons
    # Row i is a tombstone: the value was deleted (its value bytes are empty).
    deleted: Array

    def reason(self, row: int) -> str:
        return self.reasons.texts[int(self.error[row])]


def decode(batch: columnar.Batch) -> StoredColumns:
    """The envelope columns and value ranges of the stored records in ``batch``."""
    reasons = columnar.Reasons()
    n = len(batch.start)
    error = np.zeros(n, np.int32)
    header = records.HEADER.size
    short = np.flatnonzero(batch.end - batch.start < header)
    for row in short.tolist():
        reasons.mark(
            error,
            np.array([row]),
            f"ValueError: stored record is {int(batch.end[row] - batch.start[row])} bytes, "
            f"shorter than its {header}-byte header",
        )
    starts = np.minimum(batch.start, batch.end - header)  # keeps reads of short ones in bounds
    fmt = batch.buf[np.maximum(starts, 0)]
    deleted = fmt == records.FORMAT_TOMBSTONE
    known = (fmt == records.FORMAT_V1) | deleted
    for value in np.unique(fmt[~known]).tolist():
        reasons.mark(
            error,
            np.flatnonzero(fmt == value),
            f"ValueError: stored record has format {value}; this GSS reads formats "
            f"{records.FORMAT_V1} and {records.FORMAT_TOMBSTONE}",
        )
    event_us = (
        sliding_window_view(batch.buf, 8)[np.maximum(starts, 0) + 1]
        .reshape(-1)
        .view(">i8")
        .astype(np.int64)
        if n
        else np.zeros(0, np.int64)
    )
    cells = columnar.Batch(batch.buf, np.maximum(batch.start + header, batch.start), batch.end)
    cells.start[error != 0] = cells.end[error != 0]  # nothing to decode there
    decoded = columnar.decode(_PLAN, cells, reasons)
    _first_error(error, decoded.error)
    cell_col = decoded.columns["cells"]
    assert isinstance(cell_col, columnar.Messages)
    assert cell_col.count is not None
    count = cell_col.count
    reasons.mark(error, np.flatnonzero(count == 0), "IndexError: stored record holds no cell")
    reasons.mark(
        error,
        np.flatnonzero(count > 1),
        "ValueError: stored record holds several cells; a stored record holds one",
    )
    cell = cell_col.decoded
    value, envelope = _messages(cell, "value"), _messages(cell, "envelope")
    value_bytes = value.columns["value"]
    assert isinstance(value_bytes, columnar.Ranges)
    write = _messages(envelope, "write_time")
    return StoredColumns(
        event_us=event_us,
        write_us=_scalars(write, "seconds").astype(np.int64) * 1_000_000
        + _scalars(write, "nanos").astype(np.int64) // 1000,
        producer=_text(envelope, "producer"),
        model_name=_text(envelope, "model_name"),
        model_version=_text(envelope, "model_version"),
        type_url=_text(value, "type_url"),
        values=columnar.Batch(batch.buf, value_bytes.start, value_bytes.start + value_bytes.length),
        error=error,
        reasons=reasons,
        deleted=deleted & (error == 0),
    )


def _first_error(error: Array, other: Array) -> None:
    np.copyto(error, other, where=(error == 0))


def _messages(decoded: columnar.Decoded, name: str) -> columnar.Decoded:
    column = decoded.columns[name]
    assert isinstance(column, columnar.Messages)
    return column.decoded


def _scalars(decoded: columnar.Decoded, name: str) -> Array:
    column = decoded.columns[name]
    assert isinstance(column, columnar.Scalars)
    return column.values


def _text(decoded: columnar.Decoded, name: str) -> pa.Array:
    column = decoded.columns[name]
    assert isinstance(column, columnar.Blobs)
    return column.arrow(pa.string())
