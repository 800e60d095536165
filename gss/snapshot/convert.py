"""Protobuf signal values -> their Thrift twins: binary-protocol bytes and Arrow columns.

One :class:`Transcoder` per value type, built once from the protobuf descriptor and the
thriftpy2 struct spec (and refusing to build when the two are not twins, see
:func:`twin_problems`). It converts a whole batch of serialized values at once
(:meth:`Transcoder.convert`): the values are decoded into columns by :mod:`store.columnar`,
and from those columns, with numpy and Arrow kernels rather than a Python loop over rows, come

- the Thrift *binary protocol* encoding of each value's twin struct (byte-identical to
  ``thriftpy2.utils.serialize(obj, TBinaryProtocolFactory())``, which the tests check, without
  building a thriftpy2 object per row);
- typed Arrow columns shaped like the twin struct (nested struct, 3-level lists), which become
  the Parquet ``value`` group that SQL engines query field by field.

Type mapping (also in the IDL's header): float/double -> double; int32 -> i32; uint32, int64,
fixed64, uint64 -> i64 (64-bit unsigned values keep their bits, two's complement);
Timestamp -> optional i64 microseconds UTC (Arrow/Parquet TIMESTAMP(MICROS, UTC));
repeated -> list; message -> struct.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from thriftpy2.protocol import TCyBinaryProtocolFactory
from thriftpy2.utils import deserialize

from contract.snapshot import idl
from store import columnar
from store.columnar import Array

# Thrift wire types (thriftpy2.thrift.TType); 18 is thriftpy2's BINARY, a STRING on the wire.
T_BOOL, T_DOUBLE, T_I32, T_I64, T_STRING, T_STRUCT, T_LIST, T_BINARY = 2, 4, 8, 10, 11, 12, 15, 18
_WIRE = {T_BINARY: T_STRING}
_THRIFT_TYPE_NAMES = {
    T_BOOL: "BOOL",
    T_DOUBLE: "DOUBLE",
    T_I32: "I32",
    T_I64: "I64",
    T_STRING: "STRING",
    T_STRUCT: "STRUCT",
    T_LIST: "LIST",
    T_BINARY: "STRING",
}
TIMESTAMP = "google.protobuf.Timestamp"
TS_TYPE = pa.timestamp("us", tz="UTC")

_F = FieldDescriptor
# proto scalar type -> (thrift types accepted as its twin, arrow type of the column)
_SCALARS: dict[int, tuple[tuple[int, ...], pa.DataType]] = {
    _F.TYPE_FLOAT: ((T_DOUBLE,), pa.float64()),
    _F.TYPE_DOUBLE: ((T_DOUBLE,), pa.float64()),
    _F.TYPE_INT32: ((T_I32, T_I64), pa.int64()),
    _F.TYPE_SINT32: ((T_I32, T_I64), pa.int64()),
    _F.TYPE_SFIXED32: ((T_I32, T_I64), pa.int64()),
    _F.TYPE_UINT32: ((T_I64,), pa.int64()),
    _F.TYPE_FIXED32: ((T_I64,), pa.int64()),
    _F.TYPE_INT64: ((T_I64,), pa.int64()),
    _F.TYPE_SINT64: ((T_I64,), pa.int64()),
    _F.TYPE_SFIXED64: ((T_I64,), pa.int64()),
    _F.TYPE_UINT64: ((T_I64,), pa.int64()),
    _F.TYPE_FIXED64: ((T_I64,), pa.int64()),
    _F.TYPE_BOOL: ((T_BOOL,), pa.bool_()),
    _F.TYPE_STRING: ((T_STRING,), pa.string()),
    _F.TYPE_BYTES: ((T_BINARY, T_STRING), pa.binary()),
    _F.TYPE_ENUM: ((T_I32,), pa.int32()),
}
_HEADER = struct.Struct(">bh")


class ConversionError(ValueError):
    """A stored value that cannot become its Thrift twin (reported per row, never dropped)."""


# -- the twin check ----------------------------------------------------------------------


def _thrift_fields(thrift_cls: Any) -> dict[str, tuple[int, tuple[Any, ...]]]:
    """name -> (field id, thriftpy2 spec tuple) of a thriftpy2 struct class."""
    return {spec[1]: (fid, spec) for fid, spec in thrift_cls.thrift_spec.items()}


def _required(spec: tuple[Any, ...]) -> bool:
    return bool(spec[-1])


def _elem_problem(fd: Any, ttype: int, sub: Any, where: str) -> str | None:
    """Why thrift type ``ttype`` (with nested spec ``sub``) cannot hold one value of ``fd``."""
    if fd.type == _F.TYPE_MESSAGE:
        if fd.message_type.full_name == TIMESTAMP:
            return None if ttype == T_I64 else f"{where}: a Timestamp needs i64 (µs UTC)"
        if ttype != T_STRUCT:
            return f"{where}: message {fd.message_type.name} needs a struct"
        cls = sub[1] if isinstance(sub, tuple) else sub
        if cls.__name__ != fd.message_type.name:
            return f"{where}: message {fd.message_type.name} is twinned with struct {cls.__name__}"
        return None
    accepted = _SCALARS[fd.type][0]
    if ttype not in accepted:
        names = " or ".join(_THRIFT_TYPE_NAMES[t].lower() for t in accepted)
        return f"{where}: proto {_type_name(fd)} needs thrift {names}, not {_THRIFT_TYPE_NAMES.get(ttype, ttype)}"
    return None


def _type_name(fd: Any) -> str:
    names = {
        v: k[5:].lower()
        for k, v in vars(_F).items()
        if k.startswith("TYPE_") and isinstance(v, int)
    }
    return names.get(fd.type, str(fd.type))


def twin_problems(desc: Any, thrift_cls: type) -> list[str]:
    """Every way the Thrift struct fails to be the twin of the protobuf message.

    A twin has, for each proto field, a field with the same name and id and a compatible type
    (the mapping in the module docstring), required for proto3 scalars and lists, optional
    for message fields; nested messages must be twinned too. Extra Thrift fields are
    refused as well, so the two describe the same value.
    """
    problems: list[str] = []
    tfields = _thrift_fields(thrift_cls)
    for fd in desc.fields:
        where = f"{desc.name}.{fd.name}"
        if fd.name not in tfields:
            problems.append(
                f"{where}: no Thrift field named {fd.name!r} in struct {thrift_cls.__name__}"
            )
            continue
        fid, spec = tfields[fd.name]
        if fid != fd.number:
            problems.append(
                f"{where}: Thrift field id {fid} differs from proto field number {fd.number}"
            )
        ttype = spec[0]
        repeated = fd.label == _F.LABEL_REPEATED
        is_message = fd.type == _F.TYPE_MESSAGE
        if repeated:
            if ttype != T_LIST:
                problems.append(f"{where}: repeated field needs a Thrift list")
                continue
            elem = spec[2]
            etype, esub = (elem[0], elem) if isinstance(elem, tuple) else (elem, None)
            problem = _elem_problem(fd, etype, esub, where + "[]")
        else:
            problem = _elem_problem(fd, ttype, spec[2] if len(spec) == 4 else None, where)
        if problem:
            problems.append(problem)
            continue
        want_required = repeated or not is_message
        if _required(spec) != want_required:
            problems.append(
                f"{where}: should be {'required' if want_required else 'optional'} in Thrift "
                f"({'proto3 scalars and lists always have a value' if want_required else 'proto message fields may be unset'})"
            )
        if is_message and fd.message_type.full_name != TIMESTAMP:
            sub_cls = elem[1] if repeated else spec[2]
            problems.extend(twin_problems(fd.message_type, sub_cls))
    proto_names = {fd.name for fd in desc.fields}
    problems.extend(
        f"{desc.name}: Thrift field {name!r} has no proto twin"
        for name in tfields
        if name not in proto_names
    )
    return problems


# -- the output plan -----------------------------------------------------------------------


def field_id(fid: int) -> dict[bytes, bytes]:
    """Arrow field metadata that becomes the Parquet field id (parquet-thrift writes Thrift ids)."""
    return {b"PARQUET:field_id": str(fid).encode()}


_SCALAR_JSON: dict[int, dict[str, Any]] = {
    T_BOOL: {"id": "BOOL"},
    T_DOUBLE: {"id": "DOUBLE"},
    T_I32: {"id": "I32"},
    T_I64: {"id": "I64"},
    T_STRING: {"id": "STRING"},
    T_BINARY: {"id": "STRING", "binary": True},
}
# Big-endian numpy type of a Thrift number on the wire.
_BIG = {T_DOUBLE: ">f8", T_I32: ">i4", T_I64: ">i8", T_BOOL: "u1"}
# Microseconds since the epoch fit in an int64 for |seconds| up to this.
_MAX_TIMESTAMP_SECONDS = (2**63 - 1) // 1_000_000 - 1


def _list_json(element: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "LIST",
        "values": {"name": "element", "fieldId": 1, "requirement": "REQUIRED", "type": element},
    }


@dataclass
class _Out:
    """One field of a twin struct: how its decoded column becomes Arrow and Thrift."""

    name: str
    fid: int
    kind: str  # "number", "blob", "timestamp" or "struct"
    repeated: bool
    etype: int  # Thrift type of one value
    arrow: pa.DataType  # Arrow type of one value
    arrow_type: pa.DataType  # of the column (a list type when repeated)
    sub: _StructOut | None


@dataclass
class _StructOut:
    fields: list[_Out]
    arrow_type: pa.StructType
    descriptor: dict[str, Any]


def _struct_out(desc: Any, thrift_cls: type) -> _StructOut:
    """The output plan of a message and its twin (which :func:`twin_problems` has checked)."""
    tfields = _thrift_fields(thrift_cls)
    outs: list[_Out] = []
    arrow_fields = []
    children_json = []
    for fd in desc.fields:
        fid, spec = tfields[fd.name]
        repeated = fd.label == _F.LABEL_REPEATED
        sub = None
        if fd.type == _F.TYPE_MESSAGE and fd.message_type.full_name == TIMESTAMP:
            if repeated:
                raise ConversionError(f"{fd.full_name}: repeated Timestamps are not supported")
            kind, etype, arrow, required, type_json = (
                "timestamp",
                T_I64,
                TS_TYPE,
                False,
                {"id": "I64"},
            )
        elif fd.type == _F.TYPE_MESSAGE:
            sub = _struct_out(fd.message_type, spec[2][1] if repeated else spec[2])
            kind, etype, arrow, required = "struct", T_STRUCT, sub.arrow_type, repeated
            type_json = sub.descriptor
        else:
            etype = spec[2] if repeated else spec[0]
            if isinstance(etype, tuple):
                etype = etype[0]
            arrow = pa.int32() if etype == T_I32 else _SCALARS[fd.type][1]
            kind = "blob" if etype in (T_STRING, T_BINARY) else "number"
            required, type_json = True, _SCALAR_JSON[etype]
        column_type = pa.list_(pa.field("element", arrow, nullable=False)) if repeated else arrow
        outs.append(_Out(fd.name, fid, kind, repeated, etype, arrow, column_type, sub))
        arrow_fields.append(
            pa.field(fd.name, column_type, nullable=not required, metadata=field_id(fid))
        )
        children_json.append(
            {
                "name": fd.name,
                "fieldId": fid,
                "requirement": "REQUIRED" if required else "OPTIONAL",
                "type": _list_json(type_json) if repeated else type_json,
            }
        )
    descriptor = {"id": "STRUCT", "children": children_json, "structOrUnionType": "STRUCT"}
    return _StructOut(outs, pa.struct(arrow_fields), descriptor)


# -- building the columns and the Thrift bytes ----------------------------------------------


def numpy_array(values: Array, arrow_type: pa.DataType, valid: Array | None = None) -> pa.Array:
    """An Arrow array of numpy numbers or bools (numbers are not copied); ``valid`` marks the
    non-null entries.

    Built from buffers because ``pa.array`` on a numpy array imports pandas, which costs a
    quarter of a second of CPU in every process.
    """
    n = len(values)
    if arrow_type == pa.bool_():
        data = pa.py_buffer(np.packbits(values, bitorder="little"))
    else:
        values = np.ascontiguousarray(values, dtype=_NUMPY_OF[arrow_type])
        data = pa.py_buffer(values)
    if valid is None:
        return pa.Array.from_buffers(arrow_type, n, [None, data], null_count=0)
    validity = pa.py_buffer(np.packbits(valid, bitorder="little"))
    nulls = n - int(np.count_nonzero(valid))
    return pa.Array.from_buffers(arrow_type, n, [validity, data], null_count=nulls)


def arrow_scalar(data: bytes, arrow_type: pa.DataType) -> pa.Scalar:
    """A binary or string Arrow scalar (taken from an array: ``pa.scalar`` imports pandas)."""
    offsets = np.array([0, len(data)], np.int32)
    array = pa.Array.from_buffers(arrow_type, 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return array[0]


_EMPTY = arrow_scalar(b"", pa.binary())


def numpy_bools(array: pa.BooleanArray) -> Array:
    """A boolean Arrow array without nulls as numpy (``to_numpy`` imports pandas)."""
    bits = np.frombuffer(array.buffers()[1], np.uint8)
    start = array.offset
    return np.unpackbits(bits, bitorder="little")[start : start + len(array)].astype(bool)


_NUMPY_OF = {
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.uint64(): np.uint64,
    pa.float64(): np.float64,
    TS_TYPE: np.int64,
}


def _binary_of_matrix(matrix: Array) -> pa.Array:
    """Row i of an (n, w) uint8 matrix as the i-th value of a binary array (no copy)."""
    n, width = matrix.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(matrix))]
    )


def _binary_of_runs(data: Array, offsets: Array) -> pa.Array:
    """Bytes ``data[offsets[i]:offsets[i + 1]]`` as the i-th value of a binary array (no copy)."""
    return pa.Array.from_buffers(
        pa.binary(), len(offsets) - 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


class _Encoding:
    """The Thrift encodings of n structs, assembled piece by piece, field by field.

    A run of fixed-width pieces (field headers, numbers, lengths) becomes one numpy record
    array whose fields are the pieces (numbers converted to big-endian on assignment);
    variable-width pieces (strings, lists, sub-structs) are Arrow binary columns; at the end
    Arrow concatenates the pieces row by row.
    """

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.parts: list[pa.Array] = []
        self.run: list[tuple[str, bytes | Array]] = []

    def const(self, data: bytes) -> None:
        """The same bytes in every row."""
        self.run.append((f"V{len(data)}", data))

    def number(self, values: Array, dtype: str) -> None:
        """One number per row, as ``dtype`` (big-endian)."""
        self.run.append((dtype, values))

    def var(self, array: pa.Array) -> None:
        """One binary value per row."""
        self._close_run()
        self.parts.append(array)

    def _close_run(self) -> None:
        if not self.run:
            return
        names = [f"f{i}" for i in range(len(self.run))]
        dtype = np.dtype([(name, d) for name, (d, _) in zip(names, self.run, strict=True)])
        records = np.empty(self.rows, dtype)
        for name, (_, value) in zip(names, self.run, strict=True):
            records[name] = value
        matrix = records.view(np.uint8).reshape(self.rows, dtype.itemsize)
        self.parts.append(_binary_of_matrix(matrix))
        self.run = []

    def finish(self) -> pa.Array:
        self._close_run()
        if len(self.parts) == 1:
            return self.parts[0]
        return pc.binary_join_element_wise(*self.parts, _EMPTY)


class _Build:
    """One batch's conversion: rows that fail it (beyond decoding) are marked here."""

    def __init__(self, error: Array, reasons: columnar.Reasons) -> None:
        self.error = error
        self.reasons = reasons

    def struct(
        self, out: _StructOut, dec: columnar.Decoded, top: Array, mask: Array | None = None
    ) -> tuple[pa.Array, pa.Array]:
        """(Arrow struct column, Thrift encodings with their STOP byte) of decoded rows;
        ``top[i]`` is the batch row that row i belongs to."""
        encoding = _Encoding(dec.rows)
        arrays = [self.field(o, dec.columns[o.name], encoding, top) for o in out.fields]
        encoding.const(b"\x00")
        array = pa.StructArray.from_arrays(
            arrays,
            fields=list(out.arrow_type),
            mask=numpy_array(mask, pa.bool_()) if mask is not None else None,
        )
        return array, encoding.finish()

    def field(self, o: _Out, col: columnar.Column, enc: _Encoding, top: Array) -> pa.Array:
        """The Arrow column of one field; appends its Thrift encoding to ``enc``."""
        header = _HEADER.pack(_WIRE.get(o.etype, o.etype) if not o.repeated else T_LIST, o.fid)
        if o.repeated:
            return self.list_field(o, col, enc, top, header)
        if o.kind == "number":
            assert isinstance(col, columnar.Scalars)
            values = _numbers(o.etype, col.values)
            enc.const(header)
            enc.number(values, _BIG[o.etype])
            return numpy_array(values, o.arrow)
        if o.kind == "blob":
            assert isinstance(col, columnar.Blobs)
            enc.const(header)
            enc.number(np.diff(col.starts), ">i4")
            enc.var(col.arrow(pa.binary()))
            return col.arrow(o.arrow)
        assert isinstance(col, columnar.Messages)
        assert col.present is not None
        present = col.present
        if o.kind == "timestamp":
            micros = self.timestamps(col.decoded, top)
            if present.all():
                enc.const(header)
                enc.number(micros, ">i8")
            elif present.any():
                enc.var(_optional_i64(header, micros, present))
            return numpy_array(micros, TS_TYPE, None if present.all() else present)
        assert o.sub is not None
        array, encoded = self.struct(
            o.sub, col.decoded, top, ~present if not present.all() else None
        )
        if present.any():
            if present.all():
                enc.const(header)
                enc.var(encoded)
            else:
                joined = pc.binary_join_element_wise(
                    arrow_scalar(header, pa.binary()), encoded, _EMPTY
                )
                enc.var(pc.if_else(numpy_array(present, pa.bool_()), joined, _EMPTY))
        return array

    def list_field(
        self, o: _Out, col: columnar.Column, enc: _Encoding, top: Array, header: bytes
    ) -> pa.Array:
        assert isinstance(col, columnar.Scalars | columnar.Blobs | columnar.Messages)
        assert col.offsets is not None
        offsets = col.offsets
        counts = np.diff(offsets)
        enc.const(header + bytes([_WIRE.get(o.etype, o.etype)]))
        enc.number(counts, ">i4")
        if o.kind == "number":
            assert isinstance(col, columnar.Scalars)
            values = _numbers(o.etype, col.values)
            big = values.astype(_BIG[o.etype])
            enc.var(_binary_of_runs(big.view(np.uint8), offsets * big.itemsize))
            elements = numpy_array(values, o.arrow)
        elif o.kind == "blob":
            assert isinstance(col, columnar.Blobs)
            each = _Encoding(len(col.starts) - 1)
            each.number(np.diff(col.starts), ">i4")
            each.var(col.arrow(pa.binary()))
            enc.var(_join_lists(offsets, each.finish()))
            elements = col.arrow(o.arrow)
        else:
            assert isinstance(col, columnar.Messages)
            assert o.sub is not None
            elements, encoded = self.struct(o.sub, col.decoded, np.repeat(top, counts))
            enc.var(_join_lists(offsets, encoded))
        return pa.ListArray.from_arrays(
            numpy_array(offsets, pa.int32()), elements, type=o.arrow_type
        )

    def timestamps(self, dec: columnar.Decoded, top: Array) -> Array:
        """Microseconds since the epoch of decoded Timestamps (unset: 0)."""
        seconds, nanos = dec.columns["seconds"], dec.columns["nanos"]
        assert isinstance(seconds, columnar.Scalars)
        assert isinstance(nanos, columnar.Scalars)
        far = np.abs(seconds.values) > _MAX_TIMESTAMP_SECONDS
        if far.any():
            self.reasons.mark(
                self.error, top[far], "OverflowError: a Timestamp is out of the int64 µs range"
            )
        return seconds.values * 1_000_000 + nanos.values.astype(np.int64) // 1000


