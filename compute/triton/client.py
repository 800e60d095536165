"""The model client: Triton inference with client-side micro-batching, deadlines and retries.

The interface the plugin runtime (compute/plugin) calls; see docs/models.md::

    from compute.triton.client import ModelClient
    from compute.triton.inputs import image_tensor

    client = ModelClient.from_settings(settings.triton, url)   # or ModelClient("host:8000")

    # per record: joins a micro-batch with concurrent callers (max_batch_size / max_wait_seconds)
    result = client.infer("image_embedding", image_tensor(pixels))       # blocks
    future = client.submit("image_embedding", image_tensor(pixels))      # Future[Inference]

    # per batch (a Flink operator's bundle): split into requests of at most max_batch_size
    results = client.infer_batch("image_embedding", [image_tensor(p) for p in images])

    results[0]["EMBEDDING"]        # np.ndarray [64] float32, this item's output (no batch dim)
    results[0].model_name          # "image_embedding"
    results[0].model_version       # "1": the version that computed it, for the envelope

An item is one model input without the batch dimension: an ``np.ndarray`` for single-input
models, or a mapping of input name to array. Its shape and dtype are checked against the
model's metadata before it is queued (:class:`ModelInputError`, never retried).

Failures, for the plugin's retry and dead-letter policy:

- :class:`ModelUnavailableError` (a ``contract.errors.UnavailableError``): Triton unreachable,
  overloaded or the call's deadline spent, after ``max_attempts`` tries with exponential
  backoff. Transient: the record can be retried later.
- :class:`ModelInputError` (``InvalidArgumentError``): the item can never succeed as sent.
- :class:`ModelNotFoundError` (``NotFoundError``): no such model on the server.
- :class:`ModelExecutionError`: the model itself raised (Triton INTERNAL and the like).

The client is thread-safe; one instance per process serves every model and thread. It talks
to Triton's HTTP endpoint through :mod:`compute.triton.transport` (``tritonclient.http``).
"""

from __future__ import annotations

import itertools
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import structlog

from compute.triton import metrics
from compute.triton.transport import (
    ErrorKind,
    Tensor,
    TensorSpec,
    TransportError,
    TritonTransport,
    numpy_dtype,
    triton_dtype,
)
from contract.errors import GssError, InvalidArgumentError, NotFoundError, UnavailableError
from contract.settings import TritonSettings

log = structlog.get_logger(__name__)

T = TypeVar("T")
Item = Tensor | Mapping[str, Tensor]

__all__ = [
    "Inference",
    "Item",
    "ModelClient",
    "ModelError",
    "ModelExecutionError",
    "ModelInfo",
    "ModelInputError",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "TensorSpec",
]

# Transport error kinds worth another attempt: the server may answer differently in a moment.
TRANSIENT_KINDS: frozenset[ErrorKind] = frozenset({"unavailable"})
_METADATA_TIMEOUT_SECONDS = 5.0
_CLOSE_JOIN_SECONDS = 5.0


class ModelError(GssError):
    """Base of the model client's errors; ``model_name`` says which model."""

    def __init__(self, message: str, model_name: str) -> None:
        super().__init__(message)
        self.model_name = model_name


class ModelUnavailableError(ModelError, UnavailableError):
    """Triton could not serve the call within its attempts and deadline (transient)."""


class ModelInputError(ModelError, InvalidArgumentError):
    """The item does not match the model's inputs; retrying cannot help."""


class ModelNotFoundError(ModelError, NotFoundError):
    """The server has no such model (or not loaded)."""


class ModelExecutionError(ModelError):
    """Triton accepted the request but the model failed (status INTERNAL and others)."""


@dataclass(frozen=True)
class ModelInfo:
    """What the client learned about a model from the server's metadata and config."""

    name: str
    versions: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]  # shapes without the batch dim
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int  # 0: the model takes no batch dimension


