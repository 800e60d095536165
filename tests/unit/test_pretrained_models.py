"""The pretrained models' files, inputs and numpy stages, without Triton (onnxruntime in-process)."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime

import numpy as np
import pytest

from compute.content import MAX_IMAGE_SIDE
from compute.examples.images.safety_score import label_v1, label_v2
from compute.triton.inputs import (
    EFFICIENTNET_SIZE,
    efficientnet_input,
    ocr_input,
    open_nsfw_input,
)
from contract.errors import InvalidArgumentError
from gss.local.generator import PHOTOS, ContentGenerator, load_photo, render_text
from tests.pretrained_support import (
    ESPRESSO,
    TIGER_CAT,
    ocr_module,
    photo,
    read_text_directly,
    run,
    session,
    text_image,
)
from tests.triton_reference import MODELS

ONNX_MODELS = ["efficientnet_lite0", "open_nsfw", "ocr_det", "ocr_rec", "ocr_cls"]
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def test_tracked_model_files_match_their_checksums_and_size_limit() -> None:
    """Every file artifacts.json lists is there, with its sha256, under 25 MB, with a source."""
    manifest = json.loads((MODELS / "artifacts.json").read_text())
    assert set(manifest) == {f"{m}/1/model.onnx" for m in ONNX_MODELS} | {
        "ocr_text/1/characters.txt"
    }
    for relative, entry in manifest.items():
        data = (MODELS / relative).read_bytes()
        assert len(data) == entry["bytes"] < 25 * 1024 * 1024, relative
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], relative
        assert all(entry[key] for key in ("source", "source_sha256", "licence")), relative


@pytest.mark.parametrize("model", ONNX_MODELS)
def test_both_configs_name_the_graphs_tensors(model: str) -> None:
    """config.pbtxt (Python backend) and configs/gpu.pbtxt (onnxruntime backend) declare the
    ONNX graph's own inputs and outputs, and model.py is the shared onnxruntime runner."""
    sess = session(model)
    graph = {i.name for i in sess.get_inputs()} | {o.name for o in sess.get_outputs()}
    cpu = (MODELS / model / "config.pbtxt").read_text()
    gpu = (MODELS / model / "configs" / "gpu.pbtxt").read_text()
    for config in (cpu, gpu):
        assert set(re.findall(r'name: "([A-Z_]+)"', config)) == graph
    assert 'backend: "python"' in cpu
    assert "KIND_CPU" in cpu
    assert 'platform: "onnxruntime_onnx"' in gpu
    assert "KIND_GPU" in gpu
    runner = MODELS / model / "1" / "model.py"
    assert runner.is_symlink()
    assert runner.resolve() == MODELS / "onnx_backend.py"


def test_efficientnet_input_is_the_tf_centre_crop() -> None:
    """224x224 RGB from the centred square of 224/256 of the shorter side: what lies outside
    it (a border) is gone, whatever the aspect ratio."""
    image = np.zeros((300, 600, 3), dtype=np.uint8)
    image[:, :] = (200, 30, 40)
    inner = int(300 * (1 - 224 / 256) / 2)  # the crop starts this far in from the short side
    image[: inner - 2] = 0
    image[-(inner - 2) :] = 0
    tensor = efficientnet_input(image)
    assert tensor.shape == (EFFICIENTNET_SIZE, EFFICIENTNET_SIZE, 3)
    assert tensor.dtype == np.uint8
    assert (np.abs(tensor.astype(int) - [200, 30, 40]) <= 1).all()
    assert efficientnet_input(np.full((40, 50), 90, dtype=np.uint8)).max() == 90


def test_open_nsfw_and_ocr_inputs() -> None:
    """open_nsfw: 224x224 RGB after the JPEG round trip; ocr: the image as RGB, any size."""
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, size=(100, 180, 4), dtype=np.uint8)
    nsfw = open_nsfw_input(image)
    assert nsfw.shape == (224, 224, 3)
    assert nsfw.dtype == np.uint8
    assert ocr_input(image).shape == (100, 180, 3)
    np.testing.assert_array_equal(ocr_input(image), image[:, :, :3])
    assert ocr_input(np.zeros((7, 9), dtype=np.uint8)).shape == (7, 9, 3)
    with pytest.raises(InvalidArgumentError, match="uint8"):
        efficientnet_input(np.zeros((8, 8, 3), dtype=np.float32))


