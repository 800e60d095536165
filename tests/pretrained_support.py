"""The pretrained models' files run directly with onnxruntime: what Triton's answers must equal.

The served OCR pipeline (compute/models/ocr_text/1/model.py) is loaded by path: tests run its
numpy stages with onnxruntime sessions in place of the BLS calls to ocr_det and ocr_rec.
"""

from __future__ import annotations

import functools
import importlib.util
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from gss.local.generator import photo_directory, render_text
from tests.triton_reference import MODELS

# ImageNet-1k class indices (the classifier head of efficientnet_lite0).
TIGER_CAT = 282
ESPRESSO = 967
MOPED = 665
MISSILE = 657
TRIPOD = 872


@functools.cache
def session(model: str) -> Any:
    """An onnxruntime session over compute/models/<model>/1/model.onnx."""
    import onnxruntime as ort

    return ort.InferenceSession(
        str(MODELS / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )


def run(model: str, **inputs: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
    """The model's outputs by name for a batch of inputs, computed in-process."""
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs), strict=True))


@functools.cache
def ocr_module() -> ModuleType:
    """compute/models/ocr_text/1/model.py as a module (pb_utils absent outside Triton)."""
    spec = importlib.util.spec_from_file_location(
        "served_ocr_text", MODELS / "ocr_text" / "1" / "model.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_text_directly(
    rgb: npt.NDArray[np.uint8],
) -> tuple[list[str], npt.NDArray[np.int32], npt.NDArray[np.float32]]:
    """The served OCR pipeline with ocr_det, ocr_cls and ocr_rec run by onnxruntime in-process."""
    ocr = ocr_module()
    characters = ocr.load_characters(MODELS / "ocr_text" / "1" / "characters.txt")
    result: tuple[list[str], npt.NDArray[np.int32], npt.NDArray[np.float32]] = ocr.read_text(
        rgb,
        lambda x: run("ocr_det", INPUT=x)["PROB"],
        lambda x: run("ocr_rec", INPUT=x)["PROBS"],
        characters,
        lambda x: run("ocr_cls", INPUT=x)["PROBS"],
    )
    return result


def photo(name: str) -> npt.NDArray[np.uint8]:
    """A photograph bundled in scikit-image's wheel, full size, RGB."""
    with Image.open(photo_directory() / name) as opened:
        pixels: npt.NDArray[np.uint8] = np.asarray(opened.convert("RGB"), dtype=np.uint8)
    return pixels


def scaled(pixels: npt.NDArray[np.uint8], side: int = 384) -> npt.NDArray[np.uint8]:
    """``pixels`` scaled (area filter) to ``side`` px on the long side: an ImageEvent fits."""
    picture = Image.fromarray(pixels)
    ratio = side / max(picture.size)
    size = (round(picture.width * ratio), round(picture.height * ratio))
    out: npt.NDArray[np.uint8] = np.asarray(
        picture.resize(size, Image.Resampling.BOX), dtype=np.uint8
    )
    return out


TEXTS = [
    ["Fresh coffee today"],
    ["Order 4821 ships Monday", "Galaxy signals"],
    ["hello world"],
]


def text_image(lines: list[str]) -> npt.NDArray[np.uint8]:
    """Clear dark text on a light background (the generator's renderer)."""
    return render_text(lines, font_size=32)
