"""Independent numpy references of the served models, written from docs/models.md.

They do not import compute/models/*/1/model.py: a test comparing Triton's answers with these
checks the served code against the documented definition, not against itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

MODELS = Path(__file__).resolve().parent.parent / "compute" / "models"
SAFETY_WEIGHTS = MODELS / "safety_classifier" / "1" / "weights.json"

EMBEDDING_SEED = 20240505
EMBEDDING_DIM = 64


def reference_embedding(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """images/embedding@1 of one [32, 32, 3] image, one pixel block at a time."""
    rng = np.random.RandomState(EMBEDDING_SEED)
    projection = rng.standard_normal((16 * 16 * 3 + 1, EMBEDDING_DIM)) / np.sqrt(EMBEDDING_DIM)
    features = []
    for y in range(16):
        for x in range(16):
            block = image[2 * y : 2 * y + 2, 2 * x : 2 * x + 2, :].astype(np.float64) / 255.0
            for channel in range(3):
                features.append(block[:, :, channel].mean() - 0.5)
    features.append(1.0)
    vector = np.asarray(features) @ projection
    result: npt.NDArray[np.float32] = (vector / np.sqrt(np.sum(vector**2))).astype(np.float32)
    return result


def _skin(red: float, green: float, blue: float) -> bool:
    high, low = max(red, green, blue), min(red, green, blue)
    return (
        red > 95
        and green > 40
        and blue > 20
        and high - low > 15
        and abs(red - green) > 15
        and red > green
        and red > blue
    )


def reference_features(image: npt.NDArray[np.uint8]) -> list[float]:
    """The seven safety_classifier features of one image, pixel by pixel."""
    pixels = image.astype(np.float64)
    height, width, _ = pixels.shape
    count = height * width
    sums = [0.0, 0.0, 0.0]
    saturation = 0.0
    skin = 0
    luma = np.zeros((height, width))
    for y in range(height):
        for x in range(width):
            red, green, blue = pixels[y, x]
            sums[0] += red / 255.0
            sums[1] += green / 255.0
            sums[2] += blue / 255.0
            high, low = max(red, green, blue), min(red, green, blue)
            saturation += (high - low) / high if high > 0 else 0.0
            skin += _skin(red, green, blue)
            luma[y, x] = (0.299 * red + 0.587 * green + 0.114 * blue) / 255.0
    horizontal = np.mean(
        [abs(luma[y, x + 1] - luma[y, x]) for y in range(height) for x in range(width - 1)]
    )
    vertical = np.mean(
        [abs(luma[y + 1, x] - luma[y, x]) for y in range(height - 1) for x in range(width)]
    )
    return [
        sums[0] / count,
        sums[1] / count,
        sums[2] / count,
        float(np.sqrt(np.mean((luma - luma.mean()) ** 2))),
        saturation / count,
        skin / count,
        float(horizontal + vertical),
    ]


def load_safety_weights(path: Path = SAFETY_WEIGHTS) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def reference_safety_score(image: npt.NDArray[np.uint8], weights: dict[str, Any]) -> float:
    """images/safety_score@1: the logistic model of weights.json over reference_features."""
    z = weights["bias"]
    for value, mean, std, w in zip(
        reference_features(image),
        weights["feature_mean"],
        weights["feature_std"],
        weights["weights"],
        strict=True,
    ):
        z += (value - mean) / std * w
    return float(1.0 / (1.0 + np.exp(-z)))


def sample_images(count: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    """Test images [count, 32, 32, 3]: noise, flat colours, gradients and skin-tone blobs."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, 32, 32, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:32, 0:32]
    for i in range(count):
        kind = i % 4
        if kind == 0:
            images[i] = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        elif kind == 1:
            images[i] = rng.integers(0, 256, size=3, dtype=np.uint8)
        elif kind == 2:
            ramp = (xx * 8 + yy * 0).clip(0, 255)
            images[i] = np.stack([ramp, 255 - ramp, np.full_like(ramp, i % 256)], axis=-1)
        else:
            background = rng.integers(0, 256, size=(32, 32, 3))
            blob = ((yy - 16) ** 2 + (xx - 16) ** 2) < 150
            images[i] = np.where(blob[..., None], [210, 150, 120], background)
    return images
