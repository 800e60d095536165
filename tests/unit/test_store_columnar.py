"""The columnar protobuf decoder of the export against upb, the protobuf runtime GSS runs on."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.keys import EntityCodec, KeyType
from contract.v1 import envelope_pb2, signals_pb2
from gss.snapshot.convert import TIMESTAMP, transcoder
from gss.snapshot.worker import entity_texts
from store import columnar, record_batches, records
from tests.snapshot_fixtures import example_value

SIGNALS = ["embedding", "dominant_colors", "dhash", "near_duplicate_of", "safety_score"]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    tag = _varint(number << 3 | wire_type)
    return tag + (_varint(len(payload)) + payload if wire_type == 2 else payload)


def _thrift_plain(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_thrift_plain(v) for v in obj]
    if hasattr(obj, "thrift_spec"):
        return {s[1]: _thrift_plain(getattr(obj, s[1])) for s in obj.thrift_spec.values()}
    return obj


def _expected(msg: Message) -> Any:
    """A proto value in the Thrift domain, computed from upb's parse (the reference)."""
    out = {}
    for fd in msg.DESCRIPTOR.fields:
        value = getattr(msg, fd.name)
        if fd.type == fd.TYPE_MESSAGE and fd.message_type.full_name == TIMESTAMP:
            out[fd.name] = (
                value.seconds * 1_000_000 + value.nanos // 1000 if msg.HasField(fd.name) else None
            )
        elif fd.label == fd.LABEL_REPEATED:
            out[fd.name] = [_expected(v) if fd.type == fd.TYPE_MESSAGE else v for v in value]
        elif fd.type == fd.TYPE_MESSAGE:
            out[fd.name] = _expected(value) if msg.HasField(fd.name) else None
        elif fd.type in (fd.TYPE_FIXED64, fd.TYPE_UINT64) and value >= 1 << 63:
            out[fd.name] = value - (1 << 64)
        else:
            out[fd.name] = value
    return out


def _convert(cls: type[Message], payloads: list[bytes]) -> tuple[list[Any], list[str]]:
    """(Thrift-domain value or None, error reason) of each payload, converted in one batch."""
    tc = transcoder(cls)
    converted = tc.convert(columnar.Batch.of(payloads))
    values = []
    for i in range(len(payloads)):
        if converted.error[i]:
            values.append(None)
        else:
            values.append(_thrift_plain(tc.decode(converted.thrift[i].as_py())))
    return values, [converted.reason(i) for i in range(len(payloads))]


@pytest.mark.parametrize("signal", SIGNALS)
def test_a_batch_decodes_like_upb_row_by_row(signal: str) -> None:
    """Values of every example type, decoded as one batch, equal upb's parse of each value."""
    msgs = [example_value(signal, n) for n in range(40)]
    values, reasons = _convert(type(msgs[0]), [m.SerializeToString() for m in msgs])
    assert reasons == [""] * 40
    assert values == [_expected(m) for m in msgs]


def test_non_canonical_encodings_read_as_upb_reads_them() -> None:
    """Fields out of order, a scalar twice (the last wins), a sub-message twice (merged),
    packed and unpacked runs mixed, and unknown fields of every wire type between them."""
    unknown = (
        _field(9, 0, _varint(300))
        + _field(10, 1, b"\x01" * 8)
        + _field(11, 2, b"xyz")
        + _field(12, 5, b"\x02" * 4)
    )
    floats = [struct.pack("<f", v) for v in (1.5, 2.5, 3.5, 4.5)]
    cases: list[tuple[type[Message], bytes]] = [
        (signals_pb2.SafetyScore, _field(3, 2, b"v2") + unknown + _field(1, 5, floats[0])),
        (signals_pb2.DHash, _field(1, 1, b"\x01" * 8) + _field(1, 1, b"\x02" * 8)),
        (
            signals_pb2.WindowedCount,
            _field(2, 2, _field(1, 0, _varint(5))) + unknown + _field(2, 2, _field(2, 0, b"\x07")),
        ),
        (
            signals_pb2.Embedding,
            b"".join(
                [
                    _field(1, 2, floats[0] + floats[1]),
                    _field(1, 5, floats[2]),
                    unknown,
                    _field(1, 2, floats[3]),
                ]
            ),
        ),
        (signals_pb2.NearDuplicate, _field(2, 0, _varint(2**40 + 7)) + _field(1, 0, b"\x05")),
        (
            signals_pb2.DominantColors,
            _field(1, 2, _field(4, 5, floats[1]) + _field(1, 0, b"\x09"))
            + unknown
            + _field(1, 2, b"")
            + _field(1, 2, _field(3, 0, _varint(2**32 + 3))),
        ),
    ]
    for cls, data in cases:
        expected = _expected(cls.FromString(data))
        # Surrounded by plain values, so rows must not leak into each other.
        plain = cls().SerializeToString()
        values, reasons = _convert(cls, [plain, data, plain])
        assert reasons == ["", "", ""], (cls, reasons)
        assert values[1] == expected, cls
        assert values[0] == values[2] == _expected(cls())


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x0d\x00\x00", "truncated"),  # fixed32 cut short
        (b"\x0a\x05ab", "truncated"),  # length beyond the message
        (b"\x0a" + b"\xff" * 11, "malformed"),  # a varint longer than 10 bytes
        (b"\x0f", "malformed"),  # wire type 7
        (b"\x00\x01", "malformed"),  # field number 0
        (b"\x0a\x03\x00\x00\x00", "partial element"),  # packed floats, 3 bytes
    ],
)
def test_a_malformed_value_marks_only_its_row(data: bytes, reason: str) -> None:
    """upb refuses these; so does the batch decoder, for that row alone, saying why."""
    with pytest.raises(DecodeError):
        signals_pb2.Embedding.FromString(data)
    good = signals_pb2.Embedding(values=[1.0, 2.0]).SerializeToString()
    values, reasons = _convert(signals_pb2.Embedding, [good, data, good])
    assert reasons[0] == reasons[2] == ""
    assert reasons[1].startswith("DecodeError"), reasons[1]
    assert reason in reasons[1], reasons[1]
    assert values[0] == values[2] == {"values": [1.0, 2.0]}


