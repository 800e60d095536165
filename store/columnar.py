"""Columnar protobuf decoding: many serialized messages of one type decoded at once with numpy.

The export reads millions of small messages of a handful of types. Parsing them one by one
and reading every field back through Python objects costs microseconds a row; here a batch of
messages (byte ranges in one buffer) is walked field by field for all rows at once, and each
field comes out as a numpy column (numbers), a gathered byte column (strings, bytes) or the
decoded columns of its sub-messages.

The semantics are upb's (the protobuf runtime GSS runs on), for everything a valid encoding
may hold: fields in any order; a singular field given twice (the last scalar wins, messages
merge); repeated numbers packed, unpacked or both; unknown fields skipped; a known field with
an unexpected wire type treated as unknown; strings checked to be UTF-8. What upb refuses
(truncated data, a malformed tag or varint, field number 0 or above 2^29-1, wire types 6 and
7, a packed run whose length is not a multiple of its element size, invalid UTF-8 in a string)
marks the row bad, with a reason, and the other rows are unaffected. One deliberate
difference: groups (proto2's deprecated wire types 3 and 4, which proto3 code never writes)
mark the row bad instead of being skipped.

Row order: a batch's messages lie in the buffer in row order, and everything inside a row lies
within its range, so the byte position of an occurrence orders it both among rows and within
its row (last-wins and repeated element order both follow from it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from google.protobuf.descriptor import FieldDescriptor
from numpy.lib.stride_tricks import sliding_window_view

_F = FieldDescriptor
# A numpy array (of any element type: the names say what it holds).
Array = npt.NDArray[Any]
VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5
# Zero bytes after the last message: a varint or fixed-width read that runs past a message's
# end stays inside the buffer (the overrun is then reported as truncation).
PAD = 16
_PADDING = bytes(PAD)
_MAX_FIELD = (1 << 29) - 1
_U64_7F = np.uint64(0x7F)

# proto type -> (wire type, numpy type of the raw field for fixed-width types)
_FIXED = {
    _F.TYPE_FIXED32: "<u4",
    _F.TYPE_SFIXED32: "<i4",
    _F.TYPE_FLOAT: "<f4",
    _F.TYPE_FIXED64: "<u8",
    _F.TYPE_SFIXED64: "<i8",
    _F.TYPE_DOUBLE: "<f8",
}
_VARINTS = {
    _F.TYPE_INT32,
    _F.TYPE_INT64,
    _F.TYPE_UINT32,
    _F.TYPE_UINT64,
    _F.TYPE_SINT32,
    _F.TYPE_SINT64,
    _F.TYPE_BOOL,
    _F.TYPE_ENUM,
}


# -- results -------------------------------------------------------------------------------


@dataclass
class Scalars:
    """A number field: one value per row (singular) or per element with ``offsets`` (repeated).

    Types: int32 (int32, sint32, sfixed32, enum), uint32 (uint32, fixed32), int64, uint64,
    float32, float64, bool. A singular field that is absent holds 0.
    """

    values: Array
    offsets: Array | None = None


@dataclass
class Blobs:
    """A string or bytes field: the values laid end to end in ``data`` (``starts``: n + 1 int32
    offsets into it), one per row (absent: empty) or per element with ``offsets``."""

    data: Array
    starts: Array
    offsets: Array | None = None

    def arrow(self, arrow_type: pa.DataType) -> pa.Array:
        """The values as an Arrow string or binary array (no copy)."""
        return pa.Array.from_buffers(
            arrow_type,
            len(self.starts) - 1,
            [None, pa.py_buffer(self.starts), pa.py_buffer(self.data)],
        )


@dataclass
class Messages:
    """A message field: ``decoded`` has one row per row (singular: ``present`` says which rows
    had it and ``count`` how often, merged) or one row per element with ``offsets``."""

    decoded: Decoded
    present: Array | None = None
    count: Array | None = None
    offsets: Array | None = None


@dataclass
class Ranges:
    """A bytes field left in the buffer: row i is ``buf[start[i]:start[i] + length[i]]``."""

    start: Array
    length: Array


Column = Scalars | Blobs | Messages | Ranges


@dataclass
class Decoded:
    """The columns of ``rows`` messages of one type; ``error[i]`` != 0 if row i is malformed
    (the code's text is in the :class:`Reasons` of the decode)."""

    rows: int
    columns: dict[str, Column]
    error: Array


@dataclass
class Reasons:
    """Texts of the error codes of one decode (code 0: no error)."""

    texts: list[str] = field(default_factory=lambda: [""])
    _codes: dict[str, int] = field(default_factory=dict)

    def code(self, text: str) -> int:
        found = self._codes.get(text)
        if found is None:
            found = self._codes[text] = len(self.texts)
            self.texts.append(text)
        return found

    def mark(self, error: Array, rows: Array, text: str) -> None:
        """Give ``rows`` the error ``text`` unless they already have one (the first one stays)."""
        if rows.size:
            rows = rows[error[rows] == 0]
            error[rows] = self.code(text)


# -- plans ---------------------------------------------------------------------------------


@dataclass
class _FieldPlan:
    name: str
    number: int
    proto_type: int
    repeated: bool
    wire: int  # the wire type of one value
    message: Plan | None
    where: str
    as_range: bool


@dataclass
class Plan:
    """How to decode one message type (built once per type; see :func:`plan`)."""

    name: str
    fields: list[_FieldPlan]


def plan(
    desc: Any,
    *,
    as_message: dict[str, Any] | None = None,
    as_singular: Iterable[str] = (),
    as_range: Iterable[str] = (),
) -> Plan:
    """The decoding plan of ``desc`` and the messages it holds.

    ``as_message`` reads a bytes field as a message of another type (``"google.protobuf.Any.value"``
    -> the value's type: the same bytes on the wire); ``as_singular`` reads a repeated message
    field as one merged message with an occurrence count; ``as_range`` gives a bytes field as
    byte ranges in the buffer instead of copying it out (all keyed by the field's full name).
    """
    return _plan(desc, as_message or {}, frozenset(as_singular), frozenset(as_range), {})


def _plan(
    desc: Any,
    as_message: dict[str, Any],
    as_singular: frozenset[str],
    as_range: frozenset[str],
    seen: dict[str, Plan],
) -> Plan:
    if desc.full_name in seen:
        return seen[desc.full_name]
    result = seen[desc.full_name] = Plan(desc.full_name, [])
    for fd in desc.fields:
        sub: Any = as_message.get(fd.full_name)
        if sub is None and fd.type in (_F.TYPE_MESSAGE, _F.TYPE_GROUP):
            sub = fd.message_type
        if fd.type == _F.TYPE_GROUP:
            raise ValueError(f"{fd.full_name}: group fields are not supported")
        if sub is not None or fd.type in (_F.TYPE_STRING, _F.TYPE_BYTES):
            wire = LEN
        elif fd.type in _VARINTS:
            wire = VARINT
        else:
            wire = FIXED32 if _FIXED[fd.type][2] == "4" else FIXED64
        result.fields.append(
            _FieldPlan(
                name=fd.name,
                number=fd.number,
                proto_type=_F.TYPE_MESSAGE if sub is not None else fd.type,
                repeated=fd.label == _F.LABEL_REPEATED and fd.full_name not in as_singular,
                wire=wire,
                message=(
                    _plan(sub, as_message, as_singular, as_range, seen) if sub is not None else None
                ),
                where=fd.full_name,
                as_range=fd.full_name in as_range,
            )
        )
    return result


# -- the buffer ----------------------------------------------------------------------------


@dataclass
class Batch:
    """Messages end to end in one buffer: message i is ``buf[start[i]:end[i]]``."""

    buf: Array
    start: Array
    end: Array

    @classmethod
    def of(cls, messages: Sequence[bytes]) -> Batch:
        lengths = np.fromiter(map(len, messages), np.int64, len(messages))
        end = np.cumsum(lengths)
        buf = np.frombuffer(b"".join(chain(messages, (_PADDING,))), np.uint8)
        return cls(buf, end - lengths, end)


def gather(buf: Array, start: Array, length: Array) -> tuple[Array, Array]:
    """The byte ranges laid end to end, and their n + 1 int32 offsets.

    Copies through a sliding window of the longest length (fast for the short, similar
    strings of signal values), or range by range when lengths vary too much for that.
    """
    offsets = np.zeros(len(start) + 1, np.int32)
    if not len(start):
        return np.zeros(0, np.uint8), offsets
    total = int(length.sum())
    if total >= 1 << 31:
        raise ValueError(f"{total} bytes of one field in a batch: over Arrow's 2 GiB per array")
    np.cumsum(length, out=offsets[1:])
    width = int(length.max())
    if width == 0:
        return np.zeros(0, np.uint8), offsets
    if width * len(start) > 4 * total + 64 * len(start):
        raw = buf.data
        data = b"".join(
            [raw[s : s + n] for s, n in zip(start.tolist(), length.tolist(), strict=True)]
        )
        return np.frombuffer(data, np.uint8), offsets
    # Windows must start inside the buffer: the last ones are moved back and masked.
    window_start = np.minimum(start, len(buf) - width)
    block = sliding_window_view(buf, width)[window_start]
    shift = start - window_start
    if length.min() == width and not shift.any():
        return block.reshape(-1), offsets
    col = np.arange(width)
    keep = (col >= shift[:, None]) & (col < (shift + length)[:, None])
    return block[keep], offsets


def check_utf8(data: Array, offsets: Array) -> Array | None:
    """Indices of the values that are not UTF-8, or None if all are."""
    if not len(data) or int(data.max()) < 0x80:
        return None
    array = pa.StringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(data))
    try:
        array.validate(full=True)
        return None
    except pa.ArrowInvalid:
        pass
    raw = data.tobytes()
    bad = []
    for i, (a, b) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)):
        try:
            raw[a:b].decode("utf-8")
        except UnicodeDecodeError:
            bad.append(i)
    return np.array(bad, np.int64)


