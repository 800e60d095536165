"""Server assembly: store + registry + SignalService + health + reflection + metrics.

A grpc.aio server on an event loop of its own thread, so that callers (the CLI, ``gss run``,
tests) get a plain blocking handle. grpc.aio beat grpcio's thread-pool server here: 253k vs
224k keys/s on 100-key lookups and 8.3k vs 4.1k calls/s on 1-key lookups (docs/serving.md).
Lookups run on the loop (a RocksDB multi-get is ~100 µs and releases the GIL); writes, which
may fsync or wait for a broker, run in worker threads.

A server started from ``registry_path`` follows lifecycle changes of that file (pins, version
states; docs/serving.md, "Signal lifecycle"): on SIGHUP and when a poll sees the file change,
it reloads it and adopts the change in place (:meth:`Registry.adopt_lifecycle`). A file that
does not load, or that changes more than the lifecycle, is refused with a log line and the
running registry is kept.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import REGISTRY, start_http_server

from contract.errors import GssError
from contract.registry import Registry, load_registry
from contract.settings import Settings
from gss import metrics
from gss.auth.authenticator import Authenticator
from gss.auth.interceptor import GuardInterceptor
from gss.auth.tls import server_credentials
from gss.cluster.node import ClusterNode
from gss.readers import (
    INTERNAL_TOKEN_HEADER,
    Board,
    ReaderPool,
    WriterLink,
    file_state,
    new_internal_endpoint,
    stored_positions_applied,
)
from gss.service import FORWARDED_CALL, SERVICE, ChangelogWriter, SignalService, WatchSource
from store.db import MemoryLimits, SignalStore

if TYPE_CHECKING:
    from gss.kafka.events_runtime import EventsRuntime

log = structlog.get_logger(__name__)
STARTUP_TIMEOUT_SECONDS = 30.0
# How often readiness (gRPC health) is checked against the changelog lag.
READINESS_POLL_SECONDS = 0.2
# How often a server checks its registry file for lifecycle changes (besides SIGHUP).
REGISTRY_POLL_SECONDS = 5.0


@dataclass
class GssServer:
    """A running GSS server. Build with :func:`start_server`; stop with :meth:`stop`."""

    settings: Settings
    registry: Registry
    store: SignalStore
    service: SignalService
    port: int
    loop: asyncio.AbstractEventLoop
    grpc_server: grpc.aio.Server
    health: health.aio.HealthServicer
    _thread: threading.Thread
    # Set once the metrics endpoint listens (start_server starts it after the rest).
    metrics_port: int | None = None
    _metrics_server: Any = None
    _stopped: threading.Event = field(default_factory=threading.Event)
    _stop_lock: threading.Lock = field(default_factory=threading.Lock)
    # Run, in order, when the server stops (after calls drain, before the store closes).
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    # The changelog ingester, outbox publisher and watch source, when a broker is configured.
    events: EventsRuntime | None = None
    # The registry file this server follows (None when it was handed a registry).
    registry_path: Path | None = None
    _registry_state: tuple[int, int, int] | None = None
    _reload_lock: threading.Lock = field(default_factory=threading.Lock)
    # The plaintext health-only port (server.health_port), when configured.
    health_grpc_server: grpc.aio.Server | None = None
    health_port: int | None = None
    # This node's place in the cluster (the single-node default hosts every partition).
    cluster: ClusterNode | None = None
    _serving: bool = False
    # With server.processes above 1: the reader processes and the writer's private socket
    # they forward writes to (gss.readers).
    readers: ReaderPool | None = None
    internal_server: grpc.aio.Server | None = None

    def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )

        async def apply() -> None:
            for name in ("", SERVICE):
                await self.health.set(name, status)

        asyncio.run_coroutine_threadsafe(apply(), self.loop).result(timeout=5)
        self._serving = serving
        if self.readers is not None:
            self.readers.board.set_serving(serving)
        if self.cluster is not None:
            self.cluster.set_serving(serving)

    def _follow_readiness(self, interval: float) -> None:
        # NOT_SERVING until caught up with the changelog within cluster.max_ready_lag_records.
        assert self.cluster is not None
        while not self._stopped.wait(interval):
            ready = self.cluster.ready()
            if ready == self._serving:
                continue
            try:
                self._set_serving(ready)
            except (RuntimeError, TimeoutError):
                return  # the loop stopped: the server is stopping
            log.info(
                "readiness_changed",
                serving=ready,
                changelog_partitions=[
                    f"{p.galaxy}:{p.partition} lag {p.lag_records}"
                    for p in self.cluster.announcement().partitions
                ],
            )

    def reload_registry(self) -> bool:
        """Reload the registry file and adopt its lifecycle changes (pins, states, descriptions).

        True when the running registry now matches the file; False when the file was refused
        (it does not load, or it changes more than the lifecycle: that needs a restart), in
        which case the running registry is kept. Each outcome is logged.
        """
        if self.registry_path is None:
            return False
        with self._reload_lock:
            self._registry_state = file_state(self.registry_path)
            try:
                changes = self.registry.adopt_lifecycle(load_registry(self.registry_path))
            except GssError as exc:
                log.error("registry_reload_refused", path=str(self.registry_path), error=str(exc))
                return False
            log.info("registry_reloaded", path=str(self.registry_path), changes=changes)
            return True

    def _poll_registry(self, interval: float) -> None:
        while not self._stopped.wait(interval):
            if file_state(self.registry_path) != self._registry_state:  # type: ignore[arg-type]
                self.reload_registry()

    def follow_registry(self, interval: float = REGISTRY_POLL_SECONDS) -> None:
        """Reload the registry whenever its file changes, checking every ``interval`` seconds."""
        if self.registry_path is None:
            return
        threading.Thread(
            target=self._poll_registry, args=(interval,), name="gss-registry", daemon=True
        ).start()

    @property
    def address(self) -> str:
        return f"{self.settings.server.host}:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, drain in-flight ones for ``grace`` seconds, close the store."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            grace = self.settings.server.shutdown_grace_seconds if grace is None else grace
            log.info("server_stopping", grace_seconds=grace)
            if self.readers is not None:
                self.readers.drain()  # the readers drain at the same time as this process
            asyncio.run_coroutine_threadsafe(self._shutdown(grace), self.loop).result(
                timeout=grace + 30
            )
            if self.readers is not None:
                self.readers.stop(grace)
            if self.internal_server is not None:
                asyncio.run_coroutine_threadsafe(self.internal_server.stop(0), self.loop).result(
                    timeout=10
                )
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)
            for hook in self.on_stop:
                hook()
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
            if self.readers is not None:
                self.readers.remove_metrics()
            self.store.close()
            self._stopped.set()
            log.info("server_stopped")

    async def _shutdown(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.grpc_server.stop(grace)
        if self.health_grpc_server is not None:
            await self.health_grpc_server.stop(0)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stopped (True) or the timeout passes (False)."""
        return self._stopped.wait(timeout)

    def stop_on_signals(self) -> None:
        """SIGTERM and SIGINT drain and stop the server; SIGHUP reloads the registry (call from
        the main thread)."""

        def handle(signum: int, _frame: object) -> None:
            log.info("signal_received", signal=signal.Signals(signum).name)
            threading.Thread(target=self.stop, name="gss-shutdown", daemon=True).start()

        def reload(signum: int, _frame: object) -> None:
            log.info("signal_received", signal=signal.Signals(signum).name)
            threading.Thread(target=self.reload_registry, name="gss-reload", daemon=True).start()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGHUP, reload)