def _optional_i64(header: bytes, values: Array, present: Array) -> pa.Array:
    """Per row, the field ``header`` and the value where ``present``, nothing elsewhere."""
    records = np.empty(int(present.sum()), np.dtype([("h", f"V{len(header)}"), ("v", ">i8")]))
    records["h"], records["v"] = header, values[present]
    offsets = np.zeros(len(present) + 1, np.int32)
    np.cumsum(present * records.itemsize, out=offsets[1:])
    return _binary_of_runs(records.view(np.uint8), offsets)


def _join_lists(offsets: Array, encoded: pa.Array) -> pa.Array:
    """Each row's list elements' encodings, concatenated."""
    return pc.binary_join(
        pa.ListArray.from_arrays(numpy_array(offsets, pa.int32()), encoded), _EMPTY
    )


def _numbers(etype: int, values: Array) -> Array:
    """Decoded numbers as their Thrift type (64-bit unsigned values keep their bits)."""
    if etype == T_DOUBLE:
        return values.astype(np.float64, copy=False)
    if etype == T_BOOL:
        return values.astype(np.bool_, copy=False)
    if etype == T_I32:
        return values.astype(np.int32, copy=False)
    if values.dtype == np.uint64:
        return values.view(np.int64)
    return values.astype(np.int64, copy=False)


