"""How an image becomes a model input: the one place that knows the models' pixel contracts.

Each function here is the client half of one model's preprocessing, the geometric part
(crop, resize, re-encoding); the numeric part (scaling, mean/std, colour order, layout)
is inside the model's ONNX graph or ``model.py`` in compute/models, so that every
configuration of a model (Python backend on CPU, onnxruntime backend on GPU) gets the same
UINT8 RGB input. Plugins call the function of their model on whatever image they hold
(any size, greyscale, RGB or RGBA ``uint8`` array) and hand the result to
:class:`compute.triton.client.ModelClient`:

| function | model | input per item |
|---|---|---|
| :func:`image_tensor` | image_embedding, safety_classifier | ``PIXELS`` UINT8 [32, 32, 3] |
| :func:`efficientnet_input` | efficientnet_lite0 | ``PIXELS`` UINT8 [224, 224, 3] |
| :func:`open_nsfw_input` | open_nsfw | ``PIXELS`` UINT8 [224, 224, 3] |
| :func:`ocr_input` | ocr_text | ``IMAGE`` UINT8 [H, W, 3] |

:func:`image_tensor`'s resizing is area averaging (each output pixel is the mean of the
input pixels its box covers, weighted by overlap), written in numpy so it gives the same
bytes everywhere. The pretrained models get the resampling their weights were evaluated
with (Pillow's bicubic and bilinear filters), documented per function.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image

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


def rgb_pixels(image: npt.NDArray[np.generic]) -> Pixels:
    """``image`` as UINT8 ``[H, W, 3]`` RGB.

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
    return np.ascontiguousarray(pixels)


def image_tensor(image: npt.NDArray[np.generic]) -> Pixels:
    """The image_embedding / safety_classifier input for one image: UINT8 ``[32, 32, 3]`` RGB.

    ``image`` as :func:`rgb_pixels` takes it; area-averaged to 32x32 (aspect not kept).
    """
    return resize(rgb_pixels(image))


EFFICIENTNET_SIZE = 224
# TF EfficientNet evaluation: the centre square of side shorter_side * 224 / (224 + 32).
EFFICIENTNET_CROP = EFFICIENTNET_SIZE / (EFFICIENTNET_SIZE + 32)
OPEN_NSFW_RESIZE = 256
OPEN_NSFW_SIZE = 224


def efficientnet_input(image: npt.NDArray[np.generic]) -> Pixels:
    """The efficientnet_lite0 input: UINT8 ``[224, 224, 3]`` RGB.

    TF EfficientNet's evaluation crop, which the weights were evaluated with: the centred
    square whose side is 224/256 of the shorter side, resized to 224x224 with Pillow's
    bicubic filter. The graph then computes ``(x - 127) / 128`` per channel.
    """
    picture = Image.fromarray(rgb_pixels(image))
    width, height = picture.size
    side = min(width, height) * EFFICIENTNET_CROP
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    resized = picture.crop(box).resize(
        (EFFICIENTNET_SIZE, EFFICIENTNET_SIZE), Image.Resampling.BICUBIC
    )
    pixels: Pixels = np.asarray(resized, dtype=np.uint8)
    return pixels


def open_nsfw_input(image: npt.NDArray[np.generic]) -> Pixels:
    """The open_nsfw input: UINT8 ``[224, 224, 3]`` RGB.

    Yahoo's classify_nsfw.py sequence, which the network is sensitive to: resize to 256x256
    (aspect not kept, Pillow bilinear), a JPEG round trip (Pillow's default quality 75; the
    training images were JPEGs and their artefacts matter), the centred 224x224 crop. The
    graph then swaps to BGR and subtracts the Caffe means (104, 117, 123).
    """
    resized = Image.fromarray(rgb_pixels(image)).resize(
        (OPEN_NSFW_RESIZE, OPEN_NSFW_RESIZE), Image.Resampling.BILINEAR
    )
    buffer = io.BytesIO()
    resized.save(buffer, format="JPEG")
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.uint8)
    offset = (OPEN_NSFW_RESIZE - OPEN_NSFW_SIZE) // 2
    cropped: Pixels = np.ascontiguousarray(
        decoded[offset : offset + OPEN_NSFW_SIZE, offset : offset + OPEN_NSFW_SIZE]
    )
    return cropped


def ocr_input(image: npt.NDArray[np.generic]) -> Pixels:
    """The ocr_text input: the image itself as UINT8 ``[H, W, 3]`` RGB.

    The OCR model resizes inside (text needs the resolution the image has): it reads boxes
    in these pixel coordinates.
    """
    return rgb_pixels(image)


def image_batch(images: Sequence[npt.NDArray[np.generic]]) -> Pixels:
    """Model inputs for several images, stacked: UINT8 ``[len(images), 32, 32, 3]``."""
    if not images:
        return np.zeros((0, *INPUT_SHAPE), dtype=np.uint8)
    return np.stack([image_tensor(image) for image in images])
