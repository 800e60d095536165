"""Model plugins (images/embedding@1 and @2, images/safety_score@1 and @2, images/ocr_text@1)
against a real Triton server, in both execution modes: the harness calling the batched client
in-process, and a Flink MiniCluster job whose async operators call Triton, checked through GSS
lookups; and Triton killed with SIGKILL under both."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compute.content import image_array, image_event
from compute.examples.images.embedding import embedding, embedding_v2
from compute.examples.images.ocr_text import ocr_text
from compute.examples.images.safety_score import safety_score, safety_score_v2
from compute.flink import gateway
from compute.flink.run import ComputeJob
from compute.harness import LocalHarness
from compute.triton import EXAMPLE_MODEL_REPOSITORY
from compute.triton.client import ModelClient
from compute.triton.inputs import efficientnet_input, image_tensor, open_nsfw_input
from contract.registry import load_registry
from contract.settings import load_settings
from contract.v1.content_pb2 import ImageEvent
from contract.v1.signals_pb2 import Embedding, OcrText, SafetyScore
from gss.local.generator import ContentGenerator
from gss.local.triton import LocalTriton
from tests.compute_support import FlinkRunner, HarnessRunner, Runner, TopicReader, all_topics
from tests.conftest import server_settings
from tests.pretrained_support import TEXTS, photo, run, scaled, text_image
from tests.triton_reference import load_safety_weights, reference_embedding, reference_safety_score

pytestmark = pytest.mark.integration

PLUGINS = [embedding, safety_score, embedding_v2, safety_score_v2, ocr_text]
MODEL_OF = {
    ("embedding", 1): "image_embedding",
    ("safety_score", 1): "safety_classifier",
    ("embedding", 2): "efficientnet_lite0",
    ("safety_score", 2): "open_nsfw",
    ("ocr_text", 1): "ocr_text",
}
# Fast failure while Triton is down: a dead letter within seconds, not minutes.
TRITON_LIMITS = {
    "deadline_seconds": 20.0,
    "max_attempts": 3,
    "retry_backoff_seconds": 0.05,
    "retry_backoff_max_seconds": 0.2,
}
T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def triton() -> Iterator[LocalTriton]:
    with LocalTriton(EXAMPLE_MODEL_REPOSITORY) as server:
        yield server


@pytest.fixture(scope="module")
def flink_models(
    triton: LocalTriton, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FlinkRunner]:
    """A broker, a GSS server, and a Flink job running the model plugins against Triton."""
    from gss.local.broker import LocalBroker
    from gss.server import start_server

    with LocalBroker() as broker:
        settings = server_settings(
            tmp_path_factory.mktemp("compute-models"),
            kafka={"bootstrap_servers": broker.bootstrap_servers},
            triton={"url": triton.http_url, **TRITON_LIMITS},
            compute={
                "checkpoint_dir": tmp_path_factory.mktemp("checkpoints").as_uri(),
                "job_name": "gss-compute-model-tests",
                "metrics_port": 0,
                "checkpoint_interval_seconds": 1.0,
            },
        )
        registry = load_registry(settings.registry_path)
        job = ComputeJob(settings, PLUGINS, registry=registry)
        reader = TopicReader(broker.bootstrap_servers, all_topics(settings, registry))
        server = start_server(settings)
        runner = FlinkRunner(settings, registry, reader, server.address)
        try:
            job.start()
            yield runner
        finally:
            job.stop()
            reader.close()
            runner.close()
            server.stop(grace=1.0)
            gateway.shutdown()


@pytest.fixture(params=["harness", "flink"])
def runner(request: pytest.FixtureRequest, triton: LocalTriton) -> Iterator[Runner]:
    if request.param == "flink":
        yield request.getfixturevalue("flink_models")
        return
    with ModelClient(triton.http_url, max_wait_seconds=0.005, **TRITON_LIMITS) as client:  # type: ignore[arg-type]
        yield HarnessRunner(LocalHarness(PLUGINS, settings=load_settings(), models=client))


def test_model_signals_equal_the_models_definitions(runner: Runner) -> None:
    """Each image's embedding and safety score equal the documented model definitions, and
    their envelopes name the model and version that computed them."""
    generator = ContentGenerator(seed=404)
    events = [generator.next_image(T0 + timedelta(seconds=i))[2] for i in range(6)]
    runner.send("content.images", events, key=lambda e: e.image_signature)  # type: ignore[attr-defined]
    weights = load_safety_weights()
    for event in events:
        assert isinstance(event, ImageEvent)
        pixels = image_tensor(image_array(event))
        got = runner.wait_latest("images", event.image_signature, "embedding@1")
        assert isinstance(got, Embedding)
        np.testing.assert_allclose(got.values, reference_embedding(pixels), atol=1e-5)
        score = runner.wait_latest("images", event.image_signature, "safety_score@1")
        assert isinstance(score, SafetyScore)
        assert score.score == pytest.approx(reference_safety_score(pixels, weights), abs=1e-5)
        assert score.label == ("unsafe" if score.score >= 0.5 else "safe")
        assert score.model_version == "1"
    expected = {(name, version, model, "1") for (name, version), model in MODEL_OF.items()}

    def envelopes() -> set[tuple[str, int, str, str]]:
        return {
            (r.signal.name, r.signal.version, r.envelope.model_name, r.envelope.model_version)
            for r in runner.records()
        }

    # A value can be readable through GSS before the test's own changelog reader has it.
    runner.wait_for("every model's record on the changelog", lambda: envelopes() >= expected)
    assert envelopes() == expected


def test_model_failures_are_dead_lettered(runner: Runner, tmp_path: Path) -> None:
    """An image the model cannot take (a 0-pixel image) is dead-lettered, not retried
    forever, and the next image still gets its values."""
    bad = ImageEvent(image_signature=b"\x07" * 16, width=0, height=0)
    bad.event_time.FromDatetime(T0)
    good = ContentGenerator(seed=405).next_image(T0)[2]
    runner.send("content.images", [bad, good], key=lambda e: e.image_signature)  # type: ignore[attr-defined]
    letters = runner.wait_for(
        "two dead letters",
        lambda: (
            [d for d in runner.dead_letters() if d.entity_id == bad.image_signature.hex()]
            if len([d for d in runner.dead_letters() if d.entity_id == bad.image_signature.hex()])
            == len(MODEL_OF)
            else None
        ),
    )
    assert sorted(d.signal.name for d in letters) == sorted(n for n, _ in MODEL_OF)
    assert all(d.error_type == "InvalidArgumentError" for d in letters)
    assert isinstance(good, ImageEvent)
    runner.wait_latest("images", good.image_signature, "embedding@1")


def test_pretrained_model_signals(runner: Runner) -> None:
    """embedding@2 and safety_score@2 equal onnxruntime on the same inputs; ocr_text@1 reads
    the rendered text back; a flipped photo's embedding@2 is nearest its original."""
    coffee = scaled(photo("coffee.png"))
    cat = scaled(photo("chelsea.png"))
    pictures = [coffee, cat, np.ascontiguousarray(coffee[:, ::-1]), text_image(TEXTS[1])]
    events = [image_event(p, T0 + timedelta(minutes=1, seconds=i)) for i, p in enumerate(pictures)]
    runner.send("content.images", events, key=lambda e: e.image_signature)  # type: ignore[attr-defined]
    embeddings = []
    for event, pixels in zip(events, pictures, strict=True):
        got = runner.wait_latest("images", event.image_signature, "embedding@2")
        assert isinstance(got, Embedding)
        expected = run("efficientnet_lite0", PIXELS=efficientnet_input(pixels)[None])["EMBEDDING"][
            0
        ]
        np.testing.assert_allclose(got.values, expected, rtol=1e-4, atol=1e-5)
        embeddings.append(np.asarray(got.values))
        score = runner.wait_latest("images", event.image_signature, "safety_score@2")
        assert isinstance(score, SafetyScore)
        nsfw = run("open_nsfw", PIXELS=open_nsfw_input(pixels)[None])["NSFW"][0, 0]
        assert score.score == pytest.approx(float(nsfw), abs=1e-5)
        assert (score.label, score.model_version) == ("safe", "1")
    flipped = embeddings[2]
    assert flipped @ embeddings[0] > max(flipped @ embeddings[1], flipped @ embeddings[3])
    text = runner.wait_latest("images", events[3].image_signature, "ocr_text@1")
    assert isinstance(text, OcrText)
    assert [line.text for line in text.lines] == TEXTS[1]
    assert all(line.confidence > 0.8 and line.x1 > line.x0 for line in text.lines)
    photo_text = runner.wait_latest("images", events[1].image_signature, "ocr_text@1")
    assert isinstance(photo_text, OcrText)
    assert list(photo_text.lines) == []