# -- decoding ------------------------------------------------------------------------------


def decode(plan_: Plan, batch: Batch, reasons: Reasons) -> Decoded:
    """Decode every message of ``batch``, one row each."""
    n = len(batch.start)
    return _decode(plan_, batch.buf, batch.start, batch.end, np.arange(n), n, reasons)


def _varint(buf: Array, p: Array) -> tuple[Array, Array, Array | None]:
    """Varints at positions ``p``: (values, positions after them, rows longer than 10 bytes)."""
    byte = buf[p]
    values = byte.astype(np.uint64)
    cont = byte >= 0x80
    if not cont.any():
        return values, p + 1, None
    values &= _U64_7F
    q = p + 1
    shift = 7
    # While every varint goes on (same length: the usual case), no per-row bookkeeping.
    while cont.all():
        if shift >= 70:
            return values, q, np.ones(len(p), bool)
        byte = buf[q]
        values |= (byte & 0x7F).astype(np.uint64) << np.uint64(shift)
        q += 1
        shift += 7
        cont = byte >= 0x80
        if not cont.any():
            return values, q, None
    after = q
    more = np.flatnonzero(cont)
    q = after[more]
    while more.size:
        if shift >= 70:
            bad = np.zeros(len(p), bool)
            bad[more] = True
            return values, after, bad
        byte = buf[q]
        values[more] |= (byte & 0x7F).astype(np.uint64) << np.uint64(shift)
        q = q + 1
        shift += 7
        cont = byte >= 0x80
        after[more[~cont]] = q[~cont]
        more, q = more[cont], q[cont]
    return values, after, None


