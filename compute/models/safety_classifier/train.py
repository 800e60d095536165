"""Train the safety_classifier weights: ``python compute/models/safety_classifier/train.py``.

Writes ``1/weights.json`` next to this file (or ``--out``). Deterministic: the same seed gives
byte-identical weights, and a test checks that the shipped file is what this script makes.

The data is synthetic and labelled by construction, a stand-in for a real labelled set:
"unsafe" images are dominated by smooth skin-tone regions, "safe" ones are scenes of other
colours and textures, some with small skin-tone patches, and 5% of labels are flipped.
The features are the served ones (``1/model.py``), so training and serving cannot drift.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIZE = 32


def _served_model():
    spec = importlib.util.spec_from_file_location(
        "safety_classifier_model", HERE / "1" / "model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _smooth_field(rng, low, high):
    """A [SIZE, SIZE, 3] field blending two random colours along a random direction."""
    a = rng.uniform(low, high, size=3)
    b = rng.uniform(low, high, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    return a + (b - a) * t[..., None]


def _blob_mask(rng, coverage):
    """A boolean ellipse covering roughly `coverage` of the image."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    cy, cx = rng.uniform(8, 24, size=2)
    ry = np.sqrt(coverage * SIZE * SIZE / np.pi) * rng.uniform(0.8, 1.25)
    rx = coverage * SIZE * SIZE / (np.pi * ry)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _texture(rng):
    """Stripes, checkers or noise in two random colours."""
    a = rng.uniform(0, 255, size=3)
    b = rng.uniform(0, 255, size=3)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    kind = rng.integers(3)
    period = rng.integers(2, 8)
    if kind == 0:
        pattern = (xx // period) % 2
    elif kind == 1:
        pattern = ((xx // period) + (yy // period)) % 2
    else:
        pattern = rng.random((SIZE, SIZE)) < 0.5
    return np.where(pattern[..., None].astype(bool), a, b)


def synthetic_images(n, seed):
    """n images UINT8 [n, 32, 32, 3] and labels (1 = unsafe), labelled by construction."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    skin_low, skin_high = np.array([170, 110, 80]), np.array([245, 185, 150])
    for i in range(n):
        unsafe = rng.random() < 0.5
        background = _texture(rng) if rng.random() < 0.5 else _smooth_field(rng, 0, 255)
        coverage = rng.uniform(0.45, 0.9) if unsafe else rng.uniform(0.0, 0.25)
        skin = _smooth_field(rng, skin_low, skin_high)
        image = np.where(_blob_mask(rng, coverage)[..., None], skin, background)
        image = image + rng.normal(0, 6, size=image.shape)
        images[i] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        labels[i] = int(unsafe) if rng.random() >= 0.05 else int(not unsafe)
    return images, labels


def fit_logistic(x, y, l2=1e-3, steps=3000, learning_rate=0.5):
    """Full-batch gradient descent on the L2-regularised log loss (deterministic)."""
    w = np.zeros(x.shape[1])
    b = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        grad_w = x.T @ (p - y) / len(y) + l2 * w
        grad_b = float(np.mean(p - y))
        w -= learning_rate * grad_w
        b -= learning_rate * grad_b
    return w, b


def train(seed=7, examples=4000):
    """The weights document written to weights.json."""
    model = _served_model()
    images, labels = synthetic_images(examples, seed)
    feats = model.features(images)
    split = int(0.8 * examples)
    mean = feats[:split].mean(axis=0)
    std = feats[:split].std(axis=0)
    std[std == 0] = 1.0
    z = (feats - mean) / std
    w, b = fit_logistic(z[:split], labels[:split].astype(np.float64))
    predicted = (z[split:] @ w + b) > 0
    accuracy = float(np.mean(predicted == labels[split:].astype(bool)))
    return {
        "feature_names": list(model.FEATURE_NAMES),
        "feature_mean": [round(float(v), 10) for v in mean],
        "feature_std": [round(float(v), 10) for v in std],
        "weights": [round(float(v), 10) for v in w],
        "bias": round(float(b), 10),
        "training": {
            "script": "compute/models/safety_classifier/train.py",
            "seed": seed,
            "examples": examples,
            "holdout_fraction": 0.2,
            "holdout_accuracy": round(accuracy, 4),
            "data": "synthetic: skin-tone-dominated images are unsafe, 5% label noise",
        },
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--examples", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=HERE / "1" / "weights.json")
    args = parser.parse_args()
    document = train(args.seed, args.examples)
    args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: holdout accuracy {document['training']['holdout_accuracy']}")


if __name__ == "__main__":
    main()
