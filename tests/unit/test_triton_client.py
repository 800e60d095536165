"""The model client's batching, retries, deadlines and errors, over a fake transport.

The fake stands in for compute.triton.transport (Triton's HTTP endpoint) only;
tests/integration/test_triton_*.py run the same client against the real server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client import REGISTRY

from compute.triton.client import (
    Inference,
    ModelClient,
    ModelExecutionError,
    ModelInputError,
    ModelNotFoundError,
    ModelUnavailableError,
)
from compute.triton.transport import (
    ErrorKind,
    ModelConfig,
    ModelMetadata,
    TensorSpec,
    TransportError,
)
from contract.errors import InvalidArgumentError, UnavailableError

MODEL = "doubler"


class FakeTransport:
    """A model 'doubler': FP32 [4] in, 'Y' = 2x out; scripted failures before answers."""

    def __init__(self, model_max_batch: int = 8, failures: Sequence[ErrorKind] = ()) -> None:
        self.model_max_batch = model_max_batch
        self.failures = list(failures)
        self.batch_sizes: list[int] = []
        self.attempts = 0
        self.delay = 0.0
        self.lock = threading.Lock()
        self.closed = False

    def model_metadata(self, model_name: str, timeout: float) -> ModelMetadata:
        if model_name != MODEL:
            raise TransportError("not_found", f"unknown model {model_name}")
        return ModelMetadata(
            name=MODEL,
            versions=("1", "3"),
            platform="python",
            inputs=(TensorSpec("X", "FP32", (-1, 4)),),
            outputs=(TensorSpec("Y", "FP32", (-1, 4)),),
        )

    def model_config(self, model_name: str, timeout: float) -> ModelConfig:
        return ModelConfig(name=model_name, max_batch_size=self.model_max_batch)

    def model_ready(self, model_name: str, timeout: float) -> bool:
        return True

    def infer(
        self,
        model_name: str,
        inputs: Mapping[str, Any],
        timeout: float,
        outputs: Sequence[str] = (),
    ) -> tuple[str, dict[str, Any]]:
        with self.lock:
            self.attempts += 1
            failure = self.failures.pop(0) if self.failures else None
        if self.delay:
            time.sleep(self.delay)
        if failure is not None:
            raise TransportError(failure, f"scripted {failure}")
        x = inputs["X"]
        with self.lock:
            self.batch_sizes.append(x.shape[0])
        return "3", {"Y": x * 2}

    def close(self) -> None:
        self.closed = True


def make_client(transport: FakeTransport, **overrides: Any) -> ModelClient:
    options: dict[str, Any] = {
        "max_batch_size": 32,
        "max_wait_seconds": 0.2,
        "deadline_seconds": 5.0,
        "max_attempts": 3,
        "retry_backoff_seconds": 0.01,
        "retry_backoff_max_seconds": 0.02,
    }
    options.update(overrides)
    return ModelClient("fake:1", transport=transport, **options)


def item(value: float) -> npt.NDArray[np.float32]:
    return np.full(4, value, dtype=np.float32)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"model_name": MODEL, **labels}) or 0.0


def test_infer_returns_this_items_outputs_and_model_version() -> None:
    """infer() gives the item's output without batch dim, the model name and served version."""
    with make_client(FakeTransport(), max_wait_seconds=0.0) as client:
        result = client.infer(MODEL, item(1.5))
    assert isinstance(result, Inference)
    np.testing.assert_array_equal(result["Y"], item(3.0))
    assert (result.model_name, result.model_version) == (MODEL, "3")
    assert dict(result).keys() == {"Y"}


def test_concurrent_submits_share_one_request() -> None:
    """Items submitted within max_wait_seconds go out together, capped by the model's batch size."""
    transport = FakeTransport(model_max_batch=8)
    batches_before = metric("gss_model_batch_size_count")
    with make_client(transport, max_wait_seconds=1.0) as client:
        futures = [client.submit(MODEL, item(i)) for i in range(16)]
        results = [f.result(timeout=10) for f in futures]
    assert transport.batch_sizes == [8, 8]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["Y"], item(2.0 * i))
    assert metric("gss_model_batch_size_count") - batches_before == 2


def test_infer_batch_splits_by_the_smaller_batch_limit_and_keeps_order() -> None:
    """infer_batch sends min(client, model) max batch per request; results stay in order."""
    transport = FakeTransport(model_max_batch=8)
    with make_client(transport, max_batch_size=32) as client:
        results = client.infer_batch(MODEL, [item(i) for i in range(20)])
    assert transport.batch_sizes == [8, 8, 4]
    assert [float(r["Y"][0]) for r in results] == [2.0 * i for i in range(20)]
    assert client.infer_batch(MODEL, []) == []


def test_transient_errors_are_retried_then_succeed() -> None:
    """Unavailable twice, then an answer: the call succeeds and two retries are counted."""
    transport = FakeTransport(failures=["unavailable"] * 2)
    retries_before = metric("gss_model_retries_total")
    with make_client(transport, max_attempts=3) as client:
        result = client.infer_batch(MODEL, [item(1)])
    np.testing.assert_array_equal(result[0]["Y"], item(2))
    assert transport.attempts == 3
    assert metric("gss_model_retries_total") - retries_before == 2


