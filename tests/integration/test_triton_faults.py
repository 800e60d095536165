"""Failure behaviour against the real Triton server: outage mid-run, restart, bad start-up."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from compute.triton.client import Inference, ModelClient, ModelUnavailableError
from gss.local.triton import LocalTriton, TritonStartError
from tests.triton_reference import MODELS, reference_embedding, sample_images

pytestmark = pytest.mark.integration

MODEL = "image_embedding"


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (tritonserver and its Python stubs)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(proc.name))
    return found


def repository_with(tmp_path: Path, *models: str) -> Path:
    repo = tmp_path / "models"
    for model in models:
        shutil.copytree(MODELS / model, repo / model, ignore=shutil.ignore_patterns("__pycache__"))
    return repo


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    """A local Triton serving image_embedding only, owned by this module (tests stop it)."""
    repo = repository_with(tmp_path_factory.mktemp("faults"), MODEL)
    with LocalTriton(repo) as server:
        yield server
    assert processes_mentioning(str(repo)) == []


def retries() -> float:
    return REGISTRY.get_sample_value("gss_model_retries_total", {"model_name": MODEL}) or 0.0


def test_outage_mid_run_fails_calls_clearly_then_flow_resumes(triton: LocalTriton) -> None:
    """Triton stopped under load: calls retry, then fail with ModelUnavailableError; after a
    restart on the same address the same client serves correct results again."""
    image = sample_images(1, seed=21)[0]
    expected = reference_embedding(image)
    client = ModelClient(
        triton.http_url,
        max_wait_seconds=0.005,
        deadline_seconds=5.0,
        max_attempts=3,
        retry_backoff_seconds=0.05,
        retry_backoff_max_seconds=0.2,
    )
    try:
        client.infer(MODEL, image)
        retries_before = retries()
        futures: list[Future[Inference]] = []
        stop_submitting = threading.Event()

        def produce() -> None:
            # Until told to stop (Triton may take seconds to exit): at most ~20 s.
            for _ in range(4000):
                if stop_submitting.is_set():
                    return
                futures.append(client.submit(MODEL, image))
                time.sleep(0.005)

        producer = threading.Thread(target=produce)
        producer.start()
        try:
            for _ in range(200):  # until 20 calls have succeeded, at most ~10 s
                if sum(f.done() for f in futures[:20]) == 20:
                    break
                time.sleep(0.05)
            triton.stop()
            time.sleep(0.5)  # keep submitting into the outage
        finally:
            stop_submitting.set()
            producer.join(timeout=30)

        succeeded, failed = [], []
        for future in futures:
            error = future.exception(timeout=30)
            if error is None:
                succeeded.append(future.result())
            else:
                failed.append(error)
        assert len(succeeded) >= 20
        assert failed, "calls after the outage must fail, not hang"
        assert all(isinstance(e, ModelUnavailableError) for e in failed), {repr(e) for e in failed}
        message = str(failed[-1])
        assert triton.http_url in message
        assert "did not serve image_embedding" in message
        assert "unavailable" in message
        assert retries() > retries_before
        for result in succeeded:
            np.testing.assert_allclose(result["EMBEDDING"], expected, atol=1e-6)

        triton.start()
        client.wait_ready([MODEL], timeout_seconds=60)
        np.testing.assert_allclose(client.infer(MODEL, image)["EMBEDDING"], expected, atol=1e-6)
    finally:
        client.close()


def test_call_rides_out_a_restart_within_its_deadline(triton: LocalTriton) -> None:
    """With deadline and attempts to spare, a call made while Triton restarts just succeeds."""
    image = sample_images(2, seed=22)[1]
    client = ModelClient(
        triton.http_url,
        deadline_seconds=90.0,
        max_attempts=200,
        retry_backoff_seconds=0.1,
        retry_backoff_max_seconds=0.5,
    )
    try:
        client.infer(MODEL, image)
        triton.stop()
        restart_errors: list[BaseException] = []

        def restart() -> None:
            time.sleep(0.5)
            try:
                triton.start()
            except BaseException as exc:
                restart_errors.append(exc)

        restarter = threading.Thread(target=restart)
        retries_before = retries()
        restarter.start()
        try:
            result = client.infer(MODEL, image)
        finally:
            restarter.join(timeout=120)
        assert restart_errors == []
        np.testing.assert_allclose(result["EMBEDDING"], reference_embedding(image), atol=1e-6)
        assert retries() > retries_before
        assert triton.is_running()
    finally:
        client.close()


def test_sigkill_mid_run_fails_in_flight_calls_then_the_same_client_recovers(
    triton: LocalTriton,
) -> None:
    """kill -9 of tritonserver (no drain, connections reset) with calls in flight: every call
    resolves -- served, or ModelUnavailableError after the client's retries, none hangs --
    no stub is left behind, and the same client serves again once Triton restarts."""
    image = sample_images(1, seed=23)[0]
    client = ModelClient(
        triton.http_url,
        max_wait_seconds=0.002,
        deadline_seconds=3.0,
        max_attempts=3,
        retry_backoff_seconds=0.05,
        retry_backoff_max_seconds=0.2,
    )
    try:
        client.infer(MODEL, image)
        futures = [client.submit(MODEL, image) for _ in range(200)]
        triton.kill()
        for _ in range(50):  # the stubs get SIGKILL too: gone within moments, at most ~5 s
            if not processes_mentioning(str(triton.model_repository)):
                break
            time.sleep(0.1)
        assert processes_mentioning(str(triton.model_repository)) == []
        late = [client.submit(MODEL, image) for _ in range(20)]
        outcomes = [f.exception(timeout=30) for f in futures + late]
        failed = [e for e in outcomes if e is not None]
        assert all(isinstance(e, ModelUnavailableError) for e in failed), {repr(e) for e in failed}
        assert all(e is not None for e in outcomes[-20:]), "calls after the kill must fail"
        triton.start()
        client.wait_ready([MODEL], timeout_seconds=60)
        np.testing.assert_allclose(
            client.infer(MODEL, image)["EMBEDDING"], reference_embedding(image), atol=1e-6
        )
    finally:
        client.close()


def test_model_that_fails_to_load_is_reported_and_nothing_is_left(tmp_path: Path) -> None:
    """A model whose initialize raises: TritonStartError quotes Triton's error, no process stays."""
    repo = repository_with(tmp_path, MODEL)
    model_py = repo / MODEL / "1" / "model.py"
    model_py.write_text(
        model_py.read_text().replace(
            "        self.projection = projection_matrix()",
            '        raise ValueError("projection file is corrupt")',
        )
    )
    with (
        pytest.raises(TritonStartError, match="projection file is corrupt"),
        LocalTriton(repo, startup_timeout_seconds=60),
    ):
        pass
    assert processes_mentioning(str(repo)) == []


