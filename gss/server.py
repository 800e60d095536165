"""Server assembly: store + registry + SignalService + health + reflection + metrics.

A synchronous grpcio server with a thread pool: RocksDB multi-get releases the GIL, and a
thread pool beat grpc.aio on 100-key lookups here (see docs/serving.md for the figures).
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from gss import metrics
from gss.registry import Registry, load_registry
from gss.service import SERVICE, ChangelogWriter, SignalService
from gss.settings import Settings
from gss.v1 import signal_service_pb2
from store.db import SignalStore

log = structlog.get_logger(__name__)


@dataclass
class GssServer:
    """A running GSS server. Build with :func:`start_server`; stop with :meth:`stop`."""

    settings: Settings
    registry: Registry
    store: SignalStore
    service: SignalService
    grpc_server: grpc.Server
    health: health.HealthServicer
    port: int
    metrics_port: int | None
    _metrics_server: Any = None
    _stopped: threading.Event = field(default_factory=threading.Event)
    # Run, in order, when the server stops (after calls drain, before the store closes).
    on_stop: list[Callable[[], None]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.settings.server.host}:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, drain in-flight ones for ``grace`` seconds, close the store."""
        if self._stopped.is_set():
            return
        grace = self.settings.server.shutdown_grace_seconds if grace is None else grace
        log.info("server_stopping", grace_seconds=grace)
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait()
        for hook in self.on_stop:
            hook()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        self.store.close()
        self._stopped.set()
        log.info("server_stopped")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stopped (True) or the timeout passes (False)."""
        return self._stopped.wait(timeout)

    def stop_on_signals(self) -> None:
        """SIGTERM and SIGINT drain and stop the server (call from the main thread)."""

        def handle(signum: int, _frame: object) -> None:
            log.info("signal_received", signal=signal.Signals(signum).name)
            threading.Thread(target=self.stop, name="gss-shutdown", daemon=True).start()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)


def start_server(
    settings: Settings,
    *,
    registry: Registry | None = None,
    store: SignalStore | None = None,
    changelog: ChangelogWriter | None = None,
) -> GssServer:
    """Open the store, load the registry, and serve. Port 0 picks a free port."""
    server_settings = settings.server
    pool = futures.ThreadPoolExecutor(
        max_workers=server_settings.workers, thread_name_prefix="gss-rpc"
    )
    grpc_server = grpc.server(
        pool,
        options=[
            ("grpc.max_receive_message_length", server_settings.max_receive_message_bytes),
            ("grpc.max_send_message_length", server_settings.max_send_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    # NOT_SERVING until the store is open and the registry loaded (Kubernetes grpc probes).
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (
            signal_service_pb2.DESCRIPTOR.services_by_name["SignalService"].full_name,
            reflection.SERVICE_NAME,
            health.SERVICE_NAME,
        ),
        grpc_server,
    )
    registry = registry or load_registry(settings.registry_path)
    store = store or SignalStore(
        settings.store.path,
        list(registry.galaxies),
        sync_writes=settings.store.sync_writes,
        block_cache_bytes=settings.store.block_cache_bytes,
    )
    service = SignalService(registry, store, server_settings, changelog)
    grpc_server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, service.method_handlers()),)
    )
    port = grpc_server.add_insecure_port(f"{server_settings.host}:{server_settings.port}")
    if port == 0:
        store.close()
        raise OSError(f"cannot listen on {server_settings.host}:{server_settings.port}")

    metrics_server = None
    metrics_port = None
    if server_settings.metrics_port >= 0:
        metrics_server, _thread = start_http_server(
            server_settings.metrics_port, addr=server_settings.host
        )
        metrics_port = metrics_server.server_port
    metrics.STORE_SIZE.set_function(store.size_bytes)
    for galaxy in registry.galaxies:
        metrics.STORE_KEYS.labels(galaxy).set_function(
            functools.partial(store.estimated_keys, galaxy)
        )

    grpc_server.start()
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "server_started",
        address=f"{server_settings.host}:{port}",
        metrics_port=metrics_port,
        galaxies=list(registry.galaxies),
        workers=server_settings.workers,
    )
    return GssServer(
        settings,
        registry,
        store,
        service,
        grpc_server,
        health_servicer,
        port,
        metrics_port,
        metrics_server,
    )