def test_persistent_unavailability_raises_after_max_attempts() -> None:
    """A server that stays unavailable gives ModelUnavailableError after exactly max_attempts."""
    transport = FakeTransport(failures=["unavailable"] * 10)
    errors_before = metric("gss_model_errors_total", kind="unavailable")
    with make_client(transport, max_attempts=3) as client:
        future = client.submit(MODEL, item(1))
        with pytest.raises(ModelUnavailableError, match=r"fake:1 did not serve doubler") as caught:
            future.result(timeout=10)
    assert isinstance(caught.value, UnavailableError)
    assert caught.value.model_name == MODEL
    assert "unavailable" in str(caught.value)
    assert transport.attempts == 3
    assert metric("gss_model_errors_total", kind="unavailable") - errors_before == 3


def test_deadline_bounds_the_call_including_retries() -> None:
    """With attempts left but the deadline spent, the call stops at the deadline."""
    transport = FakeTransport(failures=["unavailable"] * 100)
    with (
        make_client(
            transport, max_attempts=100, retry_backoff_seconds=0.05, retry_backoff_max_seconds=0.05
        ) as client,
        pytest.raises(ModelUnavailableError),
    ):
        client.infer_batch(MODEL, [item(1)], deadline_seconds=0.3)
    assert 1 < transport.attempts < 100


def test_deadline_exceeded_is_not_retried() -> None:
    """A deadline error means the budget is gone: one attempt, then ModelUnavailableError."""
    transport = FakeTransport(failures=["deadline"])
    with make_client(transport) as client, pytest.raises(ModelUnavailableError):
        client.infer_batch(MODEL, [item(1)])
    assert transport.attempts == 1


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("invalid", ModelInputError),
        ("internal", ModelExecutionError),
    ],
)
def test_permanent_errors_are_not_retried(kind: ErrorKind, error: type[Exception]) -> None:
    """Server-side rejections and model failures raise at once, with the kind in the message."""
    transport = FakeTransport(failures=[kind])
    expected = kind if error is ModelExecutionError else "doubler"
    with make_client(transport) as client, pytest.raises(error, match=expected):
        client.infer(MODEL, item(1))
    assert transport.attempts == 1


def test_model_gone_after_first_contact_is_retried() -> None:
    """not_found for a model whose metadata was served (unloading in a restart) is retried."""
    transport = FakeTransport(failures=["not_found"])
    with make_client(transport) as client:
        result = client.infer(MODEL, item(1))
    np.testing.assert_array_equal(result["Y"], item(2))
    assert transport.attempts == 2


def test_unknown_model_is_not_found() -> None:
    """A model the server does not have raises ModelNotFoundError naming it."""
    with make_client(FakeTransport()) as client, pytest.raises(ModelNotFoundError, match="nope"):
        client.infer("nope", item(1))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros(5, dtype=np.float32), r"shape \[4\]"),
        (np.zeros(4, dtype=np.float64), "FP32"),
        ({"Z": np.zeros(4, dtype=np.float32)}, r"inputs \['X'\]"),
        ([1.0, 2.0, 3.0, 4.0], "numpy array or a mapping"),
    ],
)
def test_bad_items_are_rejected_before_any_request(bad: Any, message: str) -> None:
    """Wrong shape, dtype, input names or type raise ModelInputError and send nothing."""
    transport = FakeTransport()
    with make_client(transport) as client:
        with pytest.raises(ModelInputError, match=message) as caught:
            client.submit(MODEL, bad)
        with pytest.raises(InvalidArgumentError):
            client.infer_batch(MODEL, [item(1), bad])
    assert isinstance(caught.value, InvalidArgumentError)
    assert transport.attempts == 0


def test_model_version_before_and_after_a_call() -> None:
    """Before any call the newest available version; afterwards the version that answered."""
    with make_client(FakeTransport()) as client:
        assert client.model_version(MODEL) == "3"
        client.infer_batch(MODEL, [item(1)])
        assert client.model_version(MODEL) == "3"


def test_in_flight_requests_are_capped() -> None:
    """No more than max_in_flight requests of one model run at once."""
    transport = FakeTransport(model_max_batch=1)
    transport.delay = 0.05
    running = 0
    peak = 0
    guard = threading.Lock()
    original = transport.infer

    def counting_infer(*args: Any, **kwargs: Any) -> tuple[str, dict[str, Any]]:
        nonlocal running, peak
        with guard:
            running += 1
            peak = max(peak, running)
        try:
            return original(*args, **kwargs)
        finally:
            with guard:
                running -= 1

    transport.infer = counting_infer  # type: ignore[method-assign]
    with make_client(transport, max_in_flight=2, max_wait_seconds=0.0) as client:
        futures = [client.submit(MODEL, item(i)) for i in range(8)]
        for f in futures:
            f.result(timeout=10)
    assert peak == 2


def test_close_finishes_queued_items_and_refuses_new_ones() -> None:
    """close() lets queued items complete, closes the transport, then submit raises."""
    transport = FakeTransport()
    client = make_client(transport, max_wait_seconds=0.3)
    future = client.submit(MODEL, item(1))
    client.close()
    np.testing.assert_array_equal(future.result(timeout=10)["Y"], item(2))
    assert transport.closed
    with pytest.raises(ModelUnavailableError, match="closed"):
        client.submit(MODEL, item(1))


def test_invalid_limits_are_refused() -> None:
    """A zero batch size or attempt count is a configuration error, named in the message."""
    with pytest.raises(InvalidArgumentError, match="max_batch_size"):
        ModelClient("fake:1", max_batch_size=0, transport=FakeTransport())
