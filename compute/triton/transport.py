"""Triton's inference protocol through ``tritonclient.http``: one blocking call per method.

No batching, retries or metrics here (that is :mod:`compute.triton.client`). Answers are the
small frozen dataclasses below, errors are :class:`TransportError` with a ``kind`` the client
classifies (``unavailable`` is worth another attempt, the rest are not). Tensors travel as
binary data beside the JSON header (KServe v2 binary tensor extension).

Why HTTP: ``tritonclient.grpc`` (every release from 2.50 on) refuses to import under grpcio
< 1.66.1, and PyFlink's apache-beam caps grpcio below that. ``tritonclient.http`` speaks the
same KServe v2 protocol with the same binary tensors on Triton's HTTP port (8000). Moving to
``tritonclient.grpc`` once the cap lifts is a change inside this module.

``tritonclient.http.InferenceServerClient`` is not thread-safe, so each thread gets its own
(``threading.local``), created on first use. Each call is bounded by its ``timeout``; a call
that failed at the connection level drops that thread's client, so the next attempt connects
afresh (a restarted Triton is used again at once).
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import gevent  # type: ignore[import-untyped]  # no type hints; tritonclient.http runs on it
import numpy as np
import numpy.typing as npt
import tritonclient.http as triton_http
from tritonclient.utils import (
    InferenceServerException,
    np_to_triton_dtype,
    triton_to_np_dtype,
)

from contract.errors import GssError, InvalidArgumentError

Tensor = npt.NDArray[Any]
T = TypeVar("T")

ErrorKind = Literal["unavailable", "not_found", "invalid", "deadline", "internal"]

# Triton's HTTP status for each of its error codes (UNAVAILABLE 503, NOT_FOUND 404, INTERNAL
# 500, UNSUPPORTED 501, INVALID_ARG/UNKNOWN/CANCELLED/ALREADY_EXISTS 400), plus what proxies
# and ingresses in front of it answer when it is away or overloaded.
_KIND_BY_STATUS: dict[str, ErrorKind] = {
    "400": "invalid",
    "404": "not_found",
    "429": "unavailable",
    "500": "internal",
    "501": "invalid",
    "502": "unavailable",
    "503": "unavailable",
    "504": "unavailable",
}


class TransportError(GssError):
    """A failed call to Triton. ``kind`` says what the caller can do about it:

    - ``unavailable``: no connection, connection lost, Triton or a proxy overloaded or
      shutting down (HTTP 429/502/503/504); another attempt may succeed;
    - ``not_found``: no such model (HTTP 404), or not loaded;
    - ``invalid``: Triton refused the request as sent (HTTP 400/501);
    - ``deadline``: the call's time budget ran out before an answer;
    - ``internal``: the model or Triton failed (HTTP 500), or an answer the client cannot read.
    """

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, Triton datatype and shape (-1 where any size fits)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    """A model's metadata: available versions and its tensors (shapes include the batch dim)."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class ModelConfig:
    """The part of a model's configuration the client reads."""

    name: str
    max_batch_size: int  # 0: the model takes no batch dimension


@dataclass(frozen=True)
class BatchStatistics:
    """How many times Triton executed the model on a batch of ``batch_size`` items."""

    batch_size: int
    executions: int


@dataclass(frozen=True)
class ModelStatistics:
    """Triton's own counters for a model's version since it loaded.

    ``inference_count / execution_count`` is the mean executed batch size.
    """

    name: str
    version: str
    inference_count: int
    execution_count: int
    batch_stats: tuple[BatchStatistics, ...]