@dataclass
class _Built:
    grpc_server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None


async def _health_only_server(
    host: str, port: int, servicer: health.aio.HealthServicer
) -> tuple[grpc.aio.Server, int]:
    # Kubernetes' gRPC probes speak plaintext only: with TLS on the main port, they get a port
    # of their own serving grpc.health.v1 and nothing else.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound


async def _build_grpc_server(
    settings: Settings, service: SignalService, *, serving: bool = True, reuseport: bool = False
) -> _Built:
    server_settings = settings.server
    # Every call passes the one interceptor: decoding, authentication, permissions, per-caller
    # concurrency, the deadline cap (gss.auth.interceptor).
    guard = GuardInterceptor(server_settings, Authenticator(server_settings.auth))
    grpc_server = grpc.aio.server(
        interceptors=[guard],
        options=[
            ("grpc.max_receive_message_length", server_settings.max_receive_message_bytes),
            ("grpc.max_send_message_length", server_settings.max_send_message_bytes),
            # Several serving processes share the port (server.processes, gss.readers); one
            # process alone refuses a port already taken.
            ("grpc.so_reuseport", int(reuseport)),
        ],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    grpc_server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, service.method_handlers()),)
    )
    reflection.enable_server_reflection(
        (SERVICE, reflection.SERVICE_NAME, health.SERVICE_NAME), grpc_server
    )
    address = f"{server_settings.host}:{server_settings.port}"
    if server_settings.tls.enabled:
        port = grpc_server.add_secure_port(address, server_credentials(server_settings.tls))
    else:
        port = grpc_server.add_insecure_port(address)
    await grpc_server.start()
    built = _Built(grpc_server, health_servicer, port)
    if server_settings.health_port is not None:
        built.health_server, built.health_port = await _health_only_server(
            server_settings.host, server_settings.health_port, health_servicer
        )
    # SERVING only now: the store is open and the registry loaded (Kubernetes grpc probes);
    # with a changelog, only once it has caught up (GssServer._follow_readiness).
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", SERVICE):
        await health_servicer.set(name, status)
    return built


