"""safety_classifier: probability that an image is unsafe (Triton Python backend).

Input ``PIXELS``: UINT8 [batch, 32, 32, 3], RGB, row-major (see docs/models.md).
Output ``SCORE``: FP32 [batch, 1], in [0, 1].

A logistic regression over seven colour and texture features (``features`` below). The
standardisation and weights live in ``weights.json`` beside this file, written by
``../train.py``; the feature code here is the one both training and serving use.

Only numpy is needed, so this file runs unchanged in NVIDIA's Triton containers.
"""

import json
import os

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (train.py, benchmarks): only numpy parts are used
    pb_utils = None

FEATURE_NAMES = (
    "mean_red",
    "mean_green",
    "mean_blue",
    "luma_std",
    "mean_saturation",
    "skin_fraction",
    "edge_energy",
)


def features(pixels):
    """Features [batch, 7] float64 for UINT8 pixels [batch, H, W, 3]."""
    rgb = pixels.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    batch = rgb.shape[0]
    flat = rgb.reshape(batch, -1, 3) / 255.0
    means = flat.mean(axis=1)
    luma = (0.299 * r + 0.587 * g + 0.114 * b) / 255.0
    luma_std = luma.reshape(batch, -1).std(axis=1)
    high = rgb.max(axis=-1)
    low = rgb.min(axis=-1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1.0), 0.0)
    mean_saturation = saturation.reshape(batch, -1).mean(axis=1)
    # The RGB skin rule of Kovac, Peer and Solina (2003), daylight variant.
    skin = (
        (r > 95)
        & (g > 40)
        & (b > 20)
        & (high - low > 15)
        & (np.abs(r - g) > 15)
        & (r > g)
        & (r > b)
    )
    skin_fraction = skin.reshape(batch, -1).mean(axis=1)
    dx = np.abs(np.diff(luma, axis=2)).reshape(batch, -1).mean(axis=1)
    dy = np.abs(np.diff(luma, axis=1)).reshape(batch, -1).mean(axis=1)
    edge_energy = dx + dy
    return np.column_stack(
        [
            means[:, 0],
            means[:, 1],
            means[:, 2],
            luma_std,
            mean_saturation,
            skin_fraction,
            edge_energy,
        ]
    )


def load_weights(path):
    """The shipped classifier: feature standardisation, weights and bias."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if tuple(data["feature_names"]) != FEATURE_NAMES:
        raise ValueError(
            f"{path} was trained on features {data['feature_names']}, "
            f"model.py computes {FEATURE_NAMES}: retrain with ../train.py"
        )
    return {
        "mean": np.asarray(data["feature_mean"], dtype=np.float64),
        "std": np.asarray(data["feature_std"], dtype=np.float64),
        "weights": np.asarray(data["weights"], dtype=np.float64),
        "bias": float(data["bias"]),
    }


def score(pixels, weights):
    """Scores [batch, 1] float32 in [0, 1] for UINT8 pixels [batch, H, W, 3]."""
    standardised = (features(pixels) - weights["mean"]) / weights["std"]
    z = standardised @ weights["weights"] + weights["bias"]
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32).reshape(-1, 1)


class TritonPythonModel:
    """Triton entry point: one numpy call per dynamic batch."""

    def initialize(self, args):
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.weights = load_weights(os.path.join(version_dir, "weights.json"))

    def execute(self, requests):
        # Triton hands us every request of one dynamic batch: stack them, compute once, split.
        arrays = [pb_utils.get_input_tensor_by_name(r, "PIXELS").as_numpy() for r in requests]
        sizes = [a.shape[0] for a in arrays]
        scores = score(np.concatenate(arrays, axis=0), self.weights)
        responses = []
        start = 0
        for size in sizes:
            out = pb_utils.Tensor("SCORE", scores[start : start + size])
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += size
        return responses
