"""image_embedding: a deterministic 64-dim image embedding (Triton Python backend).

Input ``PIXELS``: UINT8 [batch, 32, 32, 3], RGB, row-major (see docs/models.md).
Output ``EMBEDDING``: FP32 [batch, 64], L2-normalised.

The embedding is a seeded random projection (Johnson-Lindenstrauss style) of a 16x16
thumbnail, so nearby images get nearby embeddings:

1. pixels / 255 as float64, then 2x2 average pooling to [16, 16, 3];
2. subtract 0.5 (mid-grey becomes zero), flatten row-major (y, x, channel) to 768 values,
   append a constant 1.0 (so no image maps to the zero vector): 769 features;
3. multiply by P, a [769, 64] matrix drawn once from
   ``numpy.random.RandomState(PROJECTION_SEED).standard_normal((769, 64)) / 8``
   (the legacy RandomState stream is stable across numpy releases);
4. divide by the L2 norm and return float32.

Only numpy is needed, so this file runs unchanged in NVIDIA's Triton containers.
"""

import json

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (benchmarks, tools): only `embed` is used
    pb_utils = None

IMAGE_SIZE = 32
POOL = 2
EMBEDDING_DIM = 64
PROJECTION_SEED = 20240505
FEATURES = (IMAGE_SIZE // POOL) * (IMAGE_SIZE // POOL) * 3 + 1


def projection_matrix():
    """The fixed [769, 64] projection, the same on every machine."""
    rng = np.random.RandomState(PROJECTION_SEED)
    return rng.standard_normal((FEATURES, EMBEDDING_DIM)) / np.sqrt(EMBEDDING_DIM)


def embed(pixels, projection):
    """Embeddings [batch, 64] float32 for UINT8 pixels [batch, 32, 32, 3]."""
    x = pixels.astype(np.float64) / 255.0
    batch = x.shape[0]
    half = IMAGE_SIZE // POOL
    pooled = x.reshape(batch, half, POOL, half, POOL, 3).mean(axis=(2, 4))
    features = np.concatenate(
        [pooled.reshape(batch, -1) - 0.5, np.ones((batch, 1), dtype=np.float64)], axis=1
    )
    projected = features @ projection
    norms = np.linalg.norm(projected, axis=1, keepdims=True)
    return (projected / norms).astype(np.float32)


class TritonPythonModel:
    """Triton entry point: one numpy call per dynamic batch."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        dims = config["output"][0]["dims"]
        if int(dims[-1]) != EMBEDDING_DIM:
            raise ValueError(
                f"config.pbtxt declares EMBEDDING dims {dims}, model.py makes {EMBEDDING_DIM}"
            )
        self.projection = projection_matrix()

    def execute(self, requests):
        # Triton hands us every request of one dynamic batch: stack them, compute once, split.
        arrays = [pb_utils.get_input_tensor_by_name(r, "PIXELS").as_numpy() for r in requests]
        sizes = [a.shape[0] for a in arrays]
        embeddings = embed(np.concatenate(arrays, axis=0), self.projection)
        responses = []
        start = 0
        for size in sizes:
            out = pb_utils.Tensor("EMBEDDING", embeddings[start : start + size])
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += size
        return responses