def _fixed(buf: Array, p: Array, dtype: str) -> Array:
    width = int(dtype[2])
    if not len(p):
        return np.zeros(0, dtype)
    return sliding_window_view(buf, width)[p].reshape(-1).view(dtype)


@dataclass
class _Occurrences:
    """Where a field occurred, collected over the walk: row, position, and payload."""

    rows: list[Array] = field(default_factory=list)
    pos: list[Array] = field(default_factory=list)
    wire: list[int] = field(default_factory=list)
    value: list[Array | None] = field(default_factory=list)  # varint value or LEN length
    payload: list[Array] = field(default_factory=list)  # where the value's bytes start

    def add(
        self,
        rows: Array,
        pos: Array,
        wire: int,
        value: Array | None,
        payload: Array,
    ) -> None:
        self.rows.append(rows)
        self.pos.append(pos)
        self.wire.append(wire)
        self.value.append(value)
        self.payload.append(payload)


def _decode(
    plan_: Plan,
    buf: Array,
    start: Array,
    end: Array,
    seg_row: Array,
    nrows: int,
    reasons: Reasons,
    merged: bool = False,
) -> Decoded:
    """Decode the segments ``[start, end)`` into ``nrows`` rows: segment i belongs to row
    ``seg_row[i]``; with ``merged``, a row may have several segments (one message, merged in
    position order), otherwise at most one."""
    error = np.zeros(nrows, np.int32)
    found = {f.number: _Occurrences() for f in plan_.fields}
    live = start < end
    if live.all():
        pos, stop, row = start, end, seg_row
    else:
        pos, stop, row = start[live], end[live], seg_row[live]
    # The tags a known field may have: its own wire type, or LEN for a packed run of numbers.
    known = {
        (f.number << 3) | kind: f
        for f in plan_.fields
        for kind in ((f.wire, LEN) if f.repeated and f.wire != LEN else (f.wire,))
    }
    while pos.size:
        tag, p, overlong = _varint(buf, pos)
        first = int(tag[0])
        # Fast path: every message has the same field next (one writer, one field order).
        if overlong is None and 0 < first >> 3 <= _MAX_FIELD and (tag == first).all():
            step = _read(buf, first & 7, p, stop)
            if step is not None:
                value, payload, after = step
                if first in known:
                    found[first >> 3].add(row, pos, first & 7, value, payload)
                go_on = after < stop
                if go_on.all():
                    pos = after
                else:
                    pos, stop, row = after[go_on], stop[go_on], row[go_on]
                continue
        pos, stop, row = _mixed_step(
            plan_, known, buf, pos, stop, row, tag, p, overlong, found, error, reasons
        )
    columns: dict[str, Column] = {}
    for f in plan_.fields:
        columns[f.name] = _finish(f, found[f.number], buf, nrows, error, reasons, merged)
    return Decoded(nrows, columns, error)


