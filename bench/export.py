"""Snapshot export benchmark: ``gss export`` rows/s vs a raw RocksDB scan of the same records.

1. Load ``GSS_BENCH_EXPORT_RECORDS`` (default 1,000,000) values through the write path
   (``gss.writes.to_writes`` + ``SignalStore.apply``): the example signals' mix, 3/4 of the
   rows images (embedding with 64 floats, dominant colours, dhash, near-duplicate, safety
   score: one of each per image) and 1/4 pins (windowed counts).
2. Baseline: a raw scan of every key and value of both galaxies (rocksdict iterator, in-process).
3. The export of that store, as ``gss export`` runs it in-process against a live store
   (checkpoint, two converters: this process and one worker process, Parquet + manifests +
   fsync + publish), timed end to end; best of two runs, like the scan.

What bounds it: CPU, about 2.2 µs per row in one process (it was 6-8 µs when every row was
parsed twice by protobuf and encoded in Python). Rows are converted a batch at a time,
column by column (store/columnar.py, convert.py): per row, about a quarter goes to
Parquet encoding and Snappy (mostly the 64-double embeddings, written twice), a fifth to
decoding the stored envelopes, a sixth to the values' Thrift and Arrow columns, a sixth to
the RocksDB scan, which the raw scan does alone at about 0.35 µs. The two processes split the
work about evenly; worker start-up (~0.35 s of CPU) and the serial ends of the export keep the
two cores about 80% busy over 1M rows. The ratio drops when other work takes CPU
(``rows_per_cpu_s`` and ``load_average_1m`` are reported so runs can be compared);
docs/export.md "Performance" has the figures.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from contract.registry import DEFAULT_REGISTRY_PATH, Registry, load_registry
from contract.settings import ExportSettings
from contract.v1 import envelope_pb2, signals_pb2
from gss.snapshot import export_snapshot
from gss.writes import to_writes
from store.db import SignalStore

IMAGE_SIGNALS = ("embedding", "dominant_colors", "dhash", "near_duplicate_of", "safety_score")


def _value(signal: str, n: int, rng: random.Random) -> Message:
    if signal == "embedding":
        return signals_pb2.Embedding(values=[rng.uniform(-1, 1) for _ in range(64)])
    if signal == "dominant_colors":
        return signals_pb2.DominantColors(
            colors=[
                signals_pb2.WeightedColor(
                    red=rng.randrange(256),
                    green=rng.randrange(256),
                    blue=rng.randrange(256),
                    weight=rng.random(),
                )
                for _ in range(5)
            ]
        )
    if signal == "dhash":
        return signals_pb2.DHash(hash=rng.getrandbits(64))
    if signal == "near_duplicate_of":
        return signals_pb2.NearDuplicate(
            canonical_entity_id=f"{n + 1:032x}", hamming_distance=rng.randrange(7)
        )
    if signal == "safety_score":
        return signals_pb2.SafetyScore(score=rng.random(), label="unsafe", model_version="3")
    value = signals_pb2.WindowedCount(count=rng.randrange(1000))
    value.window_start.FromSeconds(1_700_000_000)
    value.window_end.FromSeconds(1_700_003_600)
    return value


def _record(
    galaxy: str, entity: str, signal: str, value: Message, n: int
) -> envelope_pb2.SignalRecord:
    record = envelope_pb2.SignalRecord(galaxy=galaxy, entity_id=entity)
    record.signal.name, record.signal.version = signal, 1
    record.value.Pack(value)
    record.envelope.event_time.FromMicroseconds(1_700_000_000_000_000 + n)
    record.envelope.producer = "flink:gss-compute"
    record.envelope.model_name = "bench-model"
    record.envelope.model_version = "1"
    return record


def load(registry: Registry, store: SignalStore, count: int) -> int:
    """Write about ``count`` values of the mix; returns how many."""
    rng = random.Random(5)
    images = count * 3 // 4 // len(IMAGE_SIGNALS)
    pins = count - images * len(IMAGE_SIGNALS)
    batch: list[envelope_pb2.SignalRecord] = []

    def flush() -> None:
        store.apply(to_writes(registry, batch))
        batch.clear()

    for n in range(images):
        entity = f"{n:032x}"
        for signal in IMAGE_SIGNALS:
            batch.append(_record("images", entity, signal, _value(signal, n, rng), n))
        if len(batch) >= 5000:
            flush()
    for n in range(pins):
        batch.append(_record("pins", str(n), "save_count_1h", _value("save_count_1h", n, rng), n))
        if len(batch) >= 5000:
            flush()
    if batch:
        flush()
    return images * len(IMAGE_SIGNALS) + pins


def _cpu_seconds() -> float:
    """CPU seconds used by this process and its finished children so far."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def raw_scan(store: SignalStore, galaxies: list[str]) -> tuple[int, float]:
    """Rows and seconds of reading every key and value with a plain rocksdict iterator."""
    from rocksdict import Rdict, ReadOptions

    db: Rdict = store._db  # the baseline reads RocksDB directly, below the store's API
    rows = 0
    start = time.perf_counter()
    for galaxy in galaxies:
        it = db.get_column_family(galaxy).iter(ReadOptions())
        it.seek_to_first()
        while it.valid():
            it.key()
            it.value()
            rows += 1
            it.next()
    return rows, time.perf_counter() - start


