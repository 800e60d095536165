"""Promises of docs/reliability.md that had no test of their own: health NOT_SERVING while a
stopping server drains, the clients' retry of UNAVAILABLE (and only with retries on), and the
subscriber's dedupe of redelivered event ids (in a window, delivery order kept)."""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from confluent_kafka import Producer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.lookup import GssClient, open_channel
from clients.subscriber import Subscriber
from contract.settings import load_settings
from contract.v1 import events_pb2, signal_service_pb2, signal_service_pb2_grpc
from gss.local.broker import LocalBroker
from gss.server import start_server

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_health_turns_not_serving_while_a_stopping_server_drains(tmp_path: Path) -> None:
    """server.stop (what SIGTERM does): every health watcher on the main port is told
    NOT_SERVING, and the probe port answers NOT_SERVING, while in-flight calls drain; only
    after the grace period does the server go away."""
    health_port = _free_port()
    settings = load_settings(
        store={"path": str(tmp_path / "store")},
        server={
            "host": "127.0.0.1",
            "port": 0,
            "metrics_port": 0,
            "health_port": health_port,
            "shutdown_grace_seconds": 3.0,
        },
    )
    server = start_server(settings)
    stopper = threading.Thread(target=server.stop)
    try:
        channel = grpc.insecure_channel(server.address)
        probe = grpc.insecure_channel(f"127.0.0.1:{health_port}")
        watched: queue.Queue[int] = queue.Queue()
        # A Watch stream is an in-flight call: it keeps the drain going until the grace ends.
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="gss.v1.SignalService"), timeout=30
        )

        def follow() -> None:
            try:
                for response in stream:
                    watched.put(response.status)
            except grpc.RpcError:
                pass

        threading.Thread(target=follow, daemon=True).start()
        assert watched.get(timeout=10) == SERVING
        probe_stub = health_pb2_grpc.HealthStub(probe)
        assert probe_stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING

        started = time.monotonic()
        stopper.start()
        assert watched.get(timeout=10) == NOT_SERVING
        # Still draining (the grace is 3 s): the probe port says NOT_SERVING, not "gone".
        status = probe_stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == NOT_SERVING
        assert time.monotonic() - started < 3.0
        stopper.join(timeout=40)
        assert not stopper.is_alive()
        with pytest.raises(grpc.RpcError) as gone:
            probe_stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert gone.value.code() == grpc.StatusCode.UNAVAILABLE
        channel.close()
        probe.close()
    finally:
        if stopper.ident is None:  # failed before stopping it
            server.stop(grace=0)
        stopper.join(timeout=40)


class _Flaky(signal_service_pb2_grpc.SignalServiceServicer):
    """ListGalaxies answers UNAVAILABLE ``failures`` times, then an empty list."""

    def __init__(self, failures: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        self.failures = failures
        self.code = code
        self.calls = 0

    def ListGalaxies(self, request: object, context: grpc.ServicerContext) -> object:
        self.calls += 1
        if self.calls <= self.failures:
            context.abort(self.code, "try again")
        return signal_service_pb2.ListGalaxiesResponse()


@pytest.fixture
def flaky_server() -> Iterator[tuple[_Flaky, str]]:
    servicer = _Flaky(failures=2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    signal_service_pb2_grpc.add_SignalServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def test_the_client_retries_unavailable_and_only_that(flaky_server: tuple[_Flaky, str]) -> None:
    """GssClient retries UNAVAILABLE by gRPC's retry policy (the caller sees one successful
    call); with retries off the first UNAVAILABLE reaches the caller; other codes are never
    retried."""
    servicer, address = flaky_server
    with GssClient(address, timeout=10) as client:
        assert client.galaxies() == []
    assert servicer.calls == 3  # two refusals, retried, then the answer

    servicer.calls, servicer.failures = 0, 1
    channel = open_channel(address, retry=False)
    stub = signal_service_pb2_grpc.SignalServiceStub(channel)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ListGalaxies(signal_service_pb2.ListGalaxiesRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == 1
    channel.close()

    servicer.calls, servicer.failures, servicer.code = 0, 1, grpc.StatusCode.INTERNAL
    with GssClient(address, timeout=10) as client, pytest.raises(grpc.RpcError) as failed:
        client.galaxies()
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert servicer.calls == 1


def _event(n: int) -> events_pb2.SignalAvailable:
    event = events_pb2.SignalAvailable(event_id=f"ev-{n}", galaxy="images", entity_id=f"{n:032x}")
    event.signal.name, event.signal.version = "dhash", 1
    event.position.partition, event.position.offset = 0, n
    return event


def test_the_subscriber_drops_redelivered_event_ids_and_keeps_order() -> None:
    """Each event is produced twice (a publisher's redelivery: same id, same bytes), and one
    again much later: the subscriber hands each id out once, in the order produced; with a
    dedupe window smaller than the gap, the late repeat comes through (the documented limit)."""
    with LocalBroker() as broker:
        topic = f"reliability.{int(time.time() * 1000)}.available"
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "acks": "all"})
        order = [0, 0, 1, 2, 1, 3, 3, 4, *range(5, 30), 0]  # 0 again after 28 others
        for n in order:
            producer.produce(topic, key=b"k", value=_event(n).SerializeToString())
        assert producer.flush(30) == 0

        def read(window: int) -> list[str]:
            got: list[str] = []
            with Subscriber(
                broker.bootstrap_servers,
                "images",
                f"dedupe-{window}",
                topic=topic,
                dedupe_window=window,
            ) as sub:
                deadline = time.monotonic() + 60
                while len(got) < len(set(order)) + (window < 29) and time.monotonic() < deadline:
                    got += [e.event_id for e in sub.poll(0.5)]
                time.sleep(1.0)  # anything more would show up now
                got += [e.event_id for e in sub.poll(0.5)]
            return got

        assert read(1000) == [f"ev-{n}" for n in range(30)]
        assert read(10) == [*(f"ev-{n}" for n in range(30)), "ev-0"]