_LEN_CAP = np.uint64(1 << 40)  # a longer length is truncation anyway; keeps sums in int64


def _read(buf: Array, wire: int, p: Array, stop: Array) -> tuple[Array | None, Array, Array] | None:
    """(value, payload start, position after) of fields of one wire type whose tags end at
    ``p``; None if any of them is malformed or runs past ``stop``."""
    value: Array | None
    if wire == VARINT:
        value, after, over = _varint(buf, p)
        payload = p
    elif wire == LEN:
        value, payload, over = _varint(buf, p)
        after = payload + np.minimum(value, _LEN_CAP).astype(np.int64)
    elif wire in (FIXED64, FIXED32):
        value, payload, over = None, p, None
        after = p + (8 if wire == FIXED64 else 4)
    else:
        return None
    if over is not None or (after > stop).any():
        return None
    return value, payload, after


def _mixed_step(
    plan_: Plan,
    known: dict[int, _FieldPlan],
    buf: Array,
    pos: Array,
    stop: Array,
    row: Array,
    tag: Array,
    p: Array,
    overlong: Array | None,
    found: dict[int, _Occurrences],
    error: Array,
    reasons: Reasons,
) -> tuple[Array, Array, Array]:
    """One field of every message when they differ: rows grouped by tag, each group read at
    once; a malformed or truncated field ends its row with an error."""
    after = stop.copy()  # rows that fail stop here
    ok = np.zeros(len(pos), bool)
    left = np.ones(len(pos), bool)
    if overlong is not None:
        left &= ~overlong
    groups = [(t, np.flatnonzero(left & (tag == t))) for t in known]
    handled = np.zeros(len(pos), bool)
    for _, sel in groups:
        handled[sel] = True
    # Unknown fields and bad tags, by wire type (their values are skipped).
    rest = np.flatnonzero(left & ~handled)
    wires = (tag[rest] & np.uint64(7)).astype(np.int64)
    numbers = tag[rest] >> np.uint64(3)
    valid = (numbers > 0) & (numbers <= _MAX_FIELD)
    groups.extend((kind, rest[valid & (wires == kind)]) for kind in (VARINT, FIXED64, LEN, FIXED32))
    for t, sel in groups:
        if not sel.size:
            continue
        wire = t & 7
        value, a, over, payload = _read_some(buf, wire, p[sel])
        good = a <= stop[sel]
        if over is not None:
            good &= ~over
        sel_ok, a_ok = sel[good], a[good]
        after[sel_ok] = a_ok
        ok[sel_ok] = True
        f = known.get(t) if t > 7 else None
        if f is not None and sel_ok.size:
            found[f.number].add(
                row[sel_ok],
                pos[sel_ok],
                wire,
                value[good] if value is not None else None,
                payload[good],
            )
    where = plan_.name
    reasons.mark(error, row[~ok], f"DecodeError: malformed or truncated field in {where}")
    go_on = ok & (after < stop)
    return after[go_on], stop[go_on], row[go_on]