def test_gpu_override_is_selected_by_config_name(tmp_path: Path) -> None:
    """model_config_name="gpu" loads configs/gpu.pbtxt: on this GPU-less host Triton refuses
    its KIND_GPU instances, which shows the override is what it read."""
    repo = repository_with(tmp_path, MODEL)
    with (
        pytest.raises(TritonStartError, match="KIND_GPU but no GPUs are available"),
        LocalTriton(repo, model_config_name="gpu", startup_timeout_seconds=60),
    ):
        pass
    assert processes_mentioning(str(repo)) == []


def test_plugin_dead_letters_during_outage_and_the_job_goes_on(triton: LocalTriton) -> None:
    """images/embedding@1 in the plugin harness: with Triton down the event is dead-lettered
    (after the client's and the plugin's retries) and later events are computed again."""
    from datetime import UTC, datetime

    from compute.content import image_event
    from compute.examples.images.embedding import embedding
    from compute.harness import LocalHarness
    from compute.triton.inputs import image_tensor

    pictures = sample_images(3, seed=41)
    events = [
        image_event(pixels, datetime(2026, 11, 1, 12, i, tzinfo=UTC))
        for i, pixels in enumerate(pictures)
    ]
    client = ModelClient(
        triton.http_url,
        deadline_seconds=3.0,
        max_attempts=2,
        retry_backoff_seconds=0.05,
        retry_backoff_max_seconds=0.1,
    )
    harness = LocalHarness([embedding], models=client)
    try:
        assert [o.record is not None for o in harness.send("content.images", events[0])] == [True]
        triton.stop()
        (lost,) = harness.send("content.images", events[1])
        assert lost.dead_letter is not None
        assert lost.dead_letter.error_type == "ModelUnavailableError"
        assert "did not serve image_embedding" in lost.dead_letter.error
        assert lost.dead_letter.attempts == embedding.retry.attempts
        triton.start()
        client.wait_ready([MODEL], timeout_seconds=60)
        (back,) = harness.send("content.images", events[2])
        assert back.record is not None
        value: Any = harness.latest("images", events[2].image_signature, "embedding@1")
        assert value is not None
        np.testing.assert_allclose(
            value.values, reference_embedding(image_tensor(pictures[2])), atol=1e-6
        )
    finally:
        harness.close()
        client.close()
