"""Pretrained-model benchmark: images/s and p99 through Triton against onnxruntime in-process.

1. Per model (efficientnet_lite0, open_nsfw, ocr_text) and batch size (1, 8, 32), on the same
   prepared inputs (photos bundled in scikit-image, and rendered text for OCR):
   - raw: the model's .onnx run by onnxruntime in this process, one ``session.run`` per batch
     (for ocr_text: the served pipeline's numpy stages with ocr_det/ocr_rec run in-process,
     the batch's images one after the other);
   - Triton: a local Triton over compute/models (nvidia-pytriton's server: the Python backend
     running the same .onnx with onnxruntime) through ModelClient, one request per batch
     (ocr_text takes one image a request: the batch's images are sent concurrently).
   Closed loop for ``GSS_BENCH_MODELS_SECONDS`` (default 3) per point after a warm-up;
   reported: images/s, p99 and p50 ms per batch, and Triton / raw.
2. The whole Flink job with the real models: a local broker, the local Triton and a Flink
   MiniCluster job running images/embedding@2, safety_score@2 and ocr_text@1 over
   ``GSS_BENCH_MODELS_IMAGES`` (default 300) photo events (ContentGenerator "photos");
   images/s from the first value on the changelog to the last image's third value.

On a GPU machine the Triton figures need NVIDIA's Triton image (configs/gpu.pbtxt); this
benchmark always runs the local CPU server and says so in ``device``.

Returns the ``models`` section of bench/report.json.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from compute.triton import EXAMPLE_MODEL_REPOSITORY
from compute.triton.client import ModelClient
from compute.triton.inputs import efficientnet_input, ocr_input, open_nsfw_input
from gss.local.generator import PHOTOS, ContentGenerator, load_photo, render_text
from gss.local.triton import LocalTriton

BATCH_SIZES = (1, 8, 32)
MODELS = ("efficientnet_lite0", "open_nsfw", "ocr_text")
Images = list[npt.NDArray[np.uint8]]


def _tests_support() -> Any:
    # The in-process OCR pipeline lives with the tests (it loads the served model.py).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests import pretrained_support

    return pretrained_support


def _timed(call: Callable[[], object], seconds: float, images_per_call: int) -> dict[str, float]:
    call()  # warm-up
    latencies: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(latencies) < 3:
        began = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - began)
    elapsed = time.perf_counter() - start
    return {
        "images_per_s": round(len(latencies) * images_per_call / elapsed, 2),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 2),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 2),
    }


def _inputs(count: int) -> dict[str, Images]:
    photos = [load_photo(PHOTOS[i % len(PHOTOS)]) for i in range(count)]
    words = ["Fresh coffee today", "Order 4821 ships Monday", "Galaxy signals", "hello world"]
    texts = [
        render_text([words[i % len(words)], words[(i + 1) % len(words)]]) for i in range(count)
    ]
    return {
        "efficientnet_lite0": [efficientnet_input(p) for p in photos],
        "open_nsfw": [open_nsfw_input(p) for p in photos],
        # Photos and text alternating, so every batch size sees the same mix: the pipeline's
        # cost depends on how much text it finds.
        "ocr_text": [ocr_input(photos[i] if i % 2 else texts[i]) for i in range(count)],
    }


def _raw_call(model: str, batch: Images) -> Callable[[], object]:
    support = _tests_support()
    if model == "ocr_text":
        return lambda: [support.read_text_directly(image) for image in batch]
    stacked = np.stack(batch)
    return lambda: support.run(model, PIXELS=stacked)


def _triton_call(
    client: ModelClient, pool: ThreadPoolExecutor, model: str, batch: Images
) -> Callable[[], object]:
    if model == "ocr_text":
        return lambda: list(pool.map(lambda image: client.infer(model, image), batch))
    return lambda: client.infer_batch(model, batch)


def model_points(url: str, seconds: float) -> dict[str, Any]:
    inputs = _inputs(max(BATCH_SIZES))
    result: dict[str, Any] = {}
    for model in MODELS:
        figures: dict[str, Any] = {}
        for size in BATCH_SIZES:
            batch = inputs[model][:size]
            raw = _timed(_raw_call(model, batch), seconds, size)
            with (
                ModelClient(url, max_batch_size=size, max_wait_seconds=0.0) as client,
                ThreadPoolExecutor(max_workers=size) as pool,
            ):
                served = _timed(_triton_call(client, pool, model, batch), seconds, size)
            figures[f"batch_{size}"] = {
                "onnxruntime_in_process": raw,
                "triton": served,
                "ratio_triton_to_onnxruntime": round(
                    served["images_per_s"] / raw["images_per_s"], 3
                ),
            }
        result[model] = figures
    return result


def flink_job_rate(triton_url: str, image_count: int) -> dict[str, Any]:
    from confluent_kafka import Producer

    from bench.compute import ChangelogCounter, _produce
    from compute.binding import bind
    from compute.examples.images.embedding import embedding_v2
    from compute.examples.images.ocr_text import ocr_text
    from compute.examples.images.safety_score import safety_score_v2
    from compute.flink import gateway
    from compute.flink.run import ComputeJob, ensure_topics
    from contract import logs
    from contract.kafka import producer_config
    from contract.registry import load_registry
    from contract.settings import load_settings
    from gss.local.broker import LocalBroker

    logs.configure("WARNING", "json")
    plugins: Sequence[Any] = [embedding_v2, safety_score_v2, ocr_text]
    with tempfile.TemporaryDirectory(prefix="gss-bench-models-") as tmp, LocalBroker() as broker:
        work = Path(tmp)
        settings = load_settings(
            kafka={"bootstrap_servers": broker.bootstrap_servers},
            triton={"url": triton_url},
            compute={
                "job_name": "gss-bench-models",
                "metrics_port": 0,
                "checkpoint_dir": (work / "checkpoints").as_uri(),
            },
        )
        registry = load_registry(settings.registry_path)
        generator = ContentGenerator(seed=17, images="photos")
        items = []
        for _ in range(image_count):
            _, key, image = generator.next_image(datetime.now(UTC))
            items.append(("content.images", key, image.SerializeToString()))
        ensure_topics(settings, bind(list(plugins), registry, settings), registry)
        job = ComputeJob(settings, list(plugins), registry=registry)
        kafka = settings.kafka
        counter = ChangelogCounter(
            broker.bootstrap_servers,
            {kafka.topic(kafka.changelog_topic, g.name): g.partitions for g in registry},
        )
        try:
            job.start()
            producer = Producer(
                producer_config(settings.kafka, "gss-bench-models", delivery_timeout_seconds=30.0)
            )
            _produce(producer, items)
            producer.flush(30)
            names = ("embedding", "safety_score", "ocr_text")
            for name in names:
                counter.wait(name, image_count, timeout=1200)
            first = min(counter.first[n] for n in names)
            last = max(counter.last[n] for n in names)
        finally:
            counter.close()
            job.stop()
            gateway.shutdown()
    return {
        "images_per_s": round(image_count / max(last - first, 1e-6), 2),
        "images": image_count,
        "plugins": ["images/embedding@2", "images/safety_score@2", "images/ocr_text@1"],
        "parallelism": 1,
    }


def run(report_dir: Path) -> dict[str, Any]:
    seconds = float(os.environ.get("GSS_BENCH_MODELS_SECONDS", "3"))
    image_count = int(os.environ.get("GSS_BENCH_MODELS_IMAGES", "300"))
    gpu = shutil.which("nvidia-smi") is not None
    result: dict[str, Any] = {
        "device": "cpu"
        + (
            " (a GPU is present, but the local Triton has only the Python backend: "
            "serve configs/gpu.pbtxt from NVIDIA's Triton image to use it)"
            if gpu
            else " (no GPU on this machine)"
        ),
        "cpus": os.cpu_count(),
    }
    with LocalTriton(EXAMPLE_MODEL_REPOSITORY) as triton:
        result.update(model_points(triton.http_url, seconds))
        result["flink_job"] = flink_job_rate(triton.http_url, image_count)
    # One image through all three models in this process, one after the other (batches of 8).
    in_process = 1.0 / sum(
        1.0 / result[m]["batch_8"]["onnxruntime_in_process"]["images_per_s"] for m in MODELS
    )
    result["flink_job"]["onnxruntime_in_process_all_three_images_per_s"] = round(in_process, 2)
    result["flink_job"]["ratio_to_in_process"] = round(
        result["flink_job"]["images_per_s"] / in_process, 3
    )
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run(Path(__file__).resolve().parent), indent=2))