def _read_some(buf: Array, wire: int, p: Array) -> tuple[Array | None, Array, Array | None, Array]:
    """(value, position after, malformed rows, payload start) of fields of one wire type."""
    if wire == VARINT:
        value, after, over = _varint(buf, p)
        return value, after, over, p
    if wire == LEN:
        value, payload, over = _varint(buf, p)
        return value, payload + np.minimum(value, _LEN_CAP).astype(np.int64), over, payload
    return None, p + (8 if wire == FIXED64 else 4), None, p


def _order(occ: _Occurrences) -> tuple[Array, ...]:
    """The occurrences concatenated in position order: rows, pos, wire, value, payload."""
    if len(occ.rows) == 1:
        (rows,), (pos,), (value,), (payload,) = occ.rows, occ.pos, occ.value, occ.payload
        wires = np.full(len(rows), occ.wire[0], np.int8)
        return (
            rows,
            pos,
            wires,
            value if value is not None else np.zeros(len(rows), np.uint64),
            payload,
        )
    wires = np.concatenate(
        [np.full(len(r), w, np.int8) for r, w in zip(occ.rows, occ.wire, strict=True)]
    )
    values = [
        v if v is not None else np.zeros(len(r), np.uint64)
        for r, v in zip(occ.rows, occ.value, strict=True)
    ]
    parts = (np.concatenate(occ.rows), np.concatenate(occ.pos), wires,
             np.concatenate(values), np.concatenate(occ.payload))  # fmt: skip
    order = np.argsort(parts[1], kind="stable")
    return tuple(a[order] for a in parts)


def _counts_offsets(rows: Array, nrows: int) -> Array:
    offsets = np.zeros(nrows + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=nrows), out=offsets[1:])
    return offsets


