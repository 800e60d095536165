"""Thrift twins of the signal messages: the drift check, and exact proto -> Thrift conversion."""

from __future__ import annotations

import json
import math
import random
import textwrap
from pathlib import Path
from typing import Any

import pytest
import thriftpy2
from hypothesis import given, settings
from hypothesis import strategies as st
from thriftpy2.protocol import TBinaryProtocolFactory
from thriftpy2.utils import serialize

from contract.registry import Registry
from contract.snapshot import idl
from contract.v1 import signals_pb2
from gss.snapshot.convert import TIMESTAMP, Transcoder, transcoder, twin_problems
from store import columnar
from tests.snapshot_fixtures import example_value

MESSAGES = sorted(signals_pb2.DESCRIPTOR.message_types_by_name)


def _proto_value(msg: Any, fd: Any) -> Any:
    """A proto field's value in the Thrift domain (the documented mapping)."""
    value = getattr(msg, fd.name)
    if fd.type == fd.TYPE_MESSAGE and fd.message_type.full_name == TIMESTAMP:
        return value.seconds * 1_000_000 + value.nanos // 1000 if msg.HasField(fd.name) else None
    if fd.label == fd.LABEL_REPEATED:
        if fd.type == fd.TYPE_MESSAGE:
            return [_proto_dict(v) for v in value]
        return [_scalar(fd, v) for v in value]
    if fd.type == fd.TYPE_MESSAGE:
        return _proto_dict(value) if msg.HasField(fd.name) else None
    return _scalar(fd, value)


def _scalar(fd: Any, value: Any) -> Any:
    if fd.type in (fd.TYPE_FIXED64, fd.TYPE_UINT64) and value >= 1 << 63:
        return value - (1 << 64)
    return value


def _proto_dict(msg: Any) -> dict[str, Any]:
    return {fd.name: _proto_value(msg, fd) for fd in msg.DESCRIPTOR.fields}


def _thrift_dict(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_thrift_dict(v) for v in obj]
    if hasattr(obj, "thrift_spec"):
        return {spec[1]: _thrift_dict(getattr(obj, spec[1])) for spec in obj.thrift_spec.values()}
    return obj


@pytest.mark.parametrize("message", MESSAGES)
def test_every_proto_message_has_a_thrift_twin(message: str) -> None:
    """Each message in signals.proto has a struct of the same name whose fields match by name,
    id and compatible type (the drift check: a field added on one side only fails here)."""
    desc = signals_pb2.DESCRIPTOR.message_types_by_name[message]
    assert twin_problems(desc, idl.value_struct(desc.full_name)) == []


def test_every_registered_value_type_has_a_snapshot_row_struct(registry: Registry) -> None:
    """Every value type the registry uses has a <Type>SnapshotRow struct for the Parquet rows."""
    for galaxy in registry:
        for spec in galaxy.signals:
            row = idl.row_struct(spec.value_type)
            names = [s[1] for s in row.thrift_spec.values()]
            assert names[-2:] == ["value", "value_thrift"]


def test_twin_check_reports_drift(tmp_path: Path) -> None:
    """A missing field, a narrower type, a renamed field and an extra field are all reported."""
    broken = tmp_path / "broken_thrift.thrift"
    broken.write_text(
        textwrap.dedent("""
        struct WeightedColor {
          1: required i32 red
          2: required i64 green
          4: required double weight
        }
        struct SafetyScore {
          1: required double score
          2: required string name
          3: required string model_version
          4: optional string extra
        }
    """)
    )
    module = thriftpy2.load(str(broken), module_name="broken_thrift")
    color = twin_problems(signals_pb2.WeightedColor.DESCRIPTOR, module.WeightedColor)
    assert any("red" in p and "i64" in p for p in color), color
    assert any("blue" in p and "no Thrift field" in p for p in color), color
    score = twin_problems(signals_pb2.SafetyScore.DESCRIPTOR, module.SafetyScore)
    assert any("label" in p for p in score), score
    assert any("'name'" in p and "no proto twin" in p for p in score), score
    assert any("'extra'" in p for p in score), score


