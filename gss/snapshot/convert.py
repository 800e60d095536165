"""Protobuf signal values -> their Thrift twins: binary-protocol bytes and Arrow columns.

One :class:`Transcoder` per value type, built once from the protobuf descriptor and the
thriftpy2 struct spec (and refusing to build when the two are not twins, see
:func:`twin_problems`). It then turns parsed protobuf values into

- the Thrift *binary protocol* encoding of the twin struct, written straight from the protobuf
  fields (byte-identical to ``thriftpy2.utils.serialize(obj, TBinaryProtocolFactory())``, which
  the tests check, without building a thriftpy2 object per row);
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
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from thriftpy2.protocol import TCyBinaryProtocolFactory
from thriftpy2.utils import deserialize

from gss.snapshot import idl

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
_UNSIGNED_64 = (_F.TYPE_UINT64, _F.TYPE_FIXED64)
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_DOUBLE = struct.Struct(">d")
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


# -- column buffers ----------------------------------------------------------------------


class _Node:
    """Python buffers for one Arrow column (a tree, like the struct), reused across row groups."""

    arrow_type: pa.DataType

    def finish(self) -> pa.Array:
        raise NotImplementedError

    def truncate(self, rows: int) -> None:
        raise NotImplementedError


class _Leaf(_Node):
    def __init__(self, arrow_type: pa.DataType, default: Any) -> None:
        self.arrow_type = arrow_type
        self.default = default
        self.buf: list[Any] = []

    def finish(self) -> pa.Array:
        return pa.array(self.buf, type=self.arrow_type)

    def truncate(self, rows: int) -> None:
        del self.buf[rows:]


class _Chunks(_Node):
    """A leaf of numpy chunks (packed repeated numbers), concatenated once per row group."""

    def __init__(self, arrow_type: pa.DataType, dtype: str) -> None:
        self.arrow_type = arrow_type
        self.dtype = dtype
        self.buf: list[Any] = []

    def finish(self) -> pa.Array:
        if not self.buf:
            return pa.array([], type=self.arrow_type)
        return pa.array(np.concatenate(self.buf).astype(self.dtype), type=self.arrow_type)

    def truncate(self, rows: int) -> None:
        kept, total = [], 0
        for chunk in self.buf:
            if total + len(chunk) >= rows:
                kept.append(chunk[: rows - total])
                break
            kept.append(chunk)
            total += len(chunk)
        self.buf[:] = [c for c in kept if len(c)]


class _List(_Node):
    def __init__(self, child: _Node) -> None:
        self.child = child
        self.arrow_type = pa.list_(pa.field("element", child.arrow_type, nullable=False))
        self.offsets: list[int] = [0]

    def finish(self) -> pa.Array:
        return pa.ListArray.from_arrays(
            pa.array(self.offsets, pa.int32()), self.child.finish(), type=self.arrow_type
        )

    def truncate(self, rows: int) -> None:
        del self.offsets[rows + 1 :]
        self.child.truncate(self.offsets[-1])


def field_id(fid: int) -> dict[bytes, bytes]:
    """Arrow field metadata that becomes the Parquet field id (parquet-thrift writes Thrift ids)."""
    return {b"PARQUET:field_id": str(fid).encode()}


class _Struct(_Node):
    def __init__(self, fields: list[tuple[str, int, _Node, bool]], nullable: bool) -> None:
        self.names = [name for name, _, _, _ in fields]
        self.children = [node for _, _, node, _ in fields]
        self.arrow_type = pa.struct(
            [
                pa.field(name, node.arrow_type, nullable=not required, metadata=field_id(fid))
                for name, fid, node, required in fields
            ]
        )
        self.valid: list[bool] | None = [] if nullable else None

    def finish(self) -> pa.Array:
        arrays = [child.finish() for child in self.children]
        mask = None
        if self.valid is not None and not all(self.valid):
            mask = pa.array([not v for v in self.valid], pa.bool_())
        return pa.StructArray.from_arrays(arrays, fields=list(self.arrow_type), mask=mask)

    def truncate(self, rows: int) -> None:
        if self.valid is not None:
            del self.valid[rows:]
        for child in self.children:
            child.truncate(rows)


# -- code generation -----------------------------------------------------------------------
#
# Per value type, one Python function is generated that reads each protobuf field once, packs
# the Thrift binary encoding with as few struct.pack calls as possible and appends the same
# values to the column buffers. Generic per-field closures cost about three times as much.

_SCALAR_JSON: dict[int, dict[str, Any]] = {
    T_BOOL: {"id": "BOOL"},
    T_DOUBLE: {"id": "DOUBLE"},
    T_I32: {"id": "I32"},
    T_I64: {"id": "I64"},
    T_STRING: {"id": "STRING"},
    T_BINARY: {"id": "STRING", "binary": True},
}
_FIXED_CODES = {T_DOUBLE: "d", T_I32: "i", T_I64: "q", T_BOOL: "?"}
_DEFAULTS = {T_DOUBLE: 0.0, T_I32: 0, T_I64: 0, T_BOOL: False, T_STRING: "", T_BINARY: b""}


class _Gen:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ns: dict[str, Any] = {}
        self._n = 0
        # A run of fixed-size values to pack in one call: (format, argument expressions).
        self._fmt = ""
        self._args: list[str] = []
        self.descriptor: dict[str, Any] = {}

    def name(self, prefix: str, value: Any = None) -> str:
        self._n += 1
        name = f"{prefix}{self._n}"
        if value is not None:
            self.ns[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def pack(self, fmt: str, *args: str) -> None:
        self._fmt += fmt
        self._args.extend(args)

    def flush(self, indent: int) -> None:
        if self._fmt:
            packer = self.name("S", struct.Struct(">" + self._fmt).pack)
            self.emit(indent, f"P({packer}({', '.join(self._args)}))")
            self._fmt, self._args = "", []

    def struct_fields(
        self, desc: Any, thrift_cls: type, msg: str, indent: int
    ) -> tuple[_Struct, dict[str, Any]]:
        """Emit the encoding of ``msg``'s fields (no STOP byte); returns its column node."""
        tfields = _thrift_fields(thrift_cls)
        nodes: list[tuple[str, int, _Node, bool]] = []
        children_json = []
        for fd in desc.fields:
            fid, spec = tfields[fd.name]
            node, required, type_json = self.field(fd, fid, spec, msg, indent)
            nodes.append((fd.name, fid, node, required))
            children_json.append(
                {
                    "name": fd.name,
                    "fieldId": fid,
                    "requirement": "REQUIRED" if required else "OPTIONAL",
                    "type": type_json,
                }
            )
        return _Struct(nodes, nullable=False), {
            "id": "STRUCT",
            "children": children_json,
            "structOrUnionType": "STRUCT",
        }

    def field(
        self, fd: Any, fid: int, spec: tuple[Any, ...], msg: str, indent: int
    ) -> tuple[_Node, bool, dict[str, Any]]:
        attr = f"{msg}.{fd.name}"
        repeated = fd.label == _F.LABEL_REPEATED
        if fd.type == _F.TYPE_MESSAGE and fd.message_type.full_name == TIMESTAMP:
            if repeated:
                raise ConversionError(f"{fd.full_name}: repeated Timestamps are not supported")
            leaf = _Leaf(TS_TYPE, None)
            var, app = self.name("v"), self.name("A", leaf.buf.append)
            self.flush(indent)
            self.emit(indent, f"if {msg}.HasField({fd.name!r}):")
            self.emit(indent + 1, f"t = {attr}")
            self.emit(indent + 1, f"{var} = t.seconds * 1000000 + t.nanos // 1000")
            self.pack("bhq", str(T_I64), str(fid), var)
            self.flush(indent + 1)
            self.emit(indent, "else:")
            self.emit(indent + 1, f"{var} = None")
            self.emit(indent, f"{app}({var})")
            return leaf, False, {"id": "I64"}
        if fd.type == _F.TYPE_MESSAGE:
            sub_cls = spec[2][1] if repeated else spec[2]
            if repeated:
                items, item = self.name("v"), self.name("e")
                self.emit(indent, f"{items} = {attr}")
                self.pack("bhbi", str(T_LIST), str(fid), str(T_STRUCT), f"len({items})")
                self.flush(indent)
                self.emit(indent, f"for {item} in {items}:")
                node, sub_json = self.struct_fields(fd.message_type, sub_cls, item, indent + 1)
                self.pack("b", "0")
                self.flush(indent + 1)
                lst = _List(node)
                offsets = self.name("OF", lst.offsets)
                self.emit(indent, f"{offsets}.append({offsets}[-1] + len({items}))")
                return lst, True, _list_json(sub_json)
            sub = self.name("m")
            self.flush(indent)
            self.emit(indent, f"if {msg}.HasField({fd.name!r}):")
            self.emit(indent + 1, f"{sub} = {attr}")
            self.pack("bh", str(T_STRUCT), str(fid))
            node, sub_json = self.struct_fields(fd.message_type, sub_cls, sub, indent + 1)
            self.pack("b", "0")
            self.flush(indent + 1)
            node.valid = []
            valid = self.name("V", node.valid.append)
            self.emit(indent + 1, f"{valid}(True)")
            self.emit(indent, "else:")
            self.emit(indent + 1, f"{valid}(False)")
            self.defaults(node, indent + 1)
            return node, False, sub_json
        etype = spec[2] if repeated else spec[0]
        if isinstance(etype, tuple):
            etype = etype[0]
        arrow = pa.int32() if etype == T_I32 else _SCALARS[fd.type][1]
        leaf = _Leaf(arrow, _DEFAULTS[etype])
        unsigned = fd.type in _UNSIGNED_64
        if repeated and msg == "m" and fd.type in _PACKED_WIRE and etype in _PACKED_OUT:
            return self.packed_field(fd, fid, etype, arrow, indent)
        if repeated:
            var = self.name("v")
            if unsigned:
                self.emit(
                    indent,
                    f"{var} = [x - 18446744073709551616 if x >= 9223372036854775808 else x for x in {attr}]",
                )
            else:
                self.emit(indent, f"{var} = list({attr})")
            self.pack("bhbi", str(T_LIST), str(fid), str(_WIRE.get(etype, etype)), f"len({var})")
            code = _FIXED_CODES.get(etype)
            self.flush(indent)
            if code is not None:
                self.emit(indent, f"P({self.name('N', _packer_of_n(code))}({var}))")
            else:
                self.emit(indent, f"for x in {var}:")
                raw = "x.encode()" if etype == T_STRING else "x"
                self.emit(indent + 1, f"b = {raw}")
                self.emit(indent + 1, f"P({self.name('S', _I32.pack)}(len(b)))")
                self.emit(indent + 1, "P(b)")
            lst = _List(leaf)
            extend, offsets = self.name("X", leaf.buf.extend), self.name("OF", lst.offsets)
            self.emit(indent, f"{extend}({var})")
            self.emit(indent, f"{offsets}.append({offsets}[-1] + len({var}))")
            return lst, True, _list_json(_SCALAR_JSON[etype])
        var, app = self.name("v"), self.name("A", leaf.buf.append)
        self.emit(indent, f"{var} = {attr}")
        if unsigned:
            self.emit(indent, f"if {var} >= 9223372036854775808:")
            self.emit(indent + 1, f"{var} -= 18446744073709551616")
        wire = _WIRE.get(etype, etype)
        code = _FIXED_CODES.get(etype)
        if code is not None:
            self.pack("bh" + code, str(wire), str(fid), var)
        else:
            raw = self.name("b")
            self.emit(indent, f"{raw} = {var}.encode()" if etype == T_STRING else f"{raw} = {var}")
            self.pack("bhi", str(wire), str(fid), f"len({raw})")
            self.flush(indent)
            self.emit(indent, f"P({raw})")
        self.emit(indent, f"{app}({var})")
        return leaf, True, _SCALAR_JSON[etype]

    def packed_field(
        self, fd: Any, fid: int, etype: int, arrow: pa.DataType, indent: int
    ) -> tuple[_Node, bool, dict[str, Any]]:
        """A top-level repeated fixed-width number: numpy straight from the packed wire bytes.

        Python floats are not created at all; an unpacked encoding (legal, rare) falls back to
        reading the parsed message.
        """
        wire_dtype, out_dtype = _PACKED_WIRE[fd.type], _PACKED_OUT[etype]
        leaf = _Chunks(arrow, "<" + out_dtype[1:])
        lst = _List(leaf)
        raw, arr, big = self.name("c"), self.name("a"), self.name("b")
        self.emit(indent, f"{raw} = {self.name('K', packed_bytes)}(r, {fd.number})")
        self.emit(indent, f"if {raw} is None:")
        self.emit(
            indent + 1, f"{arr} = {self.name('NA', np.array)}(list(m.{fd.name}), {wire_dtype!r})"
        )
        self.emit(indent, "else:")
        self.emit(indent + 1, f"{arr} = {self.name('FB', np.frombuffer)}({raw}, {wire_dtype!r})")
        self.emit(indent, f"{big} = {arr}.astype({out_dtype!r})")
        self.pack("bhbi", str(T_LIST), str(fid), str(etype), f"len({big})")
        self.flush(indent)
        self.emit(indent, f"P({big}.tobytes())")
        chunks, offsets = self.name("X", leaf.buf.append), self.name("OF", lst.offsets)
        self.emit(indent, f"{chunks}({big})")
        self.emit(indent, f"{offsets}.append({offsets}[-1] + len({big}))")
        return lst, True, _list_json(_SCALAR_JSON[etype])

    def defaults(self, node: _Node, indent: int) -> None:
        """Emit appends that keep an unset optional struct's child columns aligned."""
        if isinstance(node, _Leaf):
            self.emit(indent, f"{self.name('A', node.buf.append)}({node.default!r})")
        elif isinstance(node, _List):
            offsets = self.name("OF", node.offsets)
            self.emit(indent, f"{offsets}.append({offsets}[-1])")
        elif isinstance(node, _Struct):
            if node.valid is not None:
                self.emit(indent, f"{self.name('V', node.valid.append)}(False)")
            for child in node.children:
                self.defaults(child, indent)