def test_invalid_utf8_in_a_string_is_refused() -> None:
    """proto3 strings must be UTF-8 (upb refuses others); bytes fields may hold anything."""
    bad = _field(1, 2, b"\xff\xfe")
    with pytest.raises(DecodeError):
        signals_pb2.NearDuplicate.FromString(bad)
    values, reasons = _convert(signals_pb2.NearDuplicate, [_field(1, 2, "ü".encode()), bad])
    assert values[0] == {"canonical_entity_id": "ü", "hamming_distance": 0}
    assert "UTF-8" in reasons[1]


@settings(max_examples=300, deadline=None)
@given(
    signal=st.sampled_from(SIGNALS),
    n=st.integers(0, 50),
    cut=st.integers(0, 10_000),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
)
def test_damaged_values_are_refused_exactly_when_upb_refuses_them(
    signal: str, n: int, cut: int, flips: list[tuple[int, int]]
) -> None:
    """Truncated or corrupted bytes: where upb parses them, the batch decoder reads the same
    value; where upb refuses them, so does the decoder. (Groups, wire types 3 and 4, are the
    one documented difference: upb skips unknown ones, the decoder refuses them.)"""
    msg = example_value(signal, n)
    data = bytearray(msg.SerializeToString())
    for at, byte in flips:
        if data:
            data[at % len(data)] = byte
    damaged = bytes(data[: cut % (len(data) + 1)])
    values, reasons = _convert(type(msg), [damaged])
    try:
        reference = type(msg).FromString(damaged)
    except DecodeError:
        assert values == [None], "upb refuses these bytes; the decoder must too"
        return
    if values == [None]:
        assert "malformed" in reasons[0], reasons[0]
        assert _has_unknown_group(reference), f"refused valid bytes: {reasons[0]}"
        return
    assert values[0] == _expected(reference)


def _has_unknown_group(message: Message) -> bool:
    """Whether upb kept an unknown group (wire type 3) anywhere in the parsed ``message``: the
    one input the decoder refuses and upb accepts."""
    from google.protobuf.unknown_fields import UnknownFieldSet

    if any(f.wire_type == 3 for f in UnknownFieldSet(message)):
        return True
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        items = value if field.label == field.LABEL_REPEATED else [value]
        if any(isinstance(item, Message) and _has_unknown_group(item) for item in items):
            return True
    return False


def test_stored_records_decode_like_store_records() -> None:
    """Envelope columns and value ranges of stored records equal StoredRecord.decode; a record
    of another format, a short one and one without a cell are refused, each for its reason."""
    envelope = envelope_pb2.Envelope(producer="p", model_name="m", model_version="7")
    envelope.event_time.FromMicroseconds(1_700_000_000_123_456)
    envelope.write_time.FromMicroseconds(1_700_000_001_654_321)
    value = signals_pb2.DHash(hash=2**64 - 1)
    from google.protobuf import any_pb2

    packed = any_pb2.Any()
    packed.Pack(value)
    good = records.encode(3, packed, envelope)
    other_format = b"\x03" + good[1:]  # format 2 is a tombstone (tests/unit/test_safe_writes.py)
    no_cell = good[: records.HEADER.size]
    batch = columnar.Batch.of([good, other_format, b"\x01\x02", no_cell, good])
    columns = record_batches.decode(batch)
    assert [columns.reason(i).split(":")[0] for i in range(5)] == [
        "",
        "ValueError",
        "ValueError",
        "IndexError",
        "",
    ]
    assert "format 3" in columns.reason(1)
    reference = records.StoredRecord.decode(good)
    assert int(columns.event_us[0]) == reference.event_time_us
    assert int(columns.write_us[4]) == records.timestamp_us(reference.envelope.write_time)
    assert columns.producer[0].as_py() == "p"
    assert columns.model_version[4].as_py() == "7"
    assert columns.type_url[0].as_py() == packed.type_url
    start, end = int(columns.values.start[0]), int(columns.values.end[0])
    assert batch.buf[start:end].tobytes() == packed.value


