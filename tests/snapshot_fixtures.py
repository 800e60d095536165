"""Builders for the snapshot-export tests: example values of every registered signal, written
through the real write path (gss.writes.to_writes + SignalStore.apply)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from google.protobuf.message import Message

from clients.lookup import make_record
from contract.registry import Registry
from contract.settings import ExportSettings
from contract.v1 import envelope_pb2, signals_pb2
from gss.writes import to_writes
from store.db import SignalStore

BASE_TIME = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def image_id(n: int) -> str:
    return n.to_bytes(16, "big").hex()


def example_value(signal: str, n: int, rnd: random.Random | None = None) -> Message:
    """A plausible value of each example signal; ``n`` varies it deterministically."""
    rnd = rnd or random.Random(n)
    if signal == "embedding":
        return signals_pb2.Embedding(values=[rnd.uniform(-1, 1) for _ in range(64)])
    if signal == "dominant_colors":
        return signals_pb2.DominantColors(
            colors=[
                signals_pb2.WeightedColor(
                    red=rnd.randrange(256),
                    green=rnd.randrange(256),
                    blue=rnd.randrange(256),
                    weight=rnd.random(),
                )
                for _ in range(n % 6)
            ]
        )
    if signal == "dhash":
        return signals_pb2.DHash(hash=rnd.getrandbits(64))  # half of them >= 2^63
    if signal == "near_duplicate_of":
        return signals_pb2.NearDuplicate(
            canonical_entity_id=image_id(n + 1_000_000), hamming_distance=rnd.randrange(7)
        )
    if signal == "safety_score":
        return signals_pb2.SafetyScore(
            score=rnd.random(), label="ünsafe-" + str(n % 3), model_version=f"v{n % 4}"
        )
    if signal in ("save_count_1h", "save_count_last_hour"):
        value = signals_pb2.WindowedCount(count=rnd.randrange(10_000))
        if n % 5:  # some without a window, to prove unset Timestamps stay unset
            start = BASE_TIME + timedelta(hours=n % 24)
            value.window_start.FromDatetime(start)
            value.window_end.FromDatetime(start + timedelta(hours=1))
        return value
    if signal == "ocr_text":
        return signals_pb2.OcrText(
            lines=[
                signals_pb2.TextLine(
                    text=f"line {i} of {n} ✓",
                    x0=rnd.randrange(100),
                    y0=40 * i,
                    x1=100 + rnd.randrange(100),
                    y1=40 * i + 30,
                    confidence=rnd.random(),
                )
                for i in range(n % 3)
            ]
        )
    raise KeyError(signal)


def example_records(
    registry: Registry,
    galaxy: str,
    count: int,
    *,
    first: int = 0,
    event_time: datetime | None = None,
    signals: list[str] | None = None,
) -> list[envelope_pb2.SignalRecord]:
    """``count`` entities of ``galaxy`` with a value of every (or each listed) signal."""
    spec = registry.galaxy(galaxy)
    # Listed names: their default versions; otherwise every registered version.
    versions = (
        [(name, spec.signal(name).version) for name in signals]
        if signals
        else [(s.name, s.version) for s in spec.signals]
    )
    records = []
    for n in range(first, first + count):
        entity: Any = image_id(n) if spec.key.type == "bytes" else n
        for name, version in versions:
            records.append(
                make_record(
                    galaxy,
                    entity,
                    f"{name}@{version}",
                    example_value(name, n),
                    event_time=event_time or BASE_TIME + timedelta(microseconds=n),
                    producer="test",
                    model_name=f"model-{name}",
                    model_version=str(n % 3),
                )
            )
    return records


def write(registry: Registry, store: SignalStore, records: list[envelope_pb2.SignalRecord]) -> None:
    """Apply through the one write path, in batches."""
    for i in range(0, len(records), 2000):
        store.apply(to_writes(registry, records[i : i + 2000]))


def export_settings(root: Path, **overrides: Any) -> ExportSettings:
    return ExportSettings(root=root, **overrides)


def store_content(store: SignalStore, registry: Registry) -> dict[tuple[str, str, str], bytes]:
    """(galaxy, entity text, signal@version) -> stored record, read straight from the store."""
    from contract.keys import split_store_key

    found = {}
    for galaxy in registry:
        for key, stored in store.scan(galaxy.name):
            entity, name, version = split_store_key(key, galaxy.codec.length)
            found[(galaxy.name, galaxy.codec.to_text(entity), f"{name}@{version}")] = stored
    return found


def read_partition(path: Path) -> pa.Table:
    """Every part file of a partition directory as one table (sorted by entity)."""
    tables = [pq.read_table(p) for p in sorted(path.glob("part-*.parquet"))]
    return pa.concat_tables(tables).sort_by("entity_id")