def open_store(
    settings: Settings, registry: Registry, *, secondary: str | Path | None = None
) -> SignalStore:
    """The store at ``store.path`` with a column family for every galaxy of the registry
    (``secondary``: a read-only secondary instance of it, its own files there)."""
    store = settings.store
    return SignalStore(
        store.path,
        list(registry.galaxies),
        sync_writes=store.sync_writes,
        limits=MemoryLimits(
            store.block_cache_bytes,
            store.write_buffer_bytes,
            store.max_write_buffers,
            store.max_open_files,
        ),
        secondary_path=secondary,
    )


@dataclass
class ReaderSide:
    """What a reader process's service needs beyond a server's: its number and its link to
    the writer."""

    process: int
    link: WriterLink


@dataclass
class ReaderServer:
    """A reader process's gRPC server (gss.readers)."""

    grpc_server: grpc.aio.Server
    health: health.aio.HealthServicer
    service: SignalService

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE):
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.grpc_server.stop(grace)
        if self.service.watch is not None:
            close = getattr(self.service.watch, "close", None)
            if close is not None:
                close()


async def start_reader_server(
    settings: Settings, registry: Registry, store: SignalStore, side: ReaderSide
) -> ReaderServer:
    """Serve a reader process's view of the store on the writer's port (SO_REUSEPORT):
    lookups from it, min_positions from the offsets it holds, writes and the cluster map
    forwarded to the writer. NOT_SERVING until the writer says it is ready."""
    cluster = ClusterNode(settings, registry)
    cluster.applied_by = functools.partial(stored_positions_applied, store)
    watch: WatchSource | None = None
    if settings.kafka.bootstrap_servers:
        from gss.kafka.watch import WatchSource as KafkaWatch

        watch = KafkaWatch(settings.kafka, registry)
    service = SignalService(registry, store, settings.server, None, watch, cluster)
    service.process = side.process
    service.writer_link = side.link
    built = await _build_grpc_server(settings, service, serving=False, reuseport=True)
    cluster.bound(f"{settings.server.host}:{built.port}")
    return ReaderServer(built.grpc_server, built.health, service)


