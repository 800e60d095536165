"""The pretrained models (efficientnet_lite0, open_nsfw, the OCR pipeline) on the real Triton
server: the same answers as onnxruntime on the same files, and answers that mean something."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from compute.triton import EXAMPLE_MODEL_REPOSITORY
from compute.triton.client import ModelClient
from compute.triton.inputs import efficientnet_input, ocr_input, open_nsfw_input
from gss.local.generator import PHOTOS, load_photo
from gss.local.triton import LocalTriton
from tests.pretrained_support import (
    ESPRESSO,
    MISSILE,
    MOPED,
    TEXTS,
    TIGER_CAT,
    TRIPOD,
    ocr_module,
    photo,
    read_text_directly,
    run,
    text_image,
)
from tests.triton_reference import MODELS

pytestmark = pytest.mark.integration

# Distinct scenes (the near-duplicate test needs one photo per scene).
SCENES = [
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "grass.png",
    "hubble_deep_field.jpg",
    "motorcycle_left.png",
    "rocket.jpg",
]


@pytest.fixture(scope="module")
def triton() -> Iterator[LocalTriton]:
    with LocalTriton(EXAMPLE_MODEL_REPOSITORY) as server:
        yield server


@pytest.fixture(scope="module")
def client(triton: LocalTriton) -> Iterator[ModelClient]:
    with ModelClient(triton.http_url, max_batch_size=32, max_wait_seconds=0.005) as model_client:
        yield model_client


def embeddings(client: ModelClient, images: list[npt.NDArray[np.uint8]]) -> npt.NDArray[Any]:
    results = client.infer_batch("efficientnet_lite0", [efficientnet_input(i) for i in images])
    return np.stack([r["EMBEDDING"] for r in results])


def test_each_model_on_triton_equals_onnxruntime_on_the_same_file(client: ModelClient) -> None:
    """Batched models, the OCR stages with variable shapes, and the whole OCR pipeline."""
    photos = [load_photo(name) for name in ("chelsea.png", "coffee.png", "rocket.jpg")]
    pixels = np.stack([efficientnet_input(p) for p in photos])
    served = client.infer_batch("efficientnet_lite0", list(pixels))
    direct = run("efficientnet_lite0", PIXELS=pixels)
    for name in ("EMBEDDING", "LOGITS"):
        np.testing.assert_allclose(
            np.stack([r[name] for r in served]), direct[name], rtol=1e-4, atol=1e-5
        )
    assert {r.model_version for r in served} == {"1"}

    pixels = np.stack([open_nsfw_input(p) for p in photos])
    served = client.infer_batch("open_nsfw", list(pixels))
    np.testing.assert_allclose(
        np.stack([r["NSFW"] for r in served]), run("open_nsfw", PIXELS=pixels)["NSFW"], atol=1e-5
    )

    ocr = ocr_module()
    image = text_image(TEXTS[1])
    det_input = ocr.detection_input(np.ascontiguousarray(image[:, :, ::-1]))
    np.testing.assert_allclose(
        client.infer("ocr_det", det_input[0])["PROB"],
        run("ocr_det", INPUT=det_input)["PROB"][0],
        atol=1e-5,
    )
    rec_input = ocr.recognition_input([image[10:60, 5:300, ::-1], image[50:100, 5:200, ::-1]])
    served_rec = client.infer_batch("ocr_rec", list(rec_input))
    np.testing.assert_allclose(
        np.stack([r["PROBS"] for r in served_rec]),
        run("ocr_rec", INPUT=rec_input)["PROBS"],
        atol=1e-5,
    )

    cls_input = ocr.classification_input([image[10:60, 5:300, ::-1], image[50:100, 200:5:-1, ::-1]])
    np.testing.assert_allclose(
        np.stack([r["PROBS"] for r in client.infer_batch("ocr_cls", list(cls_input))]),
        run("ocr_cls", INPUT=cls_input)["PROBS"],
        atol=1e-5,
    )

    texts, boxes, confidences = read_text_directly(image)
    result = client.infer("ocr_text", ocr_input(image))
    assert [t.decode() for t in result["TEXT"]] == texts
    np.testing.assert_array_equal(result["BOXES"], boxes)
    np.testing.assert_allclose(result["CONFIDENCE"], confidences, atol=1e-5)


@pytest.mark.parametrize("lines", TEXTS, ids="|".join)
def test_ocr_reads_rendered_text_exactly(client: ModelClient, lines: list[str]) -> None:
    result = client.infer("ocr_text", ocr_input(text_image(lines)))
    assert [t.decode() for t in result["TEXT"]] == lines
    assert (result["CONFIDENCE"] > 0.8).all()
    # Lines are boxed top to bottom, inside the image.
    assert list(result["BOXES"][:, 1]) == sorted(result["BOXES"][:, 1])


def test_ocr_turns_upside_down_text_upright(client: ModelClient) -> None:
    """The angle classifier finds the lines of an image turned 180 degrees upside down."""
    image = np.ascontiguousarray(text_image(TEXTS[1])[::-1, ::-1])
    result = client.infer("ocr_text", ocr_input(image))
    # Reading order is the image's: the second line is now on top.
    assert [t.decode() for t in result["TEXT"]] == TEXTS[1][::-1]


def test_ocr_finds_no_text_in_a_photo_of_a_cat(client: ModelClient) -> None:
    result = client.infer("ocr_text", ocr_input(load_photo("chelsea.png")))
    assert len(result["TEXT"]) == 0


def test_flipped_or_cropped_photo_is_nearest_its_original(client: ModelClient) -> None:
    """Cosine similarity: each variant is nearer its original than any other test photo."""
    originals = [load_photo(name) for name in SCENES]
    base = embeddings(client, originals)
    for kind in ("flip", "crop"):
        variants = []
        for image in originals:
            if kind == "flip":
                variants.append(np.ascontiguousarray(image[:, ::-1]))
            else:
                h, w = image.shape[:2]
                variants.append(
                    np.ascontiguousarray(image[h // 10 : h - h // 20, w // 20 : w - w // 10])
                )
        similarity = embeddings(client, variants) @ base.T  # embeddings are L2-normalised
        nearest = similarity.argmax(axis=1)
        assert list(nearest) == list(range(len(SCENES))), (kind, similarity.round(3))


def test_imagenet_top1_classes_of_known_photos(client: ModelClient) -> None:
    expected = {
        "chelsea.png": TIGER_CAT,
        "coffee.png": ESPRESSO,
        "motorcycle_left.png": MOPED,
        "rocket.jpg": MISSILE,
        "camera.png": TRIPOD,
    }
    results = client.infer_batch(
        "efficientnet_lite0", [efficientnet_input(photo(name)) for name in expected]
    )
    assert [int(r["LOGITS"].argmax()) for r in results] == list(expected.values())


def test_nsfw_scores_of_ordinary_photos_are_low(client: ModelClient) -> None:
    results = client.infer_batch("open_nsfw", [open_nsfw_input(load_photo(n)) for n in PHOTOS])
    scores = {name: float(r["NSFW"][0]) for name, r in zip(PHOTOS, results, strict=True)}
    assert max(scores.values()) < 0.2, scores


def test_a_new_model_version_is_recorded_in_the_envelope(tmp_path: Path) -> None:
    """efficientnet_lite0 served as version 2: the values of images/embedding@2 say so."""
    from compute.content import image_event
    from compute.examples.images.embedding import embedding_v2
    from compute.harness import LocalHarness

    repo = tmp_path / "models"
    shutil.copytree(MODELS / "efficientnet_lite0", repo / "efficientnet_lite0", symlinks=False)
    (repo / "efficientnet_lite0" / "1").rename(repo / "efficientnet_lite0" / "2")
    event = image_event(load_photo("coffee.png"), datetime(2030, 1, 1, tzinfo=UTC))
    with LocalTriton(repo) as server, ModelClient(server.http_url) as model_client:
        harness = LocalHarness([embedding_v2], models=model_client)
        try:
            (outcome,) = harness.send("content.images", event)
        finally:
            harness.close()
    assert outcome.record is not None
    assert outcome.record.envelope.model_name == "efficientnet_lite0"
    assert outcome.record.envelope.model_version == "2"


def test_gpu_config_serves_the_same_file_with_the_onnxruntime_backend(tmp_path: Path) -> None:
    """model_config_name="gpu" makes Triton load model.onnx with its onnxruntime backend,
    which nvidia-pytriton's server lacks: its refusal shows the override is what it read."""
    from gss.local.triton import TritonStartError

    repo = tmp_path / "models"
    shutil.copytree(MODELS / "efficientnet_lite0", repo / "efficientnet_lite0", symlinks=False)
    with (
        pytest.raises(
            TritonStartError, match="unable to find backend library for backend 'onnxruntime'"
        ),
        LocalTriton(repo, model_config_name="gpu", startup_timeout_seconds=60),
    ):
        pass