@pytest.mark.parametrize(
    ("key_type", "length", "ids"),
    [
        (KeyType.INT64, 8, [0, 1, 10, 2**63 - 1, 2**32]),
        (KeyType.BYTES, 16, [0, 1, 2**128 - 1, 0xAB << 64]),
        (KeyType.BYTES, 3, [0, 0xABCDEF, 0x0F00]),
    ],
)
def test_entity_text_is_the_codec_text_form(key_type: KeyType, length: int, ids: list[int]) -> None:
    """The export's bulk text form of entity ids equals EntityCodec.to_text, id by id."""
    codec = EntityCodec(key_type, length)
    raw = [i.to_bytes(length, "big") for i in ids]
    matrix = np.frombuffer(b"".join(raw), np.uint8).reshape(len(raw), length)
    assert entity_texts(codec, matrix).to_pylist() == [codec.to_text(r) for r in raw]


# -- every field type, against upb ---------------------------------------------------------

_D = descriptor_pb2.FieldDescriptorProto
_TYPES = {
    "int32": _D.TYPE_INT32,
    "int64": _D.TYPE_INT64,
    "uint32": _D.TYPE_UINT32,
    "uint64": _D.TYPE_UINT64,
    "sint32": _D.TYPE_SINT32,
    "sint64": _D.TYPE_SINT64,
    "fixed32": _D.TYPE_FIXED32,
    "fixed64": _D.TYPE_FIXED64,
    "sfixed32": _D.TYPE_SFIXED32,
    "sfixed64": _D.TYPE_SFIXED64,
    "float": _D.TYPE_FLOAT,
    "double": _D.TYPE_DOUBLE,
    "bool": _D.TYPE_BOOL,
    "string": _D.TYPE_STRING,
    "bytes": _D.TYPE_BYTES,
    "enum": _D.TYPE_ENUM,
}