def test_triton_killed_mid_run_dead_letters_then_recovers(
    runner: Runner, triton: LocalTriton
) -> None:
    """SIGKILL, not a graceful stop: the model plugins retry, then dead-letter the events
    that arrive while Triton is gone; the job keeps running and computes later events once
    Triton is back on the same address."""
    pictures = [scaled(photo(name), 200) for name in ("rocket.jpg", "brick.png", "camera.png")]
    before, during, after = (
        image_event(p, T0 + timedelta(minutes=2, seconds=i)) for i, p in enumerate(pictures)
    )

    def send(event: ImageEvent) -> None:
        runner.send("content.images", [event], key=lambda e: e.image_signature)  # type: ignore[attr-defined]

    send(before)
    runner.wait_latest("images", before.image_signature, "ocr_text@1")
    triton.kill()
    try:
        send(during)

        def lost() -> list[Any] | None:
            found = [
                d for d in runner.dead_letters() if d.entity_id == during.image_signature.hex()
            ]
            return found if len(found) == len(MODEL_OF) else None

        letters = runner.wait_for(
            "a dead letter per model plugin for the event sent while Triton was dead",
            lost,
            timeout=240,
        )
        assert {d.error_type for d in letters} == {"ModelUnavailableError"}
        assert all(d.attempts == 3 for d in letters), [d.attempts for d in letters]
    finally:
        triton.start()
    send(after)
    for name, version in MODEL_OF:
        runner.wait_latest("images", after.image_signature, f"{name}@{version}", timeout=120)
