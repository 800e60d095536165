"""Model plugins (images/embedding@1, images/safety_score@1) against a real Triton server,
in both execution modes: the harness calling the batched client in-process, and a Flink
MiniCluster job whose async operators call Triton, checked through GSS lookups."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from compute.content import image_array
from compute.examples.images.embedding import embedding
from compute.examples.images.safety_score import safety_score
from compute.flink import gateway
from compute.flink.run import ComputeJob
from compute.harness import LocalHarness
from compute.triton import EXAMPLE_MODEL_REPOSITORY
from compute.triton.client import ModelClient
from compute.triton.inputs import image_tensor
from contract.registry import load_registry
from contract.settings import load_settings
from contract.v1.content_pb2 import ImageEvent
from contract.v1.signals_pb2 import Embedding, SafetyScore
from gss.local.generator import ContentGenerator
from gss.local.triton import LocalTriton
from tests.compute_support import FlinkRunner, HarnessRunner, Runner, TopicReader, all_topics
from tests.conftest import server_settings
from tests.triton_reference import load_safety_weights, reference_embedding, reference_safety_score

pytestmark = pytest.mark.integration

PLUGINS = [embedding, safety_score]
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
            triton={"url": triton.http_url},
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
    with ModelClient(triton.http_url, max_wait_seconds=0.005) as client:
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
        assert (score.label, score.model_version) == ("unsafe", "1")
    expected = {("embedding", "image_embedding", "1"), ("safety_score", "safety_classifier", "1")}

    def envelopes() -> set[tuple[str, str, str]]:
        return {
            (r.signal.name, r.envelope.model_name, r.envelope.model_version)
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
            == 2
            else None
        ),
    )
    assert sorted(d.signal.name for d in letters) == ["embedding", "safety_score"]
    assert all(d.error_type == "InvalidArgumentError" for d in letters)
    assert isinstance(good, ImageEvent)
    runner.wait_latest("images", good.image_signature, "embedding@1")