def _all_types() -> Any:
    """A proto3 message with a singular, a packed and an unpacked field of every type."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="gss_wire_test.proto", package="gsswiretest", syntax="proto3"
    )
    enum = fdp.enum_type.add(name="Tone")
    enum.value.add(name="TONE_NONE", number=0)
    enum.value.add(name="TONE_LOW", number=-3)
    enum.value.add(name="TONE_HIGH", number=7)
    inner = fdp.message_type.add(name="Inner")
    inner.field.add(name="a", number=1, type=_D.TYPE_SINT64, label=_D.LABEL_OPTIONAL)
    inner.field.add(name="s", number=2, type=_D.TYPE_STRING, label=_D.LABEL_OPTIONAL)
    msg = fdp.message_type.add(name="AllTypes")
    for i, (name, t) in enumerate(_TYPES.items()):
        enum_name = ".gsswiretest.Tone" if t == _D.TYPE_ENUM else None
        for prefix, number, label in (
            ("s_", i + 1, _D.LABEL_OPTIONAL),
            ("r_", 100 + i, _D.LABEL_REPEATED),
            ("u_", 200 + i, _D.LABEL_REPEATED),
        ):
            fd = msg.field.add(name=prefix + name, number=number, type=t, label=label)
            if enum_name:
                fd.type_name = enum_name
            if prefix == "u_" and t not in (_D.TYPE_STRING, _D.TYPE_BYTES):
                fd.options.packed = False
    msg.field.add(
        name="inner", number=50, type=_D.TYPE_MESSAGE, label=_D.LABEL_OPTIONAL,
        type_name=".gsswiretest.Inner",
    )  # fmt: skip
    msg.field.add(
        name="inners", number=51, type=_D.TYPE_MESSAGE, label=_D.LABEL_REPEATED,
        type_name=".gsswiretest.Inner",
    )  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("gsswiretest.AllTypes"))


_ALL_TYPES = _all_types()
_BOUNDS = {
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
    "sint32": (-(2**31), 2**31 - 1),
    "sint64": (-(2**63), 2**63 - 1),
    "fixed32": (0, 2**32 - 1),
    "fixed64": (0, 2**64 - 1),
    "sfixed32": (-(2**31), 2**31 - 1),
    "sfixed64": (-(2**63), 2**63 - 1),
}


def _values_of(name: str) -> st.SearchStrategy[Any]:
    if name in _BOUNDS:
        return st.integers(*_BOUNDS[name])
    if name == "float":
        return st.floats(width=32, allow_nan=False)
    if name == "double":
        return st.floats(allow_nan=False)
    if name == "bool":
        return st.booleans()
    if name == "string":
        return st.text(max_size=8)
    if name == "bytes":
        return st.binary(max_size=8)
    return st.sampled_from([0, -3, 7])


_MESSAGES = st.fixed_dictionaries(
    {},
    optional={
        **{prefix + n: (
            _values_of(n) if prefix == "s_" else st.lists(_values_of(n), max_size=4)
        ) for n in _TYPES for prefix in ("s_", "r_", "u_")},
        "inner": st.fixed_dictionaries({}, optional={"a": _values_of("sint64"), "s": st.text(max_size=4)}),
        "inners": st.lists(
            st.fixed_dictionaries({}, optional={"a": _values_of("sint64"), "s": st.text(max_size=4)}),
            max_size=3,
        ),
    },
)  # fmt: skip


def _column_value(column: columnar.Column, row: int, fd: Any) -> Any:
    """Row ``row`` of a decoded column, as Python values like upb's."""
    if isinstance(column, columnar.Messages):
        dec = column.decoded
        fields = fd.message_type.fields
        if column.offsets is None:
            assert column.present is not None
            if not column.present[row]:
                return None
            return {f.name: _column_value(dec.columns[f.name], row, f) for f in fields}
        lo, hi = column.offsets[row], column.offsets[row + 1]
        return [
            {f.name: _column_value(dec.columns[f.name], i, f) for f in fields}
            for i in range(lo, hi)
        ]
    if isinstance(column, columnar.Blobs):
        items = range(row, row + 1)
        if column.offsets is not None:
            items = range(column.offsets[row], column.offsets[row + 1])
        got = [column.data[column.starts[i] : column.starts[i + 1]].tobytes() for i in items]
        if fd.type == fd.TYPE_STRING:
            got = [g.decode() for g in got]
        return got if column.offsets is not None else got[0]
    assert isinstance(column, columnar.Scalars)
    values = column.values
    if column.offsets is not None:
        return [v.item() for v in values[column.offsets[row] : column.offsets[row + 1]]]
    return values[row].item()


def _upb_value(msg: Message, fd: Any) -> Any:
    value = getattr(msg, fd.name)
    if fd.type == fd.TYPE_MESSAGE:
        if fd.label == fd.LABEL_REPEATED:
            return [{f.name: _upb_value(v, f) for f in fd.message_type.fields} for v in value]
        if not msg.HasField(fd.name):
            return None
        return {f.name: _upb_value(value, f) for f in fd.message_type.fields}
    return list(value) if fd.label == fd.LABEL_REPEATED else value


@settings(max_examples=60, deadline=None)
@given(st.lists(_MESSAGES, min_size=1, max_size=6))
def test_every_field_type_decodes_as_upb_reads_it(rows: list[dict[str, Any]]) -> None:
    """Singular, packed and unpacked fields of every proto3 scalar type (negative int32 and
    enums as 10-byte varints, zigzag, fixed, floats, bools, strings, bytes), a sub-message and
    repeated sub-messages: each decoded column equals upb's reading of each row."""
    msgs = []
    for row in rows:
        kwargs = dict(row)
        if "inner" in kwargs:
            kwargs["inner"] = _inner(row["inner"])
        if "inners" in kwargs:
            kwargs["inners"] = [_inner(i) for i in row["inners"]]
        msgs.append(_ALL_TYPES(**kwargs))
    payloads = [m.SerializeToString() for m in msgs]
    parsed = [_ALL_TYPES.FromString(p) for p in payloads]
    reasons = columnar.Reasons()
    decoded = columnar.decode(
        columnar.plan(_ALL_TYPES.DESCRIPTOR), columnar.Batch.of(payloads), reasons
    )
    assert not decoded.error.any(), [reasons.texts[e] for e in decoded.error]
    for i, msg in enumerate(parsed):
        for fd in _ALL_TYPES.DESCRIPTOR.fields:
            got = _column_value(decoded.columns[fd.name], i, fd)
            assert got == _upb_value(msg, fd), (fd.name, got, _upb_value(msg, fd))


def _inner(values: dict[str, Any]) -> Message:
    inner_class = message_factory.GetMessageClass(
        _ALL_TYPES.DESCRIPTOR.fields_by_name["inner"].message_type
    )
    return inner_class(**values)
