"""The shipped models on the real Triton server (nvidia-pytriton's tritonserver), via ModelClient."""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY

from compute.triton import EXAMPLE_MODEL_REPOSITORY
from compute.triton.client import (
    ModelClient,
    ModelInputError,
    ModelNotFoundError,
    TensorSpec,
)
from compute.triton.inputs import image_tensor
from gss.cli import main
from gss.local.triton import LocalTriton
from tests.triton_reference import (
    load_safety_weights,
    reference_embedding,
    reference_safety_score,
    sample_images,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def triton() -> Iterator[LocalTriton]:
    """One local Triton over compute/models for the module (it takes seconds to start)."""
    with LocalTriton(EXAMPLE_MODEL_REPOSITORY) as server:
        yield server


@pytest.fixture(scope="module")
def client(triton: LocalTriton) -> Iterator[ModelClient]:
    with ModelClient(triton.http_url, max_batch_size=32, max_wait_seconds=0.01) as model_client:
        yield model_client


def test_embedding_equals_reference(client: ModelClient) -> None:
    """Triton's image_embedding equals the documented numpy definition, L2-normalised, 64 dims."""
    images = sample_images(12, seed=11)
    results = client.infer_batch("image_embedding", list(images))
    for image, result in zip(images, results, strict=True):
        assert result["EMBEDDING"].shape == (64,)
        np.testing.assert_allclose(result["EMBEDDING"], reference_embedding(image), atol=1e-6)
        assert float(np.linalg.norm(result["EMBEDDING"])) == pytest.approx(1.0, abs=1e-6)
        assert (result.model_name, result.model_version) == ("image_embedding", "1")


def test_safety_score_equals_reference(client: ModelClient) -> None:
    """Triton's safety_classifier equals the reference features and the shipped weights."""
    images = sample_images(12, seed=12)
    weights = load_safety_weights()
    results = client.infer_batch("safety_classifier", list(images))
    for image, result in zip(images, results, strict=True):
        assert result["SCORE"].shape == (1,)
        assert float(result["SCORE"][0]) == pytest.approx(
            reference_safety_score(image, weights), abs=1e-6
        )
    assert client.model_version("safety_classifier") == "1"


def test_per_record_calls_equal_batch_calls(client: ModelClient) -> None:
    """infer() per record (micro-batched) gives exactly what infer_batch gives."""
    images = [image_tensor(img) for img in sample_images(8, seed=13)]
    batched = client.infer_batch("image_embedding", images)
    with ThreadPoolExecutor(max_workers=8) as pool:
        single = list(pool.map(lambda img: client.infer("image_embedding", img), images))
    for a, b in zip(batched, single, strict=True):
        np.testing.assert_allclose(a["EMBEDDING"], b["EMBEDDING"], atol=1e-6)


def test_concurrent_calls_are_batched_by_triton(client: ModelClient) -> None:
    """Under concurrent load Triton's own statistics show executions of more than one item."""
    before = client.transport.model_statistics("safety_classifier")
    batches_before = (
        REGISTRY.get_sample_value("gss_model_batch_size_count", {"model_name": "safety_classifier"})
        or 0.0
    )
    images = list(sample_images(32, seed=14))
    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = [
            pool.submit(client.infer, "safety_classifier", images[i % 32]) for i in range(256)
        ]
        for future in futures:
            future.result(timeout=60)
    # Triton counts a request once it has released it, which can be just after the client
    # has its answer: read until the counts settle (at most ~5 s).
    for _ in range(50):
        after = client.transport.model_statistics("safety_classifier")
        inferences = after.inference_count - before.inference_count
        if inferences >= 256:
            break
        time.sleep(0.1)
    executions = after.execution_count - before.execution_count
    assert inferences == 256
    assert executions < inferences
    assert any(stat.batch_size > 1 for stat in after.batch_stats)
    requests = (
        REGISTRY.get_sample_value("gss_model_batch_size_count", {"model_name": "safety_classifier"})
        or 0.0
    ) - batches_before
    assert requests < 256  # the client grouped items into fewer requests too


def test_server_rejection_is_an_input_error_not_retried(client: ModelClient) -> None:
    """An input Triton refuses (wrong shape) raises ModelInputError from the server's answer."""
    info = client.model_info("image_embedding")
    wrong = dataclasses.replace(
        info, name="image_embedding", inputs=(TensorSpec("PIXELS", "UINT8", (16, 32, 3)),)
    )
    errors_before = (
        REGISTRY.get_sample_value(
            "gss_model_errors_total", {"model_name": "image_embedding", "kind": "invalid"}
        )
        or 0.0
    )
    with pytest.raises(ModelInputError, match="unexpected shape"):
        client._infer_chunk(
            wrong, [{"PIXELS": np.zeros((16, 32, 3), np.uint8)}], deadline=time.monotonic() + 10
        )
    errors = REGISTRY.get_sample_value(
        "gss_model_errors_total", {"model_name": "image_embedding", "kind": "invalid"}
    )
    assert errors == errors_before + 1


def test_client_checks_inputs_against_server_metadata(client: ModelClient) -> None:
    """An unresized image is refused by the client with the contract and the helper named."""
    with pytest.raises(ModelInputError, match="image_tensor"):
        client.infer("image_embedding", np.zeros((64, 64, 3), np.uint8))


def test_unknown_model_is_not_found(client: ModelClient) -> None:
    """A model that is not in the repository raises ModelNotFoundError."""
    with pytest.raises(ModelNotFoundError, match="no_such_model"):
        client.infer("no_such_model", np.zeros((32, 32, 3), np.uint8))


def test_triton_serves_its_own_prometheus_metrics(triton: LocalTriton, client: ModelClient) -> None:
    """Triton's metrics endpoint reports per-model inference counts."""
    client.infer_batch("image_embedding", [np.zeros((32, 32, 3), np.uint8)])
    with urllib.request.urlopen(triton.metrics_url, timeout=10) as response:
        text = response.read().decode()
    assert 'nv_inference_count{model="image_embedding",version="1"}' in text


def test_cli_check_calls_every_model_on_an_endpoint(triton: LocalTriton) -> None:
    """`gss models check --url` calls each repository model once and reports its version."""
    result = CliRunner().invoke(main, ["models", "check", "--url", triton.http_url, "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert {row["model_name"] for row in rows} == {
        "efficientnet_lite0",
        "image_embedding",
        "ocr_cls",
        "ocr_det",
        "ocr_rec",
        "ocr_text",
        "open_nsfw",
        "safety_classifier",
    }
    assert all(row["ok"] and row["model_version"] == "1" for row in rows)


def test_example_model_plugins_write_model_values_with_envelopes(triton: LocalTriton) -> None:
    """The example plugins images/embedding@1 and images/safety_score@1, run by the plugin
    harness against this Triton, write the reference values with model name and version."""
    from datetime import UTC, datetime

    from compute.content import image_event
    from compute.examples.images.embedding import embedding
    from compute.examples.images.safety_score import safety_score
    from compute.harness import LocalHarness

    rng = np.random.default_rng(31)
    pictures = [
        rng.integers(0, 256, size=(48, 80, 3), dtype=np.uint8),
        np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], 64, axis=0).repeat(3, 2),
        sample_images(4, seed=32)[3],
    ]
    weights = load_safety_weights()
    with ModelClient(triton.http_url, max_wait_seconds=0.005) as client:
        harness = LocalHarness([embedding, safety_score], models=client)
        try:
            for i, pixels in enumerate(pictures):
                event = image_event(pixels, datetime(2026, 11, 1, 12, i, tzinfo=UTC))
                harness.send("content.images", event)
                tensor = image_tensor(pixels)
                value: Any = harness.latest("images", event.image_signature, "embedding@1")
                assert value is not None
                np.testing.assert_allclose(value.values, reference_embedding(tensor), atol=1e-6)
                score: Any = harness.latest("images", event.image_signature, "safety_score@1")
                assert score is not None
                assert score.score == pytest.approx(
                    reference_safety_score(tensor, weights), abs=1e-6
                )
                assert score.model_version == "1"
        finally:
            harness.close()
    assert harness.dead_letters == []
    assert len(harness.records) == 2 * len(pictures)
    for record in harness.records:
        model = {"embedding": "image_embedding", "safety_score": "safety_classifier"}
        assert record.envelope.model_name == model[record.signal.name]
        assert record.envelope.model_version == "1"