@pytest.mark.parametrize(
    "signal",
    ["embedding", "dominant_colors", "dhash", "near_duplicate_of", "safety_score", "save_count_1h"],
)
def test_round_trip_of_every_example_signal(signal: str) -> None:
    """For values of every example signal: the bytes equal thriftpy2's own binary encoding of
    the twin, decode to the proto's values, and the Arrow columns hold the same values."""
    for n in range(12):
        msg = example_value(signal, n)
        tc = transcoder(type(msg))
        data = tc.encode(msg)
        obj = tc.decode(data)
        assert serialize(obj, TBinaryProtocolFactory()) == data
        assert _thrift_dict(obj) == _proto_dict(msg)
        row = tc.convert(columnar.Batch.of([msg.SerializeToString()])).value.to_pylist()[0]
        assert _arrow_plain(row) == _proto_dict(msg)


def _arrow_plain(value: Any) -> Any:
    """Arrow's Python values with timestamps back as µs since the epoch."""
    if isinstance(value, dict):
        return {k: _arrow_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_arrow_plain(v) for v in value]
    if hasattr(value, "timestamp"):
        return round(value.timestamp() * 1_000_000)
    return value


floats32 = st.floats(width=32, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(floats32, max_size=70),
    hash_=st.integers(0, 2**64 - 1),
    colors=st.lists(st.tuples(st.integers(0, 2**32 - 1), floats32), max_size=6),
    text=st.text(max_size=20),
    count=st.integers(-(2**63), 2**63 - 1),
    start=st.none() | st.integers(-(2**40), 2**45),
)
def test_round_trip_edge_values(
    values: list[float],
    hash_: int,
    colors: list[tuple[int, float]],
    text: str,
    count: int,
    start: int | None,
) -> None:
    """Extremes survive: empty and long lists, 64-bit hashes >= 2^63, uint32 maxima, non-ASCII
    text, negative and unset timestamps, int64 limits."""
    msgs: list[Any] = [
        signals_pb2.Embedding(values=values),
        signals_pb2.DHash(hash=hash_),
        signals_pb2.DominantColors(
            colors=[signals_pb2.WeightedColor(red=r, green=r, blue=0, weight=w) for r, w in colors]
        ),
        signals_pb2.NearDuplicate(
            canonical_entity_id=text, hamming_distance=colors[0][0] if colors else 0
        ),
        signals_pb2.SafetyScore(
            score=values[0] if values else 0.0, label=text, model_version=text[:3]
        ),
    ]
    wc = signals_pb2.WindowedCount(count=count)
    if start is not None:
        wc.window_start.FromMicroseconds(start)
    msgs.append(wc)
    for msg in msgs:
        tc = transcoder(type(msg))
        data = tc.encode(msg)
        assert serialize(tc.decode(data), TBinaryProtocolFactory()) == data
        assert _thrift_dict(tc.decode(data)) == _proto_dict(msg)


def test_unpacked_repeated_floats_are_read_too() -> None:
    """Proto parsers must accept unpacked repeated floats; so does the packed fast path."""
    values = [random.Random(1).random() for _ in range(5)]
    packed = signals_pb2.Embedding(values=values).SerializeToString()
    unpacked = b"".join(b"\x0d" + packed[2 + 4 * i : 6 + 4 * i] for i in range(5))
    msg = signals_pb2.Embedding.FromString(unpacked)
    converted = Transcoder(signals_pb2.Embedding).convert(columnar.Batch.of([unpacked]))
    row = converted.value.to_pylist()[0]
    assert row["values"] == pytest.approx(list(msg.values))
    assert all(math.isfinite(v) for v in row["values"])


def test_footer_descriptor_follows_the_row_struct() -> None:
    """thrift.class names the row struct; thrift.descriptor lists its fields with Thrift ids."""
    tc = transcoder(signals_pb2.DominantColors)
    footer = tc.footer_metadata()
    assert footer[b"thrift.class"] == b"gss.thrift.v1.DominantColorsSnapshotRow"
    descriptor = json.loads(footer[b"thrift.descriptor"])
    assert [c["name"] for c in descriptor["children"]] == [
        "entity_id",
        "event_time",
        "write_time",
        "producer",
        "model_name",
        "model_version",
        "expired",
        "value",
        "value_thrift",
    ]
    value = descriptor["children"][7]
    colors = value["type"]["children"][0]
    assert colors["type"]["id"] == "LIST"
    assert [c["name"] for c in colors["type"]["values"]["type"]["children"]] == [
        "red",
        "green",
        "blue",
        "weight",
    ]


def test_idl_ships_inside_the_package() -> None:
    """The loader finds the IDL in gss.snapshot (a link to thrift/ in the repo, a file in a wheel)."""
    path = idl.idl_path()
    assert path.name == "gss_signals.thrift"
    assert "struct DHash" in path.read_text()
