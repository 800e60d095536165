"""Image to model input: compute.triton.inputs."""

from __future__ import annotations

import numpy as np
import pytest

from compute.triton.inputs import INPUT_SHAPE, image_batch, image_tensor, resize
from contract.errors import InvalidArgumentError


def test_rgb_image_becomes_uint8_32x32x3() -> None:
    """Any RGB size is resized to the models' UINT8 [32, 32, 3] contract."""
    image = np.random.default_rng(1).integers(0, 256, size=(97, 51, 3), dtype=np.uint8)
    tensor = image_tensor(image)
    assert tensor.shape == INPUT_SHAPE
    assert tensor.dtype == np.uint8


def test_downscale_by_integer_factor_is_block_mean() -> None:
    """A 64x64 image becomes the rounded mean of each 2x2 block (area averaging)."""
    image = np.random.default_rng(2).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    expected = np.rint(image.astype(np.float64).reshape(32, 2, 32, 2, 3).mean(axis=(1, 3)))
    np.testing.assert_array_equal(image_tensor(image), expected.astype(np.uint8))


def test_flat_colour_survives_any_resize() -> None:
    """Area weights sum to one: a flat colour stays exactly that colour, up or down."""
    for shape in [(7, 13, 3), (32, 32, 3), (300, 41, 3)]:
        image = np.empty(shape, dtype=np.uint8)
        image[...] = (12, 200, 77)
        tensor = resize(image)
        assert (tensor == np.array([12, 200, 77], dtype=np.uint8)).all()


def test_greyscale_and_rgba_are_converted() -> None:
    """Greyscale is repeated into three channels; RGBA drops alpha."""
    grey = np.full((32, 32), 90, dtype=np.uint8)
    assert (image_tensor(grey) == 90).all()
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 7
    tensor = image_tensor(rgba)
    assert tensor.shape == INPUT_SHAPE
    assert (tensor[..., 0] == 255).all()
    assert (tensor[..., 1:] == 0).all()


def test_32x32_input_is_passed_through_unchanged() -> None:
    """An image already at the contract size is not resampled."""
    image = np.random.default_rng(3).integers(0, 256, size=INPUT_SHAPE, dtype=np.uint8)
    np.testing.assert_array_equal(image_tensor(image), image)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((32, 32, 3), dtype=np.float32), "uint8"),
        (np.zeros((32, 32, 2), dtype=np.uint8), "shape"),
        (np.zeros((0, 32, 3), dtype=np.uint8), "shape"),
        (np.zeros((2, 32, 32, 3), dtype=np.uint8), "shape"),
        (b"\x89PNG", "numpy"),
    ],
)
def test_bad_images_are_rejected_with_what_was_received(image: object, message: str) -> None:
    """Wrong dtype, channel count, empty or batched arrays and bytes raise InvalidArgumentError."""
    with pytest.raises(InvalidArgumentError, match=message):
        image_tensor(image)  # type: ignore[arg-type]


def test_image_batch_stacks_inputs() -> None:
    """image_batch gives [N, 32, 32, 3], and [0, 32, 32, 3] for no images."""
    images = [np.zeros((10, 10, 3), dtype=np.uint8), np.ones((50, 60), dtype=np.uint8)]
    assert image_batch(images).shape == (2, *INPUT_SHAPE)
    assert image_batch([]).shape == (0, *INPUT_SHAPE)
