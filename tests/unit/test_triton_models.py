"""The model repository's files: model.py numpy code, shipped weights, configs (no server)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.triton_reference import (
    MODELS,
    SAFETY_WEIGHTS,
    load_safety_weights,
    reference_embedding,
    reference_safety_score,
    sample_images,
)


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def embedding_model() -> ModuleType:
    return _load(MODELS / "image_embedding" / "1" / "model.py", "image_embedding_model")


@pytest.fixture(scope="module")
def safety_model() -> ModuleType:
    return _load(MODELS / "safety_classifier" / "1" / "model.py", "safety_classifier_model")


def test_embedding_code_matches_documented_definition(embedding_model: ModuleType) -> None:
    """model.py's batched embedding equals the pixel-by-pixel reference of docs/models.md."""
    images = sample_images(8)
    got = embedding_model.embed(images, embedding_model.projection_matrix())
    assert got.shape == (8, 64)
    assert got.dtype == np.float32
    for image, row in zip(images, got, strict=True):
        np.testing.assert_allclose(row, reference_embedding(image), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_similar_images_embed_close_and_different_ones_far(embedding_model: ModuleType) -> None:
    """A slightly noisy copy is nearer (cosine) to its original than an unrelated image is."""
    rng = np.random.default_rng(5)
    base = sample_images(4)
    noisy = np.clip(base.astype(int) + rng.integers(-8, 9, size=base.shape), 0, 255).astype(
        np.uint8
    )
    projection = embedding_model.projection_matrix()
    a, b = embedding_model.embed(base, projection), embedding_model.embed(noisy, projection)
    for i in range(4):
        assert float(a[i] @ b[i]) > float(a[i] @ a[(i + 1) % 4])


def test_safety_code_matches_documented_definition(safety_model: ModuleType) -> None:
    """model.py's batched score equals the reference features and logistic model."""
    images = sample_images(8)
    weights = safety_model.load_weights(SAFETY_WEIGHTS)
    got = safety_model.score(images, weights)
    assert got.shape == (8, 1)
    reference = load_safety_weights()
    for image, score in zip(images, got[:, 0], strict=True):
        assert score == pytest.approx(reference_safety_score(image, reference), abs=1e-6)


def test_shipped_weights_are_what_train_py_produces() -> None:
    """train.py (seed 7) reproduces weights.json: the shipped model is reproducible."""
    train = _load(MODELS / "safety_classifier" / "train.py", "safety_classifier_train")
    fresh = train.train()
    shipped = json.loads(SAFETY_WEIGHTS.read_text())
    assert fresh["feature_names"] == shipped["feature_names"]
    for key in ("feature_mean", "feature_std", "weights"):
        np.testing.assert_allclose(fresh[key], shipped[key], atol=1e-6)
    assert fresh["bias"] == pytest.approx(shipped["bias"], abs=1e-6)
    # Measured again now (train.py scores its own holdout), not read from the shipped file.
    assert fresh["training"]["holdout_accuracy"] == shipped["training"]["holdout_accuracy"]
    assert fresh["training"]["holdout_accuracy"] > 0.7


def test_weights_for_other_features_are_refused(safety_model: ModuleType, tmp_path: Path) -> None:
    """A weights file trained on different features fails loading with both lists named."""
    data = json.loads(SAFETY_WEIGHTS.read_text())
    data["feature_names"] = ["mean_red"]
    bad = tmp_path / "weights.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="mean_red"):
        safety_model.load_weights(bad)


def _config_fields(path: Path) -> dict[str, str]:
    text = path.read_text()
    return {
        "kind": re.findall(r"kind:\s*(KIND_\w+)", text)[0],
        "io": re.sub(
            r"\s+",
            "",
            "".join(re.findall(r"(input\s*\[.*?\]\s*\]|output\s*\[.*?\]\s*\])", text, re.S)),
        ),
        "max_batch_size": re.findall(r"max_batch_size:\s*(\d+)", text)[0],
        "dynamic_batching": str("dynamic_batching" in text),
    }


@pytest.mark.parametrize("model", ["image_embedding", "safety_classifier"])
def test_gpu_override_changes_placement_only(model: str) -> None:
    """configs/gpu.pbtxt keeps inputs, outputs and batch size; only the instance kind moves."""
    cpu = _config_fields(MODELS / model / "config.pbtxt")
    gpu = _config_fields(MODELS / model / "configs" / "gpu.pbtxt")
    assert cpu["kind"] == "KIND_CPU"
    assert gpu["kind"] == "KIND_GPU"
    assert cpu["dynamic_batching"] == gpu["dynamic_batching"] == "True"
    assert cpu["io"] == gpu["io"]
    assert cpu["max_batch_size"] == gpu["max_batch_size"]


def test_embedding_config_matches_the_registry_signal() -> None:
    """The EMBEDDING output has the 64 dims images/embedding@1 declares."""
    text = (MODELS / "image_embedding" / "config.pbtxt").read_text()
    assert re.search(r'name: "EMBEDDING", data_type: TYPE_FP32, dims: \[ 64 \]', text)