def test_efficientnet_normalisation_is_the_one_the_weights_were_trained_with() -> None:
    """The graph's (x - 127) / 128: confident expected top-1 classes. With the ImageNet
    mean/std instead, the cat's top-1 is 285 (Egyptian cat) and espresso's probability is
    0.78 (scripts/convert_models.py --compare-normalisation)."""
    batch = np.stack(
        [efficientnet_input(photo("chelsea.png")), efficientnet_input(photo("coffee.png"))]
    )
    logits = run("efficientnet_lite0", PIXELS=batch)["LOGITS"]
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    assert list(probabilities.argmax(axis=1)) == [TIGER_CAT, ESPRESSO]
    assert probabilities[1, ESPRESSO] > 0.9


def test_components_are_eight_connected() -> None:
    """Runs touching diagonally join; separate blobs stay apart; boxes are inclusive."""
    ocr = ocr_module()
    mask = np.zeros((10, 12), dtype=bool)
    mask[1:3, 1:4] = True
    mask[3, 4] = True  # diagonal neighbour of (2, 3)
    mask[6:9, 8:11] = True
    boxes = sorted(map(tuple, ocr.components(mask).tolist()))
    assert boxes == [(1, 1, 4, 3), (8, 6, 10, 8)]
    assert ocr.components(np.zeros((4, 4), dtype=bool)).shape == (0, 4)


def test_ctc_decoding_merges_repeats_and_drops_blanks() -> None:
    ocr = ocr_module()
    characters = ["", "a", "b", " "]
    steps = [1, 1, 0, 1, 2, 2, 3, 2, 0]
    probabilities = np.full((1, len(steps), 4), 0.1, dtype=np.float32)
    for t, index in enumerate(steps):
        probabilities[0, t, index] = 0.7
    ((text, confidence),) = ocr.ctc_decode(probabilities, characters)
    assert text == "aab b"
    assert confidence == pytest.approx(0.7)


def test_ocr_pipeline_reads_rendered_text_in_reading_order() -> None:
    """Two lines come back top to bottom, exactly, with boxes around each line."""
    image = text_image(["Order 4821 ships Monday", "Galaxy signals"])
    texts, boxes, confidences = read_text_directly(image)
    assert texts == ["Order 4821 ships Monday", "Galaxy signals"]
    assert (confidences > 0.9).all()
    assert boxes[0][1] < boxes[1][1]
    assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 2] <= image.shape[1])).all()
    blank = np.full((64, 96, 3), 255, dtype=np.uint8)
    texts, boxes, _ = read_text_directly(blank)
    assert texts == []
    assert boxes.shape == (0, 4)


def test_safety_labels_follow_the_documented_thresholds() -> None:
    assert [label_v1(s) for s in (0.1, 0.49, 0.5, 0.9)] == ["safe", "safe", "unsafe", "unsafe"]
    assert [label_v2(s) for s in (0.0, 0.19, 0.2, 0.79, 0.8, 1.0)] == [
        "safe",
        "safe",
        "uncertain",
        "uncertain",
        "unsafe",
        "unsafe",
    ]


def test_photo_generator_is_deterministic_and_realistic() -> None:
    """Photos come from the installed wheel, every event fits the content limits, the same
    seed gives the same events, and near duplicates are other images of the same size."""
    assert all(max(load_photo(name).shape[:2]) == 256 for name in PHOTOS)
    first = [
        e.SerializeToString()
        for _, _, e in ContentGenerator(seed=8, images="photos").events(30, T0, image_share=1.0)
    ]
    again = [
        e.SerializeToString()
        for _, _, e in ContentGenerator(seed=8, images="photos").events(30, T0, image_share=1.0)
    ]
    assert first == again
    generator = ContentGenerator(seed=9, images="photos")
    pictures = [generator.picture() for _ in range(20)]
    assert all(p.dtype == np.uint8 and p.ndim == 3 and max(p.shape[:2]) <= 512 for p in pictures)
    assert any(p.shape[0] < 120 for p in pictures), "some pictures are rendered text"
    for original in pictures[:8]:
        copy = generator.near_duplicate(original)
        assert copy.shape == original.shape
        assert not np.array_equal(copy, original)


def test_rendered_text_fits_an_image_event() -> None:
    """A long line shrinks the font instead of running off the picture; bad kinds are refused."""
    wide = render_text(["summer garden kitchen morning market lights"], font_size=40)
    assert wide.shape[1] <= MAX_IMAGE_SIDE
    assert read_text_directly(wide)[0] == ["summer garden kitchen morning market lights"]
    with pytest.raises(InvalidArgumentError, match="photos"):
        ContentGenerator(images="pictures")  # type: ignore[arg-type]