def run(report_dir: Path) -> dict[str, Any]:
    count = int(os.environ.get("GSS_BENCH_EXPORT_RECORDS", "1000000"))
    registry = load_registry(DEFAULT_REGISTRY_PATH)
    galaxies = list(registry.galaxies)
    work = Path(tempfile.mkdtemp(prefix="gss-bench-export-"))
    try:
        store = SignalStore(work / "store", galaxies, sync_writes=False)
        try:
            started = time.perf_counter()
            loaded = load(registry, store, count)
            load_seconds = time.perf_counter() - started
            store.flush()
            scan_rows, scan_seconds = raw_scan(store, galaxies)
            scan_rows, scan_seconds = min(
                (scan_rows, scan_seconds), raw_scan(store, galaxies), key=lambda r: r[1]
            )
            settings = ExportSettings(root=work / "snapshots", workers=2)
            # Best of two runs (the second re-exports the date, replacing its partitions), as
            # for the scan: the machine is shared, and the better run is closer to its capacity.
            runs = []
            for _ in range(2):
                load_average = os.getloadavg()[0]
                cpu_before = _cpu_seconds()
                started = time.perf_counter()
                result = export_snapshot(
                    registry, settings, store=store, dt=datetime.now(UTC).date(), progress=False
                )
                runs.append(
                    (time.perf_counter() - started, _cpu_seconds() - cpu_before, load_average)
                )
            export_seconds, export_cpu, load_average = min(runs)
        finally:
            store.close()
        snapshot_bytes = sum(p.stat().st_size for p in (work / "snapshots").rglob("*.parquet"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert result.rows == loaded == scan_rows, (result.rows, loaded, scan_rows)
    rows_per_s = result.rows / export_seconds
    raw_per_s = scan_rows / scan_seconds
    return {
        "rows": result.rows,
        "rows_per_s": round(rows_per_s),
        "raw_scan_rows_per_s": round(raw_per_s),
        "ratio": round(rows_per_s / raw_per_s, 3),
        "export_seconds": round(export_seconds, 2),
        "workers": 2,
        "parquet_bytes": snapshot_bytes,
        "load_records_per_s": round(loaded / load_seconds),
        # CPU time of the exporting process and its workers: the figure that does not depend
        # on what else the machine runs (the load average when the export started is below).
        "export_cpu_seconds": round(export_cpu, 2),
        "rows_per_cpu_s": round(result.rows / export_cpu),
        "load_average_1m": round(load_average, 2),
        "mix": "3/4 images (embedding[64], dominant_colors[5], dhash, near_duplicate_of, safety_score), 1/4 pins",
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(Path(__file__).resolve().parent), indent=2))