class _InternalOnly(grpc.aio.ServerInterceptor):
    """The writer's private socket answers only its readers (who hold the secret). Their calls
    are forwarded clients' calls, which the readers count: not counted again here."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        metadata = dict(details.invocation_metadata or ())
        if metadata.get(INTERNAL_TOKEN_HEADER) != self.token:

            async def deny(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not a reader process")

            return grpc.unary_unary_rpc_method_handler(deny)
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary

        async def forwarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            token = FORWARDED_CALL.set(True)
            try:
                return await behavior(request, context)
            finally:
                FORWARDED_CALL.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            forwarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def _internal_server(address: str, token: str, service: SignalService) -> grpc.aio.Server:
    server = grpc.aio.server(
        interceptors=[_InternalOnly(token)],
        options=[
            ("grpc.max_receive_message_length", service.settings.max_receive_message_bytes),
            ("grpc.max_send_message_length", service.settings.max_send_message_bytes),
        ],
    )
    handlers = service.method_handlers()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {k: handlers[k] for k in ("PutSignals", "DescribeCluster")}
            ),
        )
    )
    server.add_insecure_port(address)
    await server.start()
    return server


def _start_readers(
    settings: Settings,
    service: SignalService,
    store: SignalStore,
    port: int,
    loop: asyncio.AbstractEventLoop,
    events: EventsRuntime | None,
) -> tuple[ReaderPool, grpc.aio.Server]:
    """Start the reader processes of ``server.processes`` and gate writes and events on them."""
    address, token = new_internal_endpoint()
    internal = asyncio.run_coroutine_threadsafe(
        _internal_server(address, token, service), loop
    ).result(timeout=STARTUP_TIMEOUT_SECONDS)
    store_path = Path(settings.store.path)
    board = Board(
        store_path.parent / f".{store_path.name}.readers" / "board",
        settings.server.processes - 1,
        create=True,
    )
    board.set_serving(events is None)
    pool = ReaderPool(settings, port, address, token, board)
    gate = pool.gate

    def readable_everywhere() -> None:
        gate.wait(store.sequence())

    service.after_write = readable_everywhere
    if events is not None:
        events.publisher.readable_gate = gate.wait
    try:
        pool.start(STARTUP_TIMEOUT_SECONDS * 2)
    except Exception:
        asyncio.run_coroutine_threadsafe(internal.stop(0), loop).result(timeout=10)
        raise
    log.info(
        "reader_processes_serving",
        processes=settings.server.processes,
        readers=pool.pids(),
        port=port,
        metrics_directory=str(pool.metrics_dir),
    )
    return pool, internal


def seed_store(settings: Settings, registry: Registry) -> None:
    """A node with no store yet (new, or wiped) restores the latest backup first, when
    ``cluster.backup_root`` is set: it then catches up from the changelog at the backup's
    offsets instead of replaying all history (docs/cluster.md, "Backups")."""
    cluster = settings.cluster
    if (
        not cluster.backup_root
        or not cluster.seed_from_backup
        or not settings.kafka.bootstrap_servers
        or (Path(settings.store.path) / "CURRENT").exists()
    ):
        return
    from gss.cluster.backup import backup_root, restore_backup
    from gss.cluster.layout import NodeLayout

    ordinal = NodeLayout.from_settings(cluster).ordinal
    restored = restore_backup(
        backup_root(settings), Path(settings.store.path), list(registry.galaxies), ordinal
    )
    if restored is None:
        log.info("store_seed_skipped", reason="no backup yet", backup_root=cluster.backup_root)


def _back_up_periodically(server: GssServer, interval: float) -> None:
    from gss.cluster.backup import backup_root, take_backup

    assert server.cluster is not None
    root = backup_root(server.settings)
    while not server._stopped.wait(interval):
        try:
            take_backup(
                server.store, root, server.cluster.layout.ordinal, list(server.registry.galaxies)
            )
        except Exception:
            log.exception("store_backup_failed", action=f"trying again in {interval:.0f} s")


def start_server(
    settings: Settings,
    *,
    registry: Registry | None = None,
    store: SignalStore | None = None,
    changelog: ChangelogWriter | None = None,
    watch: WatchSource | None = None,
    registry_poll_seconds: float | None = REGISTRY_POLL_SECONDS,
) -> GssServer:
    """Open the store, load the registry, and serve. Port 0 picks a free port.

    With ``kafka.bootstrap_servers`` set (and no ``changelog`` given), the Kafka side starts
    first: changelog ingester, outbox publisher, PutSignals through the changelog and
    WatchSignals (gss.kafka.events_runtime); it stops after calls drain, before the store closes.

    A registry loaded here (none given) is followed: its file is checked for lifecycle changes
    every ``registry_poll_seconds`` (None: only on SIGHUP or :meth:`GssServer.reload_registry`).
    """
    server_settings = settings.server
    registry_path = None if registry is not None else Path(settings.registry_path)
    registry_state = file_state(registry_path) if registry_path is not None else None
    registry = registry or load_registry(settings.registry_path)
    if store is None:
        seed_store(settings, registry)
    store = store or open_store(settings, registry)
    key_lengths = {galaxy.name: galaxy.codec.length for galaxy in registry}
    store.on_apply = functools.partial(
        metrics.record_apply, key_lengths=key_lengths, registry=registry
    )
    try:
        cluster = ClusterNode(settings, registry)
    except GssError:
        store.close()
        raise
    events = None
    if changelog is None and settings.kafka.bootstrap_servers:
        from gss.kafka.events_runtime import EventsRuntime

        hosted = None if cluster.layout.hosts_everything else cluster.hosted
        try:
            events = EventsRuntime(
                settings, registry, store, hosted=hosted, ordinal=cluster.layout.ordinal
            ).start()
        except Exception:
            store.close()
            raise
        changelog, watch = events.writer, events.watch
        cluster.attach(events.ingester, events.election)
    elif not cluster.layout.hosts_everything:
        store.close()
        raise GssError(
            f"cluster.nodes is {cluster.layout.nodes}: a node of a cluster materialises its "
            "partitions from the changelog, so it needs kafka.bootstrap_servers"
        )
    service = SignalService(registry, store, server_settings, changelog, watch, cluster)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="gss-grpc", daemon=True)
    thread.start()
    try:
        built = asyncio.run_coroutine_threadsafe(
            _build_grpc_server(
                settings,
                service,
                serving=events is None,
                reuseport=server_settings.processes > 1,
            ),
            loop,
        ).result(timeout=STARTUP_TIMEOUT_SECONDS)
        readers = internal = None
        if server_settings.processes > 1:
            readers, internal = _start_readers(settings, service, store, built.port, loop, events)
    except Exception as exc:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if events is not None:
            events.stop()
        store.close()
        raise OSError(
            f"cannot serve on {server_settings.host}:{server_settings.port}: {exc}"
        ) from exc

    metrics.STORE_SIZE.set_function(store.size_bytes)
    for galaxy in registry.galaxies:
        metrics.STORE_KEYS.labels(galaxy).set_function(
            functools.partial(store.estimated_keys, galaxy)
        )
    server = GssServer(
        settings,
        registry,
        store,
        service,
        built.port,
        loop,
        built.grpc_server,
        built.health,
        thread,
        events=events,
        registry_path=registry_path,
        _registry_state=registry_state,
        health_grpc_server=built.health_server,
        health_port=built.health_port,
        cluster=cluster,
        _serving=events is None,
        readers=readers,
        internal_server=internal,
    )
    server.on_stop.append(cluster.stop)
    if events is not None:
        server.on_stop.append(events.stop)
    if server_settings.metrics_port >= 0:
        # Before the node announces itself or starts its threads: a taken port stops
        # everything started so far (the gRPC server, readers, changelog side, store).
        try:
            # One endpoint for the whole server: with readers, their counts are added to this
            # process's (gss.metrics.ServingProcessesCollector).
            server._metrics_server, _thread = start_http_server(
                server_settings.metrics_port,
                addr=server_settings.host,
                registry=(
                    REGISTRY
                    if readers is None
                    else metrics.serving_processes_registry(readers.metrics_dir)
                ),
            )
        except OSError as exc:
            error = OSError(
                f"cannot serve metrics on {server_settings.host}:{server_settings.metrics_port}: "
                f"{exc}"
            )
            try:
                server.stop(0)
            except Exception as stop_error:  # the port's error is the one to report
                log.warning("server_start_cleanup_failed", error=str(stop_error))
            raise error from exc
        server.metrics_port = server._metrics_server.server_port
    cluster.set_serving(events is None)
    cluster.bound(server.address)
    backup_interval = settings.cluster.backup_interval_seconds
    if backup_interval is not None and settings.cluster.backup_root:
        threading.Thread(
            target=_back_up_periodically,
            args=(server, backup_interval),
            name="gss-backup",
            daemon=True,
        ).start()
    if events is not None:
        threading.Thread(
            target=server._follow_readiness,
            args=(READINESS_POLL_SECONDS,),
            name="gss-readiness",
            daemon=True,
        ).start()
    if server_settings.auth.policy_file is not None and not server_settings.tls.enabled:
        log.warning(
            "access_control_without_tls",
            action="tokens and data cross the network in clear unless a proxy or mesh "
            "terminates TLS in front of this port: set server.tls (docs/security.md)",
        )
    log.info(
        "server_started",
        address=f"{server_settings.host}:{built.port}",
        metrics_port=server.metrics_port,
        galaxies=list(registry.galaxies),
        tls=server_settings.tls.enabled,
        mutual_tls=server_settings.tls.files()[2] is not None,
        health_port=built.health_port,
        access_policy=str(server_settings.auth.policy_file or "") or None,
    )
    if registry_poll_seconds is not None:
        server.follow_registry(registry_poll_seconds)
    return server
