"""Triton's gRPC inference protocol over a plain grpcio channel: one call per method.

No batching, retries or metrics here (that is :mod:`compute.triton.client`); errors are
grpcio's ``grpc.RpcError`` with the server's status code. Tensors travel as raw
little-endian bytes (``raw_input_contents`` / ``raw_output_contents``).

Why not ``tritonclient.grpc``: every tritonclient release from 2.50 on ships gRPC code
generated for grpcio >= 1.66.1 and refuses to import under older grpcio, while PyFlink's
apache-beam caps grpcio below 1.66. The protocol messages GSS needs are in
``compute/triton/protocol/inference.proto``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from compute.triton.protocol import inference_pb2 as pb
from gss.errors import InvalidArgumentError

SERVICE = "/inference.GRPCInferenceService/"
# Triton accepts requests up to 2 GiB; grpcio's 4 MiB default would cap a batch of images.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024

# Triton datatype names and the little-endian numpy dtypes they travel as.
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_NAMES = {dtype.newbyteorder("<"): name for name, dtype in DTYPES.items()}

Tensor = npt.NDArray[Any]


def triton_dtype(array: Tensor) -> str:
    """The Triton datatype name of a numpy array, or InvalidArgumentError."""
    name = _NAMES.get(array.dtype.newbyteorder("<"))
    if name is None:
        raise InvalidArgumentError(
            f"numpy dtype {array.dtype} has no Triton datatype here; use one of "
            f"{', '.join(str(d) for d in DTYPES.values())} (BYTES tensors are not supported)"
        )
    return name


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype of a Triton datatype name, or InvalidArgumentError."""
    try:
        return DTYPES[name]
    except KeyError:
        raise InvalidArgumentError(
            f"Triton datatype {name!r} is not supported by the GSS model client"
        ) from None


class TritonTransport:
    """Blocking calls to one Triton server's gRPC endpoint (``host:port``); thread-safe."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._channel = grpc.insecure_channel(
            url,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                # gRPC's default reconnect backoff grows to 120 s; a restarted Triton pod
                # should be used again within a second, inside the client's retry budget.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self._live = self._method("ServerLive", pb.ServerLiveRequest, pb.ServerLiveResponse)
        self._ready = self._method("ModelReady", pb.ModelReadyRequest, pb.ModelReadyResponse)
        self._metadata = self._method(
            "ModelMetadata", pb.ModelMetadataRequest, pb.ModelMetadataResponse
        )
        self._config = self._method("ModelConfig", pb.ModelConfigRequest, pb.ModelConfigResponse)
        self._infer = self._method("ModelInfer", pb.ModelInferRequest, pb.ModelInferResponse)
        self._statistics = self._method(
            "ModelStatistics", pb.ModelStatisticsRequest, pb.ModelStatisticsResponse
        )

    def _method(
        self, name: str, request: Any, response: Any
    ) -> grpc.UnaryUnaryMultiCallable[Any, Any]:
        return self._channel.unary_unary(
            SERVICE + name,
            request_serializer=request.SerializeToString,
            response_deserializer=response.FromString,
        )

    def server_live(self, timeout: float) -> bool:
        reply: pb.ServerLiveResponse = self._live(pb.ServerLiveRequest(), timeout=timeout)
        return reply.live

    def model_ready(self, model_name: str, timeout: float) -> bool:
        reply: pb.ModelReadyResponse = self._ready(
            pb.ModelReadyRequest(name=model_name), timeout=timeout
        )
        return reply.ready

    def model_metadata(self, model_name: str, timeout: float) -> pb.ModelMetadataResponse:
        reply: pb.ModelMetadataResponse = self._metadata(
            pb.ModelMetadataRequest(name=model_name), timeout=timeout
        )
        return reply

    def model_config(self, model_name: str, timeout: float) -> pb.ModelConfig:
        reply: pb.ModelConfigResponse = self._config(
            pb.ModelConfigRequest(name=model_name), timeout=timeout
        )
        return reply.config

    def model_statistics(self, model_name: str, timeout: float = 10.0) -> pb.ModelStatistics:
        """Triton's own counters for the model's ready version (inference vs execution counts)."""
        reply: pb.ModelStatisticsResponse = self._statistics(
            pb.ModelStatisticsRequest(name=model_name), timeout=timeout
        )
        if not reply.model_stats:
            raise InvalidArgumentError(f"Triton at {self.url} has no statistics for {model_name!r}")
        return reply.model_stats[0]

    def infer(
        self,
        model_name: str,
        inputs: Mapping[str, Tensor],
        timeout: float,
        outputs: Sequence[str] = (),
    ) -> tuple[str, dict[str, Tensor]]:
        """One ModelInfer call: (the model version that ran, output tensors by name)."""
        request = pb.ModelInferRequest(model_name=model_name)
        for name, array in inputs.items():
            request.inputs.add(name=name, datatype=triton_dtype(array), shape=array.shape)
            request.raw_input_contents.append(
                np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            )
        for name in outputs:
            request.outputs.add(name=name)
        reply: pb.ModelInferResponse = self._infer(request, timeout=timeout)
        if len(reply.raw_output_contents) != len(reply.outputs):
            raise InvalidArgumentError(
                f"Triton at {self.url} answered {model_name} without raw output contents; "
                "only raw tensor transfer is supported"
            )
        results: dict[str, Tensor] = {}
        for tensor, raw in zip(reply.outputs, reply.raw_output_contents, strict=True):
            dtype = numpy_dtype(tensor.datatype)
            results[tensor.name] = np.frombuffer(raw, dtype=dtype).reshape(tuple(tensor.shape))
        return reply.model_version, results

    def close(self) -> None:
        self._channel.close()
