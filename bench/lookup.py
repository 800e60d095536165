"""Lookup benchmark: raw rocksdict multi-get vs GetSignals over gRPC from another process.

1. Load ``GSS_BENCH_RECORDS`` (default 1,000,000) values of ~200 bytes through the store's
   write path into RocksDB.
2. Baseline: multi-get of 100 random keys in a loop, in-process, no gRPC.
3. A ``gss serve`` process over that store; a separate ``bench.loadgen`` process drives it:
   closed loop at 64 calls in flight for peak keys/s, then open loop at half that rate for
   latency. Both for 100-key and 1-key calls.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from contract.keys import store_key
from contract.registry import load_registry
from contract.v1 import envelope_pb2, signals_pb2
from store import records
from store.db import SignalStore, Write

REGISTRY = Path(__file__).with_name("registry.yaml")
ROOT = Path(__file__).resolve().parent.parent


def load(store: SignalStore, count: int) -> float:
    """Write ``count`` values; returns the mean stored record size in bytes."""
    rng = random.Random(7)
    envelope = envelope_pb2.Envelope(producer="bench", model_name="bench-model", model_version="1")
    envelope.event_time.FromSeconds(1_700_000_000)
    envelope.write_time.FromSeconds(1_700_000_001)
    total = 0
    batch: list[Write] = []
    for entity in range(count):
        value = signals_pb2.Embedding(values=[rng.random() for _ in range(32)])
        envelope.source.offset = entity
        stored = records.encode(1, _pack(value), envelope)
        total += len(stored)
        batch.append(Write("pins", store_key(entity.to_bytes(8, "big"), "bench_value", 1), stored))
        if len(batch) == 20_000:
            store.apply(batch)
            batch = []
    if batch:
        store.apply(batch)
    return total / count


def _pack(value: signals_pb2.Embedding) -> Any:
    from google.protobuf import any_pb2

    packed = any_pb2.Any()
    packed.Pack(value)
    return packed


def raw_multiget(store: SignalStore, count: int, keys: int, seconds: float) -> float:
    rng = random.Random(3)
    batches = [
        [store_key(rng.randrange(count).to_bytes(8, "big"), "bench_value", 1) for _ in range(keys)]
        for _ in range(500)
    ]
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        values = store.get_many("pins", batches[done % len(batches)])
        assert values[0] is not None
        done += 1
    return done * keys / elapsed


def loadgen(
    target: str,
    count: int,
    keys: int,
    seconds: float,
    *,
    rate: float = 0.0,
    extra: tuple[str, ...] = (),
) -> dict[str, float]:
    cmd = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--target",
        target,
        "--entities",
        str(count),
        "--keys",
        str(keys),
        "--seconds",
        str(seconds),
    ]
    if rate:
        cmd += ["--rate", f"{rate:.1f}"]
    cmd += extra
    out = subprocess.run(
        cmd, check=True, capture_output=True, text=True, cwd=ROOT, timeout=seconds + 120
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def serve(data: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """A ``gss serve`` process over the store at ``data`` (settings ``env`` added); returns
    the process and its address. The caller terminates it."""
    server = subprocess.Popen(
        [sys.executable, "-m", "gss", "serve", "--port", "0", "--data", str(data)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={
            **os.environ,
            "GSS_REGISTRY_PATH": str(REGISTRY),
            "GSS_LOG_LEVEL": "WARNING",
            "GSS_SERVER__METRICS_PORT": "-1",
            **(env or {}),
        },
        cwd=ROOT,
    )
    assert server.stderr is not None
    target = None
    deadline = time.monotonic() + 60
    while target is None and time.monotonic() < deadline:
        line = server.stderr.readline()
        if match := re.search(r"GSS serving on (\S+)", line):
            target = match[1]
        elif not line and server.poll() is not None:
            raise RuntimeError("gss serve exited before serving")
    if target is None:
        server.kill()
        raise RuntimeError("gss serve did not report its address")
    # Keep the pipe drained so the server never blocks on a full stderr.
    threading.Thread(target=server.stderr.read, daemon=True).start()
    return server, target


def run(report_dir: Path) -> dict[str, Any]:
    count = int(os.environ.get("GSS_BENCH_RECORDS", "1000000"))
    seconds = float(os.environ.get("GSS_BENCH_SECONDS", "8"))
    data = report_dir / "data" / "lookup"
    shutil.rmtree(data, ignore_errors=True)
    registry = load_registry(REGISTRY)
    with SignalStore(data, list(registry.galaxies), sync_writes=False) as store:
        t0 = time.perf_counter()
        record_bytes = load(store, count)
        load_seconds = time.perf_counter() - t0
        raw = raw_multiget(store, count, 100, seconds)
    server, target = serve(data)
    try:
        peak_100 = loadgen(target, count, 100, seconds)
        half_100 = loadgen(target, count, 100, seconds, rate=peak_100["calls_per_s"] / 2)
        peak_1 = loadgen(target, count, 1, seconds)
        half_1 = loadgen(target, count, 1, seconds, rate=peak_1["calls_per_s"] / 2)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)
    return {
        "records": count,
        "record_bytes": round(record_bytes, 1),
        "load_records_per_s": round(count / load_seconds),
        "raw_multiget_keys_per_s": round(raw),
        "gss_keys_per_s_100": round(peak_100["keys_per_s"]),
        "gss_p50_ms_100": round(peak_100["p50_ms"], 2),
        "gss_p99_ms_100": round(peak_100["p99_ms"], 2),
        "gss_p99_ms_100_at_half_peak": round(half_100["p99_ms"], 2),
        "gss_keys_per_s_1": round(peak_1["keys_per_s"]),
        "gss_p99_ms_1": round(peak_1["p99_ms"], 2),
        "gss_p99_ms_1_at_half_peak": round(half_1["p99_ms"], 2),
        "ratio_100": round(peak_100["keys_per_s"] / raw, 3),
        "concurrency": 64,
    }