def _finish(
    f: _FieldPlan,
    occ: _Occurrences,
    buf: Array,
    nrows: int,
    error: Array,
    reasons: Reasons,
    merged: bool,
) -> Column:
    if occ.rows:
        rows, pos, wires, value, payload = _order(occ)
    else:
        rows = pos = payload = np.zeros(0, np.int64)
        value = np.zeros(0, np.uint64)
        wires = np.zeros(0, np.int8)
    if f.repeated:
        if f.message is not None:
            ends = payload + value.astype(np.int64)
            child = _decode(f.message, buf, payload, ends, np.arange(len(rows)), len(rows), reasons)
            _lift(error, child.error, rows)
            return Messages(child, offsets=_counts_offsets(rows, nrows))
        if f.wire == LEN:
            data, starts = gather(buf, payload, value.astype(np.int64))
            if f.proto_type == _F.TYPE_STRING:
                _check_text(f, data, starts, rows, error, reasons)
            return Blobs(data, starts, _counts_offsets(rows, nrows))
        return _repeated_numbers(f, rows, pos, wires, value, payload, buf, nrows, error, reasons)
    if f.message is not None:
        ends = payload + value.astype(np.int64)
        child = _decode(f.message, buf, payload, ends, rows, nrows, reasons, merged=True)
        _lift(error, child.error, None)
        count = np.bincount(rows, minlength=nrows)
        return Messages(child, present=count > 0, count=count)
    # A singular value: the last occurrence of each row, spread over all rows.
    if merged or len(occ.rows) > 1:
        last = _last(rows)
        if not last.all():
            rows, value, payload = rows[last], value[last], payload[last]
    every = len(rows) == nrows  # then rows == 0..n-1: no spreading needed
    if f.wire == LEN:
        length = value.astype(np.int64)
        if not every:
            start, length_all = np.zeros(nrows, np.int64), np.zeros(nrows, np.int64)
            start[rows], length_all[rows] = payload, length
            payload, length = start, length_all
        if f.as_range:
            return Ranges(payload, length)
        data, starts = gather(buf, payload, length)
        if f.proto_type == _F.TYPE_STRING:
            _check_text(f, data, starts, None, error, reasons)
        return Blobs(data, starts)
    if f.wire == VARINT:
        values = _from_varint(f.proto_type, value)
    else:
        values = _natural_fixed(f.proto_type, _fixed(buf, payload, _FIXED[f.proto_type]))
    if every:
        return Scalars(values)
    out = np.zeros(nrows, _natural(f.proto_type))
    out[rows] = values
    return Scalars(out)


def _check_text(
    f: _FieldPlan,
    data: Array,
    starts: Array,
    rows: Array | None,
    error: Array,
    reasons: Reasons,
) -> None:
    bad = check_utf8(data, starts)
    if bad is not None:
        reasons.mark(
            error, bad if rows is None else rows[bad], f"DecodeError: {f.where} is not valid UTF-8"
        )


def _repeated_numbers(
    f: _FieldPlan,
    rows: Array,
    pos: Array,
    wires: Array,
    value: Array,
    payload: Array,
    buf: Array,
    nrows: int,
    error: Array,
    reasons: Reasons,
) -> Scalars:
    """Elements of a repeated number field from packed runs and single values, in order."""
    dtype = _natural(f.proto_type)
    packed = wires == LEN
    single_any = bool((~packed).any())
    el_rows, el_pos, el_vals = [], [], []
    if packed.any():
        p_rows, p_start, p_len = rows[packed], payload[packed], value[packed].astype(np.int64)
        if f.wire == VARINT:
            r, ps, vs = _packed_varints(buf, p_rows, p_start, p_start + p_len, error, reasons, f)
        else:
            width = int(_FIXED[f.proto_type][2])
            wrong = p_len % width != 0
            if wrong.any():
                reasons.mark(
                    error, p_rows[wrong], f"DecodeError: packed {f.where} has a partial element"
                )
                p_rows, p_start, p_len = p_rows[~wrong], p_start[~wrong], p_len[~wrong]
            data, _ = gather(buf, p_start, p_len)
            vs = _natural_fixed(f.proto_type, data.view(_FIXED[f.proto_type]))
            n_el = p_len // width
            if not single_any:  # packed runs only (the usual case): already in order
                counts = np.bincount(p_rows, weights=n_el, minlength=nrows).astype(np.int32)
                offsets = np.zeros(nrows + 1, np.int32)
                np.cumsum(counts, out=offsets[1:])
                return Scalars(vs.astype(dtype, copy=False), offsets)
            r = np.repeat(p_rows, n_el)
            # Element positions, to interleave with the single values.
            first = np.repeat(np.cumsum(n_el) - n_el, n_el)
            ps = np.repeat(p_start, n_el) + (np.arange(len(vs)) - first) * width
        el_rows.append(r)
        el_pos.append(ps)
        el_vals.append(vs)
    single = ~packed
    if single.any():
        el_rows.append(rows[single])
        el_pos.append(pos[single])
        if f.wire == VARINT:
            el_vals.append(_from_varint(f.proto_type, value[single]))
        else:
            el_vals.append(
                _natural_fixed(f.proto_type, _fixed(buf, payload[single], _FIXED[f.proto_type]))
            )
    if not el_rows:
        return Scalars(np.zeros(0, dtype), np.zeros(nrows + 1, np.int32))
    rows_all, vals = np.concatenate(el_rows), np.concatenate(el_vals).astype(dtype, copy=False)
    if len(el_rows) > 1 or (packed.any() and f.wire == VARINT):
        order = np.argsort(np.concatenate(el_pos), kind="stable")
        rows_all, vals = rows_all[order], vals[order]
    return Scalars(vals, _counts_offsets(rows_all, nrows))