# -- the public face ---------------------------------------------------------------------

ENVELOPE_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("entity_id", pa.string()),
    ("event_time", TS_TYPE),
    ("write_time", TS_TYPE),
    ("producer", pa.string()),
    ("model_name", pa.string()),
    ("model_version", pa.string()),
    ("expired", pa.bool_()),
)
_ENVELOPE_JSON = {
    "entity_id": {"id": "STRING"},
    "event_time": {"id": "I64"},
    "write_time": {"id": "I64"},
    "producer": {"id": "STRING"},
    "model_name": {"id": "STRING"},
    "model_version": {"id": "STRING"},
    "expired": {"id": "BOOL"},
}


@dataclass
class Converted:
    """A converted batch: row i's ``value`` column entry and ``value_thrift`` bytes, unless
    ``error[i]`` is set (then :meth:`reason` says why and its entries are placeholders)."""

    value: pa.StructArray
    thrift: pa.BinaryArray
    error: Array
    reasons: columnar.Reasons

    def reason(self, row: int) -> str:
        return self.reasons.texts[int(self.error[row])]


class Transcoder:
    """Converts values of one protobuf type into their Thrift twin (bytes and columns)."""

    def __init__(self, message_class: type[Message]) -> None:
        desc = message_class.DESCRIPTOR
        self.message_class = message_class
        self.value_type = desc.full_name
        self.thrift_class = idl.value_struct(self.value_type)
        self.row_class = idl.row_struct(self.value_type)
        problems = twin_problems(desc, self.thrift_class)
        if problems:
            raise ConversionError(
                f"thrift/{idl.IDL_NAME} struct {self.thrift_class.__name__} is not the twin of "
                f"{self.value_type}: " + "; ".join(problems)
            )
        self._plan = columnar.plan(desc)
        self._out = _struct_out(desc, self.thrift_class)
        self.value_arrow_type = self._out.arrow_type

    def convert(self, batch: columnar.Batch) -> Converted:
        """Convert every serialized value of ``batch`` (a bad one marks only its own row)."""
        reasons = columnar.Reasons()
        decoded = columnar.decode(self._plan, batch, reasons)
        build = _Build(decoded.error, reasons)
        value, thrift = build.struct(self._out, decoded, np.arange(decoded.rows))
        return Converted(value, thrift, decoded.error, reasons)

    def encode(self, msg: Message) -> bytes:
        """The Thrift binary-protocol bytes of a value's twin."""
        converted = self.convert(columnar.Batch.of([msg.SerializeToString()]))
        if converted.error[0]:
            raise ConversionError(converted.reason(0))
        data: bytes = converted.thrift[0].as_py()
        return data

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema of a snapshot file: envelope, ``value`` struct, ``value_thrift``."""
        ids = {name: fid for name, (fid, _) in _thrift_fields(self.row_class).items()}
        fields = [
            pa.field(n, t, nullable=False, metadata=field_id(ids[n])) for n, t in ENVELOPE_FIELDS
        ]
        fields.append(
            pa.field(
                "value", self.value_arrow_type, nullable=False, metadata=field_id(ids["value"])
            )
        )
        fields.append(
            pa.field(
                "value_thrift", pa.binary(), nullable=False, metadata=field_id(ids["value_thrift"])
            )
        )
        return pa.schema(fields)

    def row_descriptor(self) -> dict[str, Any]:
        """parquet-thrift's JSON descriptor of the row struct (``thrift.descriptor``)."""
        row_fields = _thrift_fields(self.row_class)
        children = [
            {
                "name": name,
                "fieldId": row_fields[name][0],
                "requirement": "REQUIRED",
                "type": json_type,
            }
            for name, json_type in _ENVELOPE_JSON.items()
        ]
        children.append(
            {
                "name": "value",
                "fieldId": row_fields["value"][0],
                "requirement": "REQUIRED",
                "type": self._out.descriptor,
            }
        )
        children.append(
            {
                "name": "value_thrift",
                "fieldId": row_fields["value_thrift"][0],
                "requirement": "REQUIRED",
                "type": {"id": "STRING", "binary": True},
            }
        )
        return {"id": "STRUCT", "children": children, "structOrUnionType": "STRUCT"}

    def footer_metadata(self) -> dict[bytes, bytes]:
        """The parquet-thrift footer keys."""
        return {
            b"thrift.class": idl.java_class(self.row_class).encode(),
            b"thrift.descriptor": json.dumps(self.row_descriptor(), separators=(",", ":")).encode(),
        }

    def decode(self, data: bytes) -> Any:
        """The thriftpy2 object of ``value_thrift`` bytes (binary protocol)."""
        return deserialize(self.thrift_class(), data, TCyBinaryProtocolFactory())  # type: ignore[no-untyped-call]

    def to_thrift(self, msg: Message) -> Any:
        """The thriftpy2 twin of a protobuf value."""
        return self.decode(self.encode(msg))


_TRANSCODERS: dict[str, Transcoder] = {}


def transcoder(message_class: type[Message]) -> Transcoder:
    """The (cached) transcoder of a value type."""
    name = message_class.DESCRIPTOR.full_name
    found = _TRANSCODERS.get(name)
    if found is None:
        found = _TRANSCODERS[name] = Transcoder(message_class)
    return found