class Inference(Mapping[str, Tensor]):
    """One item's outputs by name (no batch dim), and the model name and version that made them."""

    __slots__ = ("model_name", "model_version", "outputs")

    def __init__(self, model_name: str, model_version: str, outputs: dict[str, Tensor]) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.outputs = outputs

    def __getitem__(self, name: str) -> Tensor:
        return self.outputs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.outputs)

    def __len__(self) -> int:
        return len(self.outputs)

    def __repr__(self) -> str:
        shapes = {k: v.shape for k, v in self.outputs.items()}
        return f"Inference({self.model_name!r}, version={self.model_version!r}, outputs={shapes})"


@dataclass
class _Pending:
    inputs: dict[str, Tensor]
    future: Future[Inference]
    deadline: float
    submitted: float


class _Batcher:
    """Collects one model's submitted items into requests and sends them on a small pool."""

    def __init__(self, client: ModelClient, model_name: str, batch_size: int) -> None:
        self.client = client
        self.model_name = model_name
        self.batch_size = batch_size
        self.queue: queue.Queue[_Pending | None] = queue.Queue()
        self.slots = threading.BoundedSemaphore(client.max_in_flight)
        self.pool = ThreadPoolExecutor(
            max_workers=client.max_in_flight, thread_name_prefix=f"gss-model-{model_name}"
        )
        self.thread = threading.Thread(
            target=self._run, name=f"gss-batcher-{model_name}", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            window_ends = time.monotonic() + self.client.max_wait_seconds
            stop = False
            while len(batch) < self.batch_size:
                remaining = window_ends - time.monotonic()
                try:
                    item = (
                        self.queue.get(timeout=remaining)
                        if remaining > 0
                        else self.queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self.slots.acquire()  # backpressure: at most max_in_flight requests per model
            self.pool.submit(self._send, batch)
            if stop:
                return

    def _send(self, batch: list[_Pending]) -> None:
        try:
            live = [p for p in batch if p.future.set_running_or_notify_cancel()]
            if live:
                self.client._run_batch(self.model_name, live)
        finally:
            self.slots.release()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=_CLOSE_JOIN_SECONDS)
        self.pool.shutdown(wait=True, cancel_futures=False)
        # Anything submitted after the stop marker never reached a batch.
        while True:
            try:
                pending = self.queue.get_nowait()
            except queue.Empty:
                break
            if pending is not None and pending.future.set_running_or_notify_cancel():
                pending.future.set_exception(
                    ModelUnavailableError(
                        f"model client closed before {self.model_name} was called", self.model_name
                    )
                )


class ModelClient:
    """Batched, retried, measured calls to the models of one Triton server; thread-safe.

    ``max_batch_size`` items at most per request (also capped by the model's own
    ``max_batch_size``); a submitted item waits at most ``max_wait_seconds`` for company;
    at most ``max_in_flight`` requests per model at once. Each call has ``deadline_seconds``
    in total, retries included; transient errors are retried up to ``max_attempts`` times
    with exponential backoff from ``retry_backoff_seconds`` (jittered, capped at
    ``retry_backoff_max_seconds``).
    """

    def __init__(
        self,
        url: str,
        *,
        max_batch_size: int = 32,
        max_wait_seconds: float = 0.005,
        max_in_flight: int = 2,
        deadline_seconds: float = 10.0,
        max_attempts: int = 4,
        retry_backoff_seconds: float = 0.1,
        retry_backoff_max_seconds: float = 2.0,
        transport: Any = None,
    ) -> None:
        if max_batch_size < 1 or max_in_flight < 1 or max_attempts < 1:
            raise InvalidArgumentError(
                "max_batch_size, max_in_flight and max_attempts must be at least 1, got "
                f"{max_batch_size}, {max_in_flight}, {max_attempts}"
            )
        self.url = url
        self.max_batch_size = max_batch_size
        self.max_wait_seconds = max_wait_seconds
        self.max_in_flight = max_in_flight
        self.deadline_seconds = deadline_seconds
        self.max_attempts = max_attempts
        self.retry_backoff_seconds = retry_backoff_seconds
        self.retry_backoff_max_seconds = retry_backoff_max_seconds
        # Anything with TritonTransport's methods; tests pass fakes.
        self.transport = transport if transport is not None else TritonTransport(url)
        self._lock = threading.Lock()
        self._info: dict[str, ModelInfo] = {}
        self._versions: dict[str, str] = {}
        self._batchers: dict[str, _Batcher] = {}
        self._closed = False

    @classmethod
    def from_settings(cls, settings: TritonSettings, url: str | None = None) -> ModelClient:
        """A client for ``url`` (or ``settings.url``) with the settings' batching and retries."""
        target = url or settings.url
        if not target:
            raise InvalidArgumentError(
                "no Triton endpoint: set GSS_TRITON__URL or start one with "
                "gss.local.triton.triton_url(settings)"
            )
        return cls(
            target,
            max_batch_size=settings.max_batch_size,
            max_wait_seconds=settings.max_wait_seconds,
            max_in_flight=settings.max_in_flight,
            deadline_seconds=settings.deadline_seconds,
            max_attempts=settings.max_attempts,
            retry_backoff_seconds=settings.retry_backoff_seconds,
            retry_backoff_max_seconds=settings.retry_backoff_max_seconds,
        )

    # -- model facts -------------------------------------------------------------------

    def model_info(self, model_name: str) -> ModelInfo:
        """Inputs, outputs, versions and max batch size of a model (fetched once, cached)."""
        with self._lock:
            cached = self._info.get(model_name)
        if cached is not None:
            return cached
        deadline = time.monotonic() + self.deadline_seconds
        meta = self._with_retries(
            model_name,
            deadline,
            lambda timeout: self.transport.model_metadata(model_name, timeout),
        )
        config = self._with_retries(
            model_name,
            deadline,
            lambda timeout: self.transport.model_config(model_name, timeout),
        )
        batched = config.max_batch_size > 0

        def item_spec(tensor: TensorSpec) -> TensorSpec:
            return TensorSpec(
                tensor.name, tensor.datatype, tensor.shape[1:] if batched else tensor.shape
            )

        info = ModelInfo(
            name=model_name,
            versions=meta.versions,
            inputs=tuple(item_spec(t) for t in meta.inputs),
            outputs=tuple(item_spec(t) for t in meta.outputs),
            max_batch_size=config.max_batch_size,
        )
        with self._lock:
            self._info[model_name] = info
        return info

    def model_version(self, model_name: str) -> str:
        """The version that served the model's latest call (before any: the newest available)."""
        with self._lock:
            version = self._versions.get(model_name)
        if version is not None:
            return version
        versions = self.model_info(model_name).versions
        return max(versions, key=lambda v: int(v) if v.isdigit() else -1) if versions else ""

    def wait_ready(self, model_names: Sequence[str], timeout_seconds: float) -> None:
        """Block until every model is READY, or raise ModelUnavailableError."""
        deadline = time.monotonic() + timeout_seconds
        pending = list(model_names)
        last_error = ""
        while pending:
            still: list[str] = []
            for name in pending:
                try:
                    if not self.transport.model_ready(
                        name, timeout=min(_METADATA_TIMEOUT_SECONDS, timeout_seconds)
                    ):
                        still.append(name)
                except TransportError as exc:
                    last_error = f"{exc.kind}: {exc.message}"
                    still.append(name)
            pending = still
            if pending and time.monotonic() >= deadline:
                raise ModelUnavailableError(
                    f"Triton at {self.url}: models {pending} not READY within {timeout_seconds:.0f} s"
                    + (f" (last error {last_error})" if last_error else ""),
                    pending[0],
                )
            if pending:
                time.sleep(0.2)

    # -- inference ---------------------------------------------------------------------

    def submit(
        self, model_name: str, item: Item, *, deadline_seconds: float | None = None
    ) -> Future[Inference]:
        """Queue one item for the model's next micro-batch; the future holds its Inference."""
        now = time.monotonic()
        info = self.model_info(model_name)
        pending = _Pending(
            inputs=self._check_item(info, item),
            future=Future(),
            deadline=now + (deadline_seconds or self.deadline_seconds),
            submitted=now,
        )
        self._enqueue(info, pending)
        return pending.future

    def infer(
        self, model_name: str, item: Item, *, deadline_seconds: float | None = None
    ) -> Inference:
        """One item's outputs, computed in a micro-batch with concurrent callers (blocks)."""
        return self.submit(model_name, item, deadline_seconds=deadline_seconds).result()

    def infer_batch(
        self, model_name: str, items: Sequence[Item], *, deadline_seconds: float | None = None
    ) -> list[Inference]:
        """Outputs for many items, in order, sent as requests of at most the batch size.

        All or nothing: if any request fails (after retries), the error is raised and no
        result is returned; ``deadline_seconds`` bounds the whole call.
        """
        if not items:
            return []
        start = time.monotonic()
        deadline = start + (deadline_seconds or self.deadline_seconds)
        info = self.model_info(model_name)
        checked = [self._check_item(info, item) for item in items]
        size = self._batch_size(info)
        results: list[Inference] = []
        for offset in range(0, len(checked), size):
            chunk = checked[offset : offset + size]
            results.extend(self._infer_chunk(info, chunk, deadline))
        elapsed = time.monotonic() - start
        for _ in results:
            metrics.CALL_SECONDS.labels(model_name).observe(elapsed)
        return results

    # -- internals ---------------------------------------------------------------------

    def _batch_size(self, info: ModelInfo) -> int:
        if info.max_batch_size == 0:
            return 1
        return min(self.max_batch_size, info.max_batch_size)

    def _enqueue(self, info: ModelInfo, pending: _Pending) -> None:
        # Under the lock that close() takes to set _closed: every accepted item is queued
        # before the batcher's stop marker, so it is sent and its future resolved.
        with self._lock:
            if self._closed:
                raise ModelUnavailableError("model client is closed", info.name)
            batcher = self._batchers.get(info.name)
            if batcher is None:
                batcher = _Batcher(self, info.name, self._batch_size(info))
                self._batchers[info.name] = batcher
            batcher.queue.put(pending)

    def _check_item(self, info: ModelInfo, item: Item) -> dict[str, Tensor]:
        if isinstance(item, np.ndarray):
            if len(info.inputs) != 1:
                names = [s.name for s in info.inputs]
                raise ModelInputError(
                    f"{info.name} takes inputs {names}: pass a mapping of name to array", info.name
                )
            item = {info.inputs[0].name: item}
        if not isinstance(item, Mapping):
            raise ModelInputError(
                f"an item for {info.name} is a numpy array or a mapping of input name to array, "
                f"got {type(item).__name__}",
                info.name,
            )
        expected = {s.name for s in info.inputs}
        if set(item) != expected:
            raise ModelInputError(
                f"{info.name} takes inputs {sorted(expected)}, got {sorted(item)}", info.name
            )
        checked: dict[str, Tensor] = {}
        for spec in info.inputs:
            array = np.asarray(item[spec.name])
            if triton_dtype(array) != spec.datatype:
                raise ModelInputError(
                    f"{info.name} input {spec.name} is {spec.datatype} "
                    f"({numpy_dtype(spec.datatype)}), got {array.dtype}",
                    info.name,
                )
            fits = len(array.shape) == len(spec.shape) and all(
                want in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
            )
            if not fits:
                raise ModelInputError(
                    f"{info.name} input {spec.name} has shape {list(spec.shape)} per item "
                    f"(-1: any), got {list(array.shape)}; compute.triton.inputs.image_tensor "
                    "makes image inputs",
                    info.name,
                )
            checked[spec.name] = array
        return checked

    def _run_batch(self, model_name: str, batch: list[_Pending]) -> None:
        """Send one micro-batch and resolve its futures (called on the batcher's pool)."""
        info = self.model_info(model_name)
        deadline = min(p.deadline for p in batch)
        try:
            results = self._infer_chunk(info, [p.inputs for p in batch], deadline)
        except BaseException as exc:
            for p in batch:
                p.future.set_exception(exc)
            return
        now = time.monotonic()
        for p, result in zip(batch, results, strict=True):
            metrics.CALL_SECONDS.labels(model_name).observe(now - p.submitted)
            p.future.set_result(result)

    def _infer_chunk(
        self, info: ModelInfo, chunk: list[dict[str, Tensor]], deadline: float
    ) -> list[Inference]:
        batched = info.max_batch_size > 0
        if batched:
            inputs = {s.name: np.stack([item[s.name] for item in chunk]) for s in info.inputs}
        else:
            inputs = chunk[0]
        outputs = [s.name for s in info.outputs]

        def call(timeout: float) -> tuple[str, dict[str, Tensor]]:
            started = time.monotonic()
            reply: tuple[str, dict[str, Tensor]] = self.transport.infer(
                info.name, inputs, timeout, outputs
            )
            metrics.INFERENCE_SECONDS.labels(info.name).observe(time.monotonic() - started)
            return reply

        version, tensors = self._with_retries(info.name, deadline, call, known_model=True)
        metrics.BATCH_SIZE.labels(info.name).observe(len(chunk))
        metrics.INFERENCES.labels(info.name).inc(len(chunk))
        with self._lock:
            self._versions[info.name] = version
        if not batched:
            return [Inference(info.name, version, tensors)]
        for name, tensor in tensors.items():
            if tensor.shape[:1] != (len(chunk),):
                raise ModelExecutionError(
                    f"{info.name} returned {name} with shape {list(tensor.shape)} "
                    f"for a batch of {len(chunk)}",
                    info.name,
                )
        return [
            Inference(info.name, version, {name: t[i] for name, t in tensors.items()})
            for i in range(len(chunk))
        ]

    def _with_retries(
        self,
        model_name: str,
        deadline: float,
        call: Callable[[float], T],
        *,
        known_model: bool = False,
    ) -> T:
        """``call(timeout)`` until it succeeds, fails for good, or attempts/deadline run out.

        ``known_model``: the server has served this model's metadata before, so ``not_found``
        means it is being unloaded or reloaded (a restart, a rollout): retried like
        ``unavailable``. ``deadline`` means this attempt had the whole remaining budget.
        """
        last: TransportError | None = None
        started = time.monotonic()
        for attempt in itertools.count(1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return call(remaining)
            except TransportError as exc:
                last = exc
                metrics.ERRORS.labels(model_name, exc.kind).inc()
                if exc.kind == "deadline":
                    break
                transient = exc.kind in TRANSIENT_KINDS or (known_model and exc.kind == "not_found")
                if not transient:
                    raise _permanent_error(model_name, self.url, exc) from exc
                if attempt >= self.max_attempts:
                    break
                backoff = min(
                    self.retry_backoff_seconds * 2 ** (attempt - 1), self.retry_backoff_max_seconds
                ) * random.uniform(0.5, 1.0)
                if time.monotonic() + backoff >= deadline:
                    break
                metrics.RETRIES.labels(model_name).inc()
                log.warning(
                    "model_call_retrying",
                    model_name=model_name,
                    attempt=attempt,
                    error_kind=exc.kind,
                    backoff_seconds=round(backoff, 3),
                    error=exc.message,
                )
                time.sleep(backoff)
        elapsed = time.monotonic() - started
        detail = f"{last.kind}: {last.message}" if last is not None else "no attempt left"
        log.error(
            "model_call_failed",
            model_name=model_name,
            url=self.url,
            elapsed_seconds=round(elapsed, 3),
            error=detail,
        )
        raise ModelUnavailableError(
            f"Triton at {self.url} did not serve {model_name} within {elapsed:.1f} s "
            f"(max_attempts {self.max_attempts}, deadline_seconds {self.deadline_seconds}); "
            f"last error {detail}. Check that the server is up and the model READY "
            "(gss models check), or raise TritonSettings.deadline_seconds.",
            model_name,
        )

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Finish queued items, stop the batchers and close the connections."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            batchers = list(self._batchers.values())
        for batcher in batchers:
            batcher.close()
        self.transport.close()

    def __enter__(self) -> ModelClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _permanent_error(model_name: str, url: str, exc: TransportError) -> ModelError:
    if exc.kind == "not_found":
        return ModelNotFoundError(
            f"Triton at {url} has no model {model_name!r} ({exc.message}); "
            "check compute/models or TritonSettings.url",
            model_name,
        )
    if exc.kind == "invalid":
        return ModelInputError(
            f"Triton rejected the input for {model_name}: {exc.message}", model_name
        )
    return ModelExecutionError(
        f"{model_name} failed on Triton at {url}: {exc.kind}: {exc.message}", model_name
    )
