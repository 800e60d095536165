"""Lookup benchmark: raw rocksdict multi-get vs GetSignals over gRPC from another process.

1. Load ``GSS_BENCH_RECORDS`` (default 1,000,000) values of ~200 bytes through the store's
   write path into RocksDB.
2. Baseline: multi-get of 100 random keys in a loop, in-process, no gRPC.
3. A ``gss serve`` process over that store; separate ``bench.loadgen`` processes
   (``GSS_BENCH_CLIENTS``, default 1) drive it over 8 connections: closed loop at 64 calls
   in flight for peak keys/s, then open loop at half that rate for latency. Both for 100-key
   and 1-key calls; with ``server.processes`` 1 and ``GSS_BENCH_PROCESSES`` (default 2,
   keys ``..._processes_N``). Then the resident memory of the server's processes, summed,
   with the memory settings used (``memory_settings``), and again with a 64 MiB block cache.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from contract import processes
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


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` plus every process below it (its reader processes)."""
    return processes.rss_bytes([pid, *processes.descendants(pid)])


def clients(
    target: str, count: int, keys: int, seconds: float, n: int, *, rate: float = 0.0
) -> dict[str, float]:
    """``n`` load-generator processes at once (64 calls in flight and 8 connections in all),
    summed; latency percentiles are the worst client's."""
    extra = ("--concurrency", str(64 // n), "--channels", str(max(1, 8 // n)))
    with ThreadPoolExecutor(n) as pool:
        results = list(
            pool.map(
                lambda i: loadgen(
                    target, count, keys, seconds, rate=rate / n, extra=(*extra, "--seed", str(i))
                ),
                range(n),
            )
        )
    return {
        "calls_per_s": sum(r["calls_per_s"] for r in results),
        "keys_per_s": sum(r["keys_per_s"] for r in results),
        "p50_ms": max(r["p50_ms"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
        "errors": sum(r["errors"] for r in results),
    }


def measure(
    data: Path, count: int, seconds: float, processes: int, n_clients: int, memory: dict[str, str]
) -> dict[str, float]:
    """Peak and half-peak figures for 100-key and 1-key calls against ``gss serve`` with
    ``processes`` serving processes, and its resident memory after them."""
    server, target = serve(data, {"GSS_SERVER__PROCESSES": str(processes), **memory})
    try:
        peak_100 = clients(target, count, 100, seconds, n_clients)
        half_100 = clients(target, count, 100, seconds, n_clients, rate=peak_100["calls_per_s"] / 2)
        peak_1 = clients(target, count, 1, seconds, n_clients)
        half_1 = clients(target, count, 1, seconds, n_clients, rate=peak_1["calls_per_s"] / 2)
        rss = rss_bytes(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {
        "keys_per_s_100": peak_100["keys_per_s"],
        "p50_ms_100": peak_100["p50_ms"],
        "p99_ms_100": peak_100["p99_ms"],
        "p99_ms_100_at_half_peak": half_100["p99_ms"],
        "calls_per_s_1": peak_1["calls_per_s"],
        "p99_ms_1": peak_1["p99_ms"],
        "p99_ms_1_at_half_peak": half_1["p99_ms"],
        "rss_mb": rss / 2**20,
        "errors": peak_100["errors"] + half_100["errors"] + peak_1["errors"] + half_1["errors"],
    }


def run(report_dir: Path) -> dict[str, Any]:
    count = int(os.environ.get("GSS_BENCH_RECORDS", "1000000"))
    seconds = float(os.environ.get("GSS_BENCH_SECONDS", "8"))
    many = int(os.environ.get("GSS_BENCH_PROCESSES", "2"))
    n_clients = int(os.environ.get("GSS_BENCH_CLIENTS", "1"))
    # The memory settings the server runs with (store.*: docs/serving.md), reported as used.
    memory = {
        "GSS_STORE__BLOCK_CACHE_BYTES": os.environ.get("GSS_STORE__BLOCK_CACHE_BYTES", "268435456"),
        "GSS_STORE__WRITE_BUFFER_BYTES": os.environ.get(
            "GSS_STORE__WRITE_BUFFER_BYTES", "67108864"
        ),
        "GSS_STORE__MAX_WRITE_BUFFERS": os.environ.get("GSS_STORE__MAX_WRITE_BUFFERS", "2"),
        "GSS_STORE__MAX_OPEN_FILES": os.environ.get("GSS_STORE__MAX_OPEN_FILES", "-1"),
    }
    data = report_dir / "data" / "lookup"
    shutil.rmtree(data, ignore_errors=True)
    registry = load_registry(REGISTRY)
    with SignalStore(data, list(registry.galaxies), sync_writes=False) as store:
        t0 = time.perf_counter()
        record_bytes = load(store, count)
        load_seconds = time.perf_counter() - t0
        raw = raw_multiget(store, count, 100, seconds)
    try:
        one = measure(data, count, seconds, 1, n_clients, memory)
        multi = measure(data, count, seconds, many, n_clients, memory)
        # The memory bound at work: the same lookups with a small block cache.
        small = {**memory, "GSS_STORE__BLOCK_CACHE_BYTES": str(64 * 2**20)}
        server, target = serve(data, {"GSS_SERVER__PROCESSES": "1", **small})
        try:
            small_peak = clients(target, count, 100, seconds, n_clients)
            small_rss = rss_bytes(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=60)
        # The baseline again after the servers (a shared machine's load drifts): ratios are
        # to the mean of both.
        with SignalStore(data, list(registry.galaxies), sync_writes=False) as store:
            raw_after = raw_multiget(store, count, 100, seconds)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    raw_before, raw = raw, (raw + raw_after) / 2
    result: dict[str, Any] = {
        "records": count,
        "record_bytes": round(record_bytes, 1),
        "load_records_per_s": round(count / load_seconds),
        "raw_multiget_keys_per_s": round(raw),
        "raw_multiget_keys_per_s_before": round(raw_before),
        "raw_multiget_keys_per_s_after": round(raw_after),
        "concurrency": 64,
        "load_clients": n_clients,
        "connections": 8,
        "processes_many": many,
        "memory_settings": {
            k.removeprefix("GSS_STORE__").lower(): int(v) for k, v in memory.items()
        },
        "cpus": os.cpu_count(),
    }
    result["server_rss_mb_1m_records_block_cache_64mb"] = round(small_rss / 2**20, 1)
    result["gss_keys_per_s_100_block_cache_64mb"] = round(small_peak["keys_per_s"])
    for count, figures in ((1, one), (many, multi)):
        tag = "" if count == 1 else f"_processes_{count}"
        result |= {
            f"gss_keys_per_s_100{tag}": round(figures["keys_per_s_100"]),
            f"gss_p50_ms_100{tag}": round(figures["p50_ms_100"], 2),
            f"gss_p99_ms_100{tag}": round(figures["p99_ms_100"], 2),
            f"gss_p99_ms_100_at_half_peak{tag}": round(figures["p99_ms_100_at_half_peak"], 2),
            f"gss_calls_per_s_1{tag}": round(figures["calls_per_s_1"]),
            f"gss_keys_per_s_1{tag}": round(figures["calls_per_s_1"]),
            f"gss_p99_ms_1{tag}": round(figures["p99_ms_1"], 2),
            f"gss_p99_ms_1_at_half_peak{tag}": round(figures["p99_ms_1_at_half_peak"], 2),
            f"ratio_100{tag}": round(figures["keys_per_s_100"] / raw, 3),
            f"server_rss_mb_1m_records{tag}": round(figures["rss_mb"], 1),
            f"errors{tag}": figures["errors"],
        }
    return result
