"""Triton benchmark: model inferences through the plugin path vs the model's raw numpy.

1. Baseline: the served image_embedding code (compute/models/image_embedding/1/model.py)
   called in-process on batches of 32, no server: inferences/s.
2. A local Triton over compute/models (nvidia-pytriton's tritonserver, CPU) and a
   ModelClient (over HTTP, tritonclient.http) with ``max_batch_size`` 1, 8 and 32. Closed
   loop, the way model plugins call it: ``2 x batch size`` (at least 2) asyncio tasks each
   awaiting ``client.submit(model, image)`` one record at a time, for
   ``GSS_BENCH_TRITON_SECONDS`` (default 4) after a warm-up. Reported: inferences/s, p99
   per-record latency, and the mean batch Triton actually executed (its own statistics).

Returns the ``triton`` section of bench/report.json.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from compute.triton import EXAMPLE_MODEL_REPOSITORY
from compute.triton.client import ModelClient
from gss.local.triton import LocalTriton

MODEL = "image_embedding"
BATCH_SIZES = (1, 8, 32)
MAX_CALLS = 500_000


def _served_model(repository: Path) -> Any:
    spec = importlib.util.spec_from_file_location(
        "bench_image_embedding", repository / MODEL / "1" / "model.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def raw_numpy_rate(repository: Path, images: npt.NDArray[np.uint8], seconds: float) -> float:
    """Inferences/s of the model's own numpy code on batches of 32, in-process."""
    model = _served_model(repository)
    projection = model.projection_matrix()
    batch = images[:32]
    model.embed(batch, projection)
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.embed(batch, projection)
        done += len(batch)
    return done / (time.perf_counter() - start)


async def _closed_loop(
    client: ModelClient, images: npt.NDArray[np.uint8], concurrency: int, seconds: float
) -> tuple[int, list[float], float]:
    latencies: list[float] = []
    calls = 0
    stop_at = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal calls
        i = offset
        while time.perf_counter() < stop_at and calls < MAX_CALLS:
            started = time.perf_counter()
            await asyncio.wrap_future(client.submit(MODEL, images[i % len(images)]))
            latencies.append(time.perf_counter() - started)
            calls += 1
            i += concurrency

    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return calls, latencies, time.perf_counter() - start


def client_path(
    url: str, images: npt.NDArray[np.uint8], batch_size: int, seconds: float
) -> dict[str, float | int]:
    concurrency = max(2, 2 * batch_size)
    with ModelClient(url, max_batch_size=batch_size, max_wait_seconds=0.002) as client:
        asyncio.run(_closed_loop(client, images, concurrency, min(1.0, seconds)))  # warm-up
        before = client.transport.model_statistics(MODEL)
        calls, latencies, elapsed = asyncio.run(_closed_loop(client, images, concurrency, seconds))
        after = client.transport.model_statistics(MODEL)
    executions = max(1, after.execution_count - before.execution_count)
    return {
        "inferences_per_s": round(calls / elapsed, 1),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 2),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 2),
        "concurrency": concurrency,
        "triton_mean_executed_batch": round(
            (after.inference_count - before.inference_count) / executions, 2
        ),
    }


def run(report_dir: Path) -> dict[str, Any]:
    seconds = float(os.environ.get("GSS_BENCH_TRITON_SECONDS", "4"))
    repository = EXAMPLE_MODEL_REPOSITORY
    images = np.random.default_rng(0).integers(0, 256, size=(256, 32, 32, 3), dtype=np.uint8)
    raw = raw_numpy_rate(repository, images, seconds)
    result: dict[str, Any] = {
        "model": MODEL,
        "device": "cpu",
        "raw_numpy_inferences_per_s": round(raw, 1),
    }
    with LocalTriton(repository) as triton:
        for batch_size in BATCH_SIZES:
            figures = client_path(triton.http_url, images, batch_size, seconds)
            figures["ratio_to_raw_numpy"] = round(float(figures["inferences_per_s"]) / raw, 4)
            result[f"batch_{batch_size}"] = figures
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run(Path(__file__).resolve().parent), indent=2))
