"""compute.triton.transport's error classification and time bounds, over local sockets.

A small HTTP server on 127.0.0.1 answers with Triton's error statuses (the JSON body Triton
sends); a listening socket that never answers stands in for a stuck server. The real Triton is
in tests/integration/test_triton_*.py.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from compute.triton.transport import (
    ErrorKind,
    TransportError,
    TritonTransport,
    numpy_dtype,
    triton_dtype,
)
from contract.errors import InvalidArgumentError


class _Handler(BaseHTTPRequestHandler):
    """Answers /v2/models/<status>/config with that HTTP status and Triton's error JSON."""

    def do_GET(self) -> None:
        status = int(self.path.split("/")[3])
        body = json.dumps({"error": f"scripted {status}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid"),
        (404, "not_found"),
        (429, "unavailable"),
        (500, "internal"),
        (501, "invalid"),
        (502, "unavailable"),
        (503, "unavailable"),
        (504, "unavailable"),
        (409, "invalid"),
        (507, "internal"),
    ],
)
def test_http_statuses_map_to_error_kinds(http_server: str, status: int, kind: ErrorKind) -> None:
    """Triton's (and proxies') HTTP error statuses become the kinds the client classifies,
    with the URL, the status and the server's message in the text."""
    transport = TritonTransport(http_server)
    try:
        with pytest.raises(TransportError) as caught:
            transport.model_config(str(status), timeout=5.0)
    finally:
        transport.close()
    assert caught.value.kind == kind
    assert http_server in str(caught.value)
    assert f"HTTP {status}" in str(caught.value)
    assert f"scripted {status}" in str(caught.value)


def test_refused_connection_is_unavailable() -> None:
    """Nothing listening on the port: kind unavailable (worth retrying), naming the URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"127.0.0.1:{probe.getsockname()[1]}"
    transport = TritonTransport(url)
    try:
        with pytest.raises(TransportError) as caught:
            transport.server_live(timeout=5.0)
    finally:
        transport.close()
    assert caught.value.kind == "unavailable"
    assert url in str(caught.value)


def test_silent_server_hits_the_call_deadline_and_the_next_call_reconnects() -> None:
    """A server that accepts but never answers: each call ends at its own timeout with kind
    deadline, and a later call is not stuck behind the abandoned one."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        transport = TritonTransport(f"127.0.0.1:{listener.getsockname()[1]}")
        try:
            for _ in range(2):
                with pytest.raises(TransportError) as caught:
                    transport.model_metadata("m", timeout=0.2)
                assert caught.value.kind == "deadline"
                assert "no answer within 0.200 s" in str(caught.value)
            # Each call came on its own connection: the timed-out one was dropped.
            listener.settimeout(5.0)
            for _ in range(2):
                connection, _ = listener.accept()
                connection.close()
        finally:
            transport.close()


def test_closed_transport_refuses_calls() -> None:
    """After close() every call raises kind unavailable instead of reconnecting."""
    transport = TritonTransport("127.0.0.1:1")
    transport.close()
    with pytest.raises(TransportError, match="closed") as caught:
        transport.server_live(timeout=1.0)
    assert caught.value.kind == "unavailable"


def test_datatype_names_round_trip_and_unsupported_ones_are_refused() -> None:
    """numpy dtypes map to Triton's datatype names and back; big-endian arrays count as their
    little-endian type; a dtype or name without a counterpart is an InvalidArgumentError."""
    for dtype, name in [("u1", "UINT8"), ("<f4", "FP32"), (">f4", "FP32"), ("?", "BOOL")]:
        assert triton_dtype(np.zeros(2, dtype=dtype)) == name
    assert numpy_dtype("FP32") == np.dtype(np.float32)
    with pytest.raises(InvalidArgumentError, match="complex64"):
        triton_dtype(np.zeros(2, dtype=np.complex64))
    with pytest.raises(InvalidArgumentError, match="INT4"):
        numpy_dtype("INT4")