def triton_dtype(array: Tensor) -> str:
    """The Triton datatype name of a numpy array, or InvalidArgumentError."""
    name = np_to_triton_dtype(array.dtype.newbyteorder("<"))
    if name is None:
        raise InvalidArgumentError(
            f"numpy dtype {array.dtype} has no Triton datatype; use bool, (u)int8-64 or float16-64"
        )
    return str(name)


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype of a Triton datatype name, or InvalidArgumentError."""
    dtype = triton_to_np_dtype(name)
    if dtype is None:
        raise InvalidArgumentError(f"Triton datatype {name!r} is not supported by the model client")
    return np.dtype(dtype)


def _status_error(url: str, what: str, exc: InferenceServerException) -> TransportError:
    status = exc.status()
    if status is None:  # raised by tritonclient itself, not an HTTP answer
        kind: ErrorKind = "internal"
    else:
        kind = _KIND_BY_STATUS.get(str(status), "invalid" if str(status)[:1] == "4" else "internal")
    return TransportError(kind, f"{what} at {url}: HTTP {status}: {exc.message()}")


def _specs(tensors: Sequence[Mapping[str, Any]]) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"]))
        for t in tensors
    )


class TritonTransport:
    """Blocking calls to one Triton server's HTTP endpoint; thread-safe.

    ``url`` is ``host:port`` (Triton's HTTP port, 8000 by default), optionally with a base
    path; an ``http://`` prefix is accepted and ``https://`` turns TLS on.
    ``connection_timeout_seconds`` and ``network_timeout_seconds`` bound connecting and each
    socket read or write; every call is also bounded as a whole by its ``timeout``.
    """

    def __init__(
        self,
        url: str,
        *,
        connection_timeout_seconds: float = 5.0,
        network_timeout_seconds: float = 60.0,
    ) -> None:
        self.url = url
        self._ssl = url.startswith("https://")
        self._address = url.removeprefix("https://").removeprefix("http://")
        self._connection_timeout = connection_timeout_seconds
        self._network_timeout = network_timeout_seconds
        self._local = threading.local()
        # Every thread's client, so close() reaches them all; a finished thread's client goes
        # with the thread.
        self._clients: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = False

    # -- per-thread clients ------------------------------------------------------------

    def _client(self) -> Any:
        if self._closed:
            raise TransportError("unavailable", f"transport to Triton at {self.url} is closed")
        client = getattr(self._local, "client", None)
        if client is not None:
            return client
        with self._lock:
            if self._closed:
                raise TransportError("unavailable", f"transport to Triton at {self.url} is closed")
            client = triton_http.InferenceServerClient(
                self._address,
                connection_timeout=self._connection_timeout,
                network_timeout=self._network_timeout,
                ssl=self._ssl,
            )
            self._clients.add(client)
        self._local.client = client
        return client

    def _discard(self, client: Any) -> None:
        """Drop this thread's client after a connection-level failure (it may hold a dead
        or half-used connection); the next call makes a new one."""
        self._local.client = None
        with self._lock:
            self._clients.discard(client)
        # Best effort: the connection is already broken.
        with contextlib.suppress(Exception):
            client.close()

    def _call(self, what: str, timeout: float, call: Callable[[Any], T]) -> T:
        """``call(client)`` within ``timeout`` seconds, errors as TransportError."""
        client = self._client()
        # tritonclient.http does its I/O on gevent: a gevent timer bounds the whole call
        # (connect, send, wait, read) in this thread.
        timer = gevent.Timeout(max(timeout, 0.001))
        timer.start()
        try:
            return call(client)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            self._discard(client)
            raise TransportError(
                "deadline", f"{what} at {self.url}: no answer within {timeout:.3f} s"
            ) from None
        except InferenceServerException as exc:
            raise _status_error(self.url, what, exc) from exc
        except (OSError, http.client.HTTPException) as exc:
            # Refused, reset, closed mid-answer, unresolvable, or a socket timeout: the
            # server is away or stuck; the budget timer, not these, is the call's deadline.
            self._discard(client)
            raise TransportError(
                "unavailable", f"{what} at {self.url}: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            timer.close()

    # -- the protocol ------------------------------------------------------------------

    def server_live(self, timeout: float) -> bool:
        live: bool = self._call("server live", timeout, lambda c: c.is_server_live())
        return live

    def model_ready(self, model_name: str, timeout: float) -> bool:
        """True when the model is loaded and READY (False for a model Triton does not have)."""
        ready: bool = self._call(
            f"model {model_name} ready", timeout, lambda c: c.is_model_ready(model_name)
        )
        return ready

    def model_metadata(self, model_name: str, timeout: float) -> ModelMetadata:
        meta: dict[str, Any] = self._call(
            f"model {model_name} metadata", timeout, lambda c: c.get_model_metadata(model_name)
        )
        return ModelMetadata(
            name=str(meta.get("name", model_name)),
            versions=tuple(str(v) for v in meta.get("versions", ())),
            platform=str(meta.get("platform", "")),
            inputs=_specs(meta.get("inputs", ())),
            outputs=_specs(meta.get("outputs", ())),
        )

    def model_config(self, model_name: str, timeout: float) -> ModelConfig:
        config: dict[str, Any] = self._call(
            f"model {model_name} config", timeout, lambda c: c.get_model_config(model_name)
        )
        return ModelConfig(
            name=str(config.get("name", model_name)),
            max_batch_size=int(config.get("max_batch_size", 0)),
        )

    def model_statistics(self, model_name: str, timeout: float = 10.0) -> ModelStatistics:
        """Triton's own counters for the model's ready version (inference vs execution counts)."""
        reply: dict[str, Any] = self._call(
            f"model {model_name} statistics",
            timeout,
            lambda c: c.get_inference_statistics(model_name),
        )
        stats = reply.get("model_stats") or []
        if not stats:
            raise TransportError(
                "not_found", f"Triton at {self.url} has no statistics for {model_name!r}"
            )
        first = stats[0]
        return ModelStatistics(
            name=str(first.get("name", model_name)),
            version=str(first.get("version", "")),
            inference_count=int(first.get("inference_count", 0)),
            execution_count=int(first.get("execution_count", 0)),
            batch_stats=tuple(
                BatchStatistics(
                    int(b["batch_size"]), int(b.get("compute_infer", {}).get("count", 0))
                )
                for b in first.get("batch_stats", ())
            ),
        )

    def infer(
        self,
        model_name: str,
        inputs: Mapping[str, Tensor],
        timeout: float,
        outputs: Sequence[str] = (),
    ) -> tuple[str, dict[str, Tensor]]:
        """One inference request: (the model version that ran, output tensors by name).

        ``outputs`` empty: every output the model produces.
        """
        tensors = []
        for name, array in inputs.items():
            # Little-endian on the wire, whatever byte order the caller's array has.
            data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            tensor = triton_http.InferInput(name, list(data.shape), triton_dtype(data))
            tensor.set_data_from_numpy(data, binary_data=True)
            tensors.append(tensor)
        requested = [triton_http.InferRequestedOutput(name, binary_data=True) for name in outputs]
        result = self._call(
            f"{model_name} inference",
            timeout,
            lambda c: c.infer(
                model_name,
                tensors,
                outputs=requested or None,
                # Server side: Triton drops the request if it is still queued this long.
                timeout=max(1, int(timeout * 1_000_000)),
            ),
        )
        response: dict[str, Any] = result.get_response()
        try:
            arrays = {
                str(o["name"]): result.as_numpy(str(o["name"])) for o in response.get("outputs", ())
            }
        except InferenceServerException as exc:
            raise _status_error(self.url, f"{model_name} inference answer", exc) from exc
        return str(response.get("model_version", "")), arrays

    def close(self) -> None:
        """Close every thread's connection; later calls raise TransportError."""
        with self._lock:
            self._closed = True
            clients = list(self._clients)
            self._clients.clear()
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()