# Packed repeated fixed-width proto types (little-endian on the wire) and the big-endian numpy
# type of their Thrift twin.
_PACKED_WIRE = {
    _F.TYPE_FLOAT: "<f4",
    _F.TYPE_DOUBLE: "<f8",
    _F.TYPE_FIXED32: "<u4",
    _F.TYPE_SFIXED32: "<i4",
    _F.TYPE_FIXED64: "<u8",
    _F.TYPE_SFIXED64: "<i8",
}
_PACKED_OUT = {T_DOUBLE: ">f8", T_I64: ">i8", T_I32: ">i4"}


def packed_bytes(raw: bytes, number: int) -> bytes | None:
    """The payload of packed repeated field ``number`` in a serialized message.

    Chunks of a field split across the message are joined; None if the field also occurs
    unpacked (then the caller reads the parsed message) or the bytes are not a message.
    """
    chunks = []
    pos, end = 0, len(raw)
    while pos < end:
        tag, pos = _varint(raw, pos)
        wire = tag & 7
        if wire == 2:
            length, pos = _varint(raw, pos)
            if tag >> 3 == number:
                chunks.append(raw[pos : pos + length])
            pos += length
        elif tag >> 3 == number:
            return None
        elif wire == 0:
            _, pos = _varint(raw, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            return None
    if pos != end:
        return None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    byte = raw[pos]
    if byte < 0x80:
        return byte, pos + 1
    result, shift = byte & 0x7F, 7
    while True:
        pos += 1
        byte = raw[pos]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos + 1
        shift += 7


def _list_json(element: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "LIST",
        "values": {"name": "element", "fieldId": 1, "requirement": "REQUIRED", "type": element},
    }


def _packer_of_n(code: str) -> Callable[[list[Any]], bytes]:
    """Packs a list of fixed-size values big-endian, with one cached Struct per length."""
    packers: dict[int, Callable[..., bytes]] = {}

    def pack(values: list[Any]) -> bytes:
        n = len(values)
        packer = packers.get(n)
        if packer is None:
            packer = packers[n] = struct.Struct(f">{n}{code}").pack
        return packer(*values)

    return pack


def _compile(
    desc: Any, thrift_cls: type
) -> tuple[Callable[[Message, bytes], bytes], _Struct, dict[str, Any], str]:
    """The generated converter of one value type, its column tree and Thrift descriptor."""
    gen = _Gen()
    body_start = len(gen.lines)
    node, descriptor = gen.struct_fields(desc, thrift_cls, "m", 1)
    gen.pack("b", "0")
    gen.flush(1)
    body = gen.lines[body_start:]
    params = "".join(f", {name}={name}" for name in gen.ns)
    source = "\n".join(
        [
            f"def convert(m, r{params}):",
            "    parts = []",
            "    P = parts.append",
            *body,
            "    return b''.join(parts)",
        ]
    )
    namespace = dict(gen.ns)
    exec(compile(source, f"<thrift converter for {desc.full_name}>", "exec"), namespace)
    return namespace["convert"], node, descriptor, source


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


class ValueColumns:
    """Buffers for the ``value`` column of one part file.

    ``add(msg, raw)`` appends a value (parsed, and the bytes it was parsed from) to the columns
    and returns its Thrift binary encoding;
    ``finish()`` returns the Arrow array of everything added and empties the buffers.
    """

    def __init__(self, desc: Any, thrift_cls: type) -> None:
        self.add, self._node, self.descriptor, self.source = _compile(desc, thrift_cls)
        self.rows = 0

    @property
    def arrow_type(self) -> pa.StructType:
        return self._node.arrow_type

    def rollback(self, rows: int) -> None:
        """Drop everything after the first ``rows`` values (undoes a failed ``add``)."""
        self._node.truncate(rows)

    def finish(self) -> pa.Array:
        array = self._node.finish()
        self._node.truncate(0)
        return array


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
        self._desc = desc
        self._scratch = self.new_value_columns()
        self.value_arrow_type = self._scratch.arrow_type

    def new_value_columns(self) -> ValueColumns:
        """Fresh buffers (with their own generated converter) for one part file."""
        return ValueColumns(self._desc, self.thrift_class)

    def encode(self, msg: Message) -> bytes:
        """The Thrift binary-protocol bytes of a value's twin."""
        try:
            return self._scratch.add(msg, msg.SerializeToString())
        finally:
            self._scratch.rollback(0)

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
                "type": self._scratch.descriptor,
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