def _packed_varints(
    buf: Array,
    rows: Array,
    start: Array,
    end: Array,
    error: Array,
    reasons: Reasons,
    f: _FieldPlan,
) -> tuple[Array, Array, Array]:
    out_rows, out_pos, out_vals = [], [], []
    live = start < end
    pos, stop, row = start[live], end[live], rows[live]
    while pos.size:
        v, after, over = _varint(buf, pos)
        bad = after > stop
        if over is not None:
            bad |= over
        if bad.any():
            reasons.mark(error, row[bad], f"DecodeError: malformed packed {f.where}")
        good = ~bad
        out_rows.append(row[good])
        out_pos.append(pos[good])
        out_vals.append(_from_varint(f.proto_type, v[good]))
        go_on = good & (after < stop)
        pos, stop, row = after[go_on], stop[go_on], row[go_on]
    if not out_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, _natural(f.proto_type))
    return np.concatenate(out_rows), np.concatenate(out_pos), np.concatenate(out_vals)


def _last(rows: Array) -> Array:
    """Mask of the last occurrence of each row (``rows`` in position order, so grouped)."""
    last = np.ones(len(rows), bool)
    last[:-1] = rows[1:] != rows[:-1]
    return last


def _lift(error: Array, child_error: Array, rows: Array | None) -> None:
    """Give parent rows the errors of their sub-messages (``rows``: parent of each child row)."""
    bad = np.flatnonzero(child_error)
    if not bad.size:
        return
    parents = bad if rows is None else rows[bad]
    keep = error[parents] == 0
    error[parents[keep]] = child_error[bad[keep]]


_NATURAL = {
    _F.TYPE_INT32: np.int32,
    _F.TYPE_SINT32: np.int32,
    _F.TYPE_SFIXED32: np.int32,
    _F.TYPE_ENUM: np.int32,
    _F.TYPE_UINT32: np.uint32,
    _F.TYPE_FIXED32: np.uint32,
    _F.TYPE_INT64: np.int64,
    _F.TYPE_SINT64: np.int64,
    _F.TYPE_SFIXED64: np.int64,
    _F.TYPE_UINT64: np.uint64,
    _F.TYPE_FIXED64: np.uint64,
    _F.TYPE_FLOAT: np.float32,
    _F.TYPE_DOUBLE: np.float64,
    _F.TYPE_BOOL: np.bool_,
}


def _natural(proto_type: int) -> Any:
    return _NATURAL[proto_type]


def _natural_fixed(proto_type: int, raw: Array) -> Array:
    return raw.astype(_NATURAL[proto_type])


def _from_varint(proto_type: int, raw: Array) -> Array:
    """Varint values (uint64) as their field's type, as protobuf reads them."""
    if proto_type in (_F.TYPE_INT32, _F.TYPE_ENUM):
        return raw.astype(np.uint32).view(np.int32)
    if proto_type == _F.TYPE_UINT32:
        return raw.astype(np.uint32)
    if proto_type == _F.TYPE_INT64:
        return raw.view(np.int64)
    if proto_type == _F.TYPE_UINT64:
        return raw
    if proto_type == _F.TYPE_SINT32:
        low = raw.astype(np.uint32)
        return ((low >> np.uint32(1)) ^ (np.uint32(0) - (low & np.uint32(1)))).view(np.int32)
    if proto_type == _F.TYPE_SINT64:
        return ((raw >> np.uint64(1)) ^ (np.uint64(0) - (raw & np.uint64(1)))).view(np.int64)
    if proto_type == _F.TYPE_BOOL:
        return np.not_equal(raw, 0)
    raise ValueError(f"proto type {proto_type} is not a varint")
