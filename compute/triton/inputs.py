"""How an image becomes a model input: the one place that knows the models' pixel contract.

Every image model in compute/models takes ``PIXELS``: UINT8 ``[32, 32, 3]`` per item, RGB,
row-major (y, x, channel), values 0..255. Plugins call :func:`image_tensor` on whatever
image they hold (any size, greyscale, RGB or RGBA ``uint8`` array) and hand the result to
:class:`compute.triton.client.ModelClient`.

Resizing is area averaging (each output pixel is the mean of the input pixels its box
covers, weighted by overlap), written in numpy so it gives the same bytes everywhere; it
is exact for downscaling by any factor and bilinear-free (no ringing) for upscaling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from contract.errors import InvalidArgumentError

IMAGE_SIZE = 32
CHANNELS = 3
INPUT_NAME = "PIXELS"
INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, CHANNELS)

Pixels = npt.NDArray[np.uint8]


def _area_weights(source: int, target: int) -> npt.NDArray[np.float64]:
    """A [target, source] matrix: row i averages the source cells output cell i covers."""
    edges = np.arange(target + 1, dtype=np.float64) * source / target
    starts, ends = edges[:-1], edges[1:]
    cells = np.arange(source, dtype=np.float64)
    overlap = np.clip(
        np.minimum(ends[:, None], cells[None, :] + 1) - np.maximum(starts[:, None], cells[None, :]),
        0.0,
        None,
    )
    weights: npt.NDArray[np.float64] = overlap / overlap.sum(axis=1, keepdims=True)
    return weights


def resize(image: Pixels, height: int = IMAGE_SIZE, width: int = IMAGE_SIZE) -> Pixels:
    """An ``[height, width, C]`` uint8 area-averaged resize of an ``[H, W, C]`` uint8 image."""
    if image.shape[0] == height and image.shape[1] == width:
        same: Pixels = np.ascontiguousarray(image)
        return same
    rows = _area_weights(image.shape[0], height)
    cols = _area_weights(image.shape[1], width)
    resized = np.einsum("yh,hwc,xw->yxc", rows, image.astype(np.float64), cols)
    out: Pixels = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    return out


def image_tensor(image: npt.NDArray[np.generic]) -> Pixels:
    """The model input for one image: UINT8 ``[32, 32, 3]`` RGB.

    ``image`` is a ``uint8`` array ``[H, W]`` (greyscale), ``[H, W, 1]``, ``[H, W, 3]`` (RGB)
    or ``[H, W, 4]`` (RGBA; alpha is dropped, not composited). Raises InvalidArgumentError
    for anything else, naming what was received.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidArgumentError(
            f"an image must be a numpy uint8 array [H, W, 3], got {type(image).__name__}"
        )
    if image.dtype != np.uint8:
        raise InvalidArgumentError(
            f"image pixels must be uint8 0..255, got dtype {image.dtype}; "
            "convert with (x * 255).round().astype(np.uint8) if they are floats in [0, 1]"
        )
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or 0 in image.shape:
        raise InvalidArgumentError(
            f"an image must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got shape {image.shape}"
        )
    pixels: Pixels = image.astype(np.uint8, copy=False)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    elif pixels.shape[2] == 4:
        pixels = pixels[:, :, :3]
    return resize(pixels)


def image_batch(images: Sequence[npt.NDArray[np.generic]]) -> Pixels:
    """Model inputs for several images, stacked: UINT8 ``[len(images), 32, 32, 3]``."""
    if not images:
        return np.zeros((0, *INPUT_SHAPE), dtype=np.uint8)
    return np.stack([image_tensor(image) for image in images])
