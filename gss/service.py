"""The SignalService servicer: lookups, writes and the registry over gRPC.

Every method goes through :func:`_rpc`, the one place that maps GSS errors to status codes,
records metrics and logs the call. Access was checked before a call gets here, by the one
interceptor (gss.auth.interceptor), which leaves the caller in ``CURRENT_CALLER``: PutSignals
records it as each value's producer and in the audit log (``write_audited``).
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc
import structlog
from google.protobuf.message import Message

from contract.errors import (
    GssError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    WrongNodeError,
)
from contract.registry import GalaxySpec, Registry, SignalState
from contract.settings import ServerSettings
from contract.v1 import envelope_pb2, signal_service_pb2
from gss import metrics, reads
from gss.auth.identity import CURRENT_CALLER, Permission
from gss.cluster.node import ClusterNode
from gss.writes import check_event_times, to_writes
from store.db import SignalStore

if TYPE_CHECKING:
    from gss.readers import WriterLink

log = structlog.get_logger(__name__)

SERVICE = "gss.v1.SignalService"
# Trailing metadata of ListGalaxies naming the serving process that answered (0: the writer).
PROCESS_HEADER = "gss-process"
# True while the writer handles a call a reader forwarded to it (gss.readers): the reader the
# client called counts that call in the request metrics, so the writer does not count it again.
FORWARDED_CALL: ContextVar[bool] = ContextVar("gss_forwarded_call", default=False)
_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (WrongNodeError, grpc.StatusCode.FAILED_PRECONDITION),
)
# Calls slower than this are logged at INFO; the rest at DEBUG (a log line per lookup would
# cost more than the lookup).
SLOW_CALL_SECONDS = 0.25

Req = TypeVar("Req", bound=Message)
_STATES = {
    SignalState.ACTIVE: signal_service_pb2.SIGNAL_STATE_ACTIVE,
    SignalState.DEPRECATED: signal_service_pb2.SIGNAL_STATE_DEPRECATED,
}


class ChangelogWriter(Protocol):
    """Appends PutSignals records to the galaxy changelogs (when a broker is configured)."""

    def put(
        self,
        records: list[envelope_pb2.SignalRecord],
        *,
        wait_readable: bool,
        timeout_seconds: float,
    ) -> signal_service_pb2.PutSignalsResponse: ...


class WatchSource(Protocol):
    """Availability events for WatchSignals (gss.kafka.watch.WatchSource, when a broker is configured)."""

    def stream_async(
        self, request: signal_service_pb2.WatchSignalsRequest
    ) -> AsyncIterator[signal_service_pb2.WatchSignalsResponse]: ...


# Labelled metric children, looked up once: ``labels()`` costs more than a 1-key lookup's
# own code (docs/serving.md, "What bounds a lookup"). The label sets are small and fixed
# (methods x codes, methods x galaxies of the registry or "unknown").
@functools.cache
def _handled(method: str, code: str) -> Any:
    return metrics.GRPC_HANDLED.labels("unary", SERVICE, method, code)


@functools.cache
def _seconds(method: str) -> Any:
    return metrics.GRPC_SECONDS.labels("unary", SERVICE, method)


@functools.cache
def _galaxy_seconds(method: str, galaxy: str) -> Any:
    return metrics.GALAXY_REQUEST_SECONDS.labels(method, galaxy)


@functools.cache
def _cells(galaxy: str, status: str) -> Any:
    return metrics.LOOKUP_CELLS.labels(galaxy, status)


def _rpc(method: str, *, always_log: bool = False) -> Callable[..., Callable[..., Awaitable[Any]]]:
    def decorate(
        fn: Callable[[SignalService, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]],
    ) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def handle(
            self: SignalService, request: Req, context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            error: str | None = None
            try:
                return await fn(self, request, context)
            except GssError as exc:
                code = next(
                    (c for kind, c in _CODES if isinstance(exc, kind)), grpc.StatusCode.INTERNAL
                )
                error = str(exc)
            except asyncio.CancelledError:
                # Cut off (the server's cap for calls without a deadline, or the client left).
                code, error = grpc.StatusCode.CANCELLED, "cancelled"
                raise
            except Exception as exc:
                code, error = (
                    grpc.StatusCode.INTERNAL,
                    f"internal error: {type(exc).__name__}: {exc}",
                )
                log.exception("rpc_failed", rpc_method=method)
            finally:
                elapsed = time.perf_counter() - start
                galaxy = self.galaxy_label(getattr(request, "galaxy", ""))
                if not FORWARDED_CALL.get():
                    _handled(method, code.name).inc()
                    _seconds(method).observe(elapsed)
                    _galaxy_seconds(method, galaxy).observe(elapsed)
                if always_log or error or elapsed > SLOW_CALL_SECONDS:
                    request_id = (
                        dict(context.invocation_metadata() or ()).get("x-request-id")
                        or uuid.uuid4().hex
                    )
                    emit = log.warning if error else log.info
                    emit(
                        "rpc",
                        rpc_method=method,
                        grpc_code=code.name,
                        galaxy=galaxy,
                        duration_seconds=round(elapsed, 6),
                        request_id=request_id,
                        error=error,
                    )
            await context.abort(code, error or "")  # raises: the call ends here
            return None

        return handle

    return decorate


class SignalService:
    """Serves one registry over one store."""

    def __init__(
        self,
        registry: Registry,
        store: SignalStore,
        settings: ServerSettings,
        changelog: ChangelogWriter | None = None,
        watch: WatchSource | None = None,
        cluster: ClusterNode | None = None,
    ) -> None:
        self.registry = registry
        self.store = store
        self.settings = settings
        self.changelog = changelog
        self.watch = watch
        self.cluster = cluster
        # Several serving processes (gss.readers): which one this is (0: the writer); in a
        # reader, the link PutSignals and DescribeCluster are forwarded over; in the writer,
        # what a write waits for before it is acknowledged (every reader caught up with it).
        self.process = 0
        self.writer_link: WriterLink | None = None
        self.after_write: Callable[[], None] | None = None

    def galaxy_label(self, name: str) -> str:
        return name if name in self.registry.galaxies else "unknown"

    @_rpc("GetSignals")
    async def GetSignals(
        self,
        request: signal_service_pb2.GetSignalsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> bytes:
        galaxy = self.registry.galaxy(request.galaxy)
        if not request.entity_ids or not request.signals:
            raise InvalidArgumentError("a lookup needs at least one entity id and one signal")
        cells = len(request.entity_ids) * len(request.signals)
        if cells > self.settings.max_lookup_cells:
            raise InvalidArgumentError(
                f"{len(request.entity_ids)} ids x {len(request.signals)} signals = {cells} cells; "
                f"the limit is {self.settings.max_lookup_cells} per call: split the request"
            )
        specs = []
        for j, ref in enumerate(request.signals):
            try:
                specs.append(galaxy.signal(ref.name, ref.version))
            except NotFoundError as exc:
                raise NotFoundError(f"signals[{j}]: {exc}") from None
        if self.cluster is not None:
            if not self.cluster.layout.hosts_everything:
                self.cluster.check_hosted(
                    galaxy, galaxy.codec.many_to_bytes(request.entity_ids), "entity_ids"
                )
            if request.min_positions:
                await self._wait_positions(request.min_positions, context)
        if galaxy.deprecated_refs:
            metrics.count_deprecated_lookups(galaxy, specs, len(request.entity_ids))
        body, counts = reads.lookup(self.store, galaxy, request.entity_ids, specs)
        _cells(galaxy.name, "found").inc(counts.found)
        if counts.not_found:
            _cells(galaxy.name, "not_found").inc(counts.not_found)
        if counts.expired:
            _cells(galaxy.name, "expired").inc(counts.expired)
        return body

    async def _wait_positions(
        self,
        positions: Sequence[envelope_pb2.ChangelogPosition],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        """Read after event: wait (briefly, on the loop) until ``positions`` are applied here."""
        assert self.cluster is not None
        if self.cluster.applied(positions):
            return
        wait = self.cluster.settings.cluster.min_position_wait_seconds
        left = context.time_remaining()
        if left is not None:
            wait = min(wait, max(0.0, left - 0.05))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            await asyncio.sleep(0.005)
            if self.cluster.applied(positions):
                return
        behind = ", ".join(f"{p.topic}:{p.partition}:{p.offset}" for p in positions[:3])
        raise UnavailableError(
            f"this replica ({self.cluster.address}) has not applied min_positions ({behind}) "
            f"within {wait:.2f} s: try another replica of the partition"
        )

    @_rpc("DescribeCluster")
    async def DescribeCluster(
        self,
        request: signal_service_pb2.DescribeClusterRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> signal_service_pb2.ClusterMap:
        if self.writer_link is not None:
            link = self.writer_link
            return await link.call(link.describe, request, context.time_remaining())  # type: ignore[no-any-return]
        if self.cluster is None:
            raise UnavailableError("this server has no cluster view")
        return self.cluster.describe()

    @_rpc("PutSignals", always_log=True)
    async def PutSignals(
        self,
        request: signal_service_pb2.PutSignalsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> signal_service_pb2.PutSignalsResponse:
        records = list(request.records)
        caller = CURRENT_CALLER.get()
        audit = log.bind(
            caller=caller.identity,
            galaxies=sorted({r.galaxy for r in records}),
            records=len(records),
            tombstones=sum(r.tombstone for r in records),
            overrides=sum(r.override_ordering for r in records),
        )
        try:
            response = await self._put(
                records, request.wait_readable, context, caller.authenticated
            )
        except GssError as exc:
            audit.info("write_audited", outcome="refused", error=str(exc))
            raise
        audit.info(
            "write_audited",
            outcome="done",
            applied=sum(o == signal_service_pb2.WRITE_OUTCOME_APPLIED for o in response.outcomes),
            accepted=sum(o == signal_service_pb2.WRITE_OUTCOME_ACCEPTED for o in response.outcomes),
        )
        return response

    async def _put(
        self,
        records: list[envelope_pb2.SignalRecord],
        wait_readable: bool,
        context: grpc.aio.ServicerContext[Any, Any],
        authenticated: bool,
    ) -> signal_service_pb2.PutSignalsResponse:
        if not records:
            raise InvalidArgumentError("records is empty: send at least one signal record")
        if len(records) > self.settings.max_put_records:
            raise InvalidArgumentError(
                f"{len(records)} records; the limit is {self.settings.max_put_records} per call: split the batch"
            )
        check_event_times(records, max_future_seconds=self.settings.max_future_event_seconds)
        if authenticated:
            # The envelope says who wrote the value: the authenticated caller, not what it claims.
            producer = CURRENT_CALLER.get().identity
            for record in records:
                record.envelope.producer = producer
        if self.writer_link is not None:
            # A reader process: the writer process stores it (and acknowledges it only once
            # every serving process reads it).
            link = self.writer_link
            forwarded = signal_service_pb2.PutSignalsRequest(
                records=records, wait_readable=wait_readable
            )
            return await link.call(link.put, forwarded, context.time_remaining())  # type: ignore[no-any-return]
        # Writes block (fsync, broker round trips): they run in a worker thread, never on the
        # event loop that serves lookups.
        if self.changelog is not None:
            timeout = context.time_remaining() or self.settings.default_deadline_seconds
            response = await asyncio.to_thread(
                self.changelog.put,
                records,
                wait_readable=wait_readable,
                timeout_seconds=timeout,
            )
            if wait_readable and self.after_write is not None:
                await asyncio.to_thread(self.after_write)
            return response
        writes = to_writes(self.registry, records)
        try:
            result = await asyncio.to_thread(self.store.apply, writes)
        except RuntimeError as exc:  # closed during shutdown
            raise UnavailableError(f"the store is not accepting writes: {exc}") from exc
        if self.after_write is not None:
            await asyncio.to_thread(self.after_write)
        applied = signal_service_pb2.WRITE_OUTCOME_APPLIED
        skipped = signal_service_pb2.WRITE_OUTCOME_SKIPPED_NOT_NEWER
        return signal_service_pb2.PutSignalsResponse(
            outcomes=[applied if ok else skipped for ok in result.applied]
        )

    @_rpc("ListGalaxies")
    async def ListGalaxies(
        self,
        request: signal_service_pb2.ListGalaxiesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> signal_service_pb2.ListGalaxiesResponse:
        caller = CURRENT_CALLER.get()
        # Which serving process answered (gss.readers): for tests and diagnosis.
        context.set_trailing_metadata(((PROCESS_HEADER, str(self.process)),))
        return signal_service_pb2.ListGalaxiesResponse(
            galaxies=[
                galaxy_message(g) for g in self.registry if caller.may(Permission.READ, g.name)
            ]
        )

    @_rpc("DescribeGalaxy")
    async def DescribeGalaxy(
        self,
        request: signal_service_pb2.DescribeGalaxyRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> signal_service_pb2.Galaxy:
        return galaxy_message(self.registry.galaxy(request.galaxy))

    async def WatchSignals(
        self,
        request: signal_service_pb2.WatchSignalsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[signal_service_pb2.WatchSignalsResponse]:
        """A server stream of availability events (gss.kafka.watch); needs a broker."""
        code, error = grpc.StatusCode.OK, None
        start = time.perf_counter()
        try:
            if self.watch is None:
                raise UnavailableError(
                    "WatchSignals needs a Kafka broker and this server has none: "
                    "set kafka.bootstrap_servers (GSS_KAFKA__BOOTSTRAP_SERVERS)"
                )
            async for response in self.watch.stream_async(request):
                yield response
        except GssError as exc:
            code = next(
                (c for kind, c in _CODES if isinstance(exc, kind)), grpc.StatusCode.INTERNAL
            )
            error = str(exc)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            metrics.GRPC_HANDLED.labels("server_stream", SERVICE, "WatchSignals", code.name).inc()
            metrics.GRPC_SECONDS.labels("server_stream", SERVICE, "WatchSignals").observe(
                time.perf_counter() - start
            )
        if error is not None:
            log.warning("rpc", rpc_method="WatchSignals", grpc_code=code.name, error=error)
            await context.abort(code, error)

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        """gRPC handlers; GetSignals returns pre-serialized bytes (see gss.reads)."""
        pb = signal_service_pb2
        return {
            "GetSignals": grpc.unary_unary_rpc_method_handler(
                self.GetSignals,
                request_deserializer=pb.GetSignalsRequest.FromString,
                response_serializer=bytes,
            ),
            "PutSignals": grpc.unary_unary_rpc_method_handler(
                self.PutSignals,
                request_deserializer=pb.PutSignalsRequest.FromString,
                response_serializer=pb.PutSignalsResponse.SerializeToString,
            ),
            "ListGalaxies": grpc.unary_unary_rpc_method_handler(
                self.ListGalaxies,
                request_deserializer=pb.ListGalaxiesRequest.FromString,
                response_serializer=pb.ListGalaxiesResponse.SerializeToString,
            ),
            "DescribeGalaxy": grpc.unary_unary_rpc_method_handler(
                self.DescribeGalaxy,
                request_deserializer=pb.DescribeGalaxyRequest.FromString,
                response_serializer=pb.Galaxy.SerializeToString,
            ),
            "DescribeCluster": grpc.unary_unary_rpc_method_handler(
                self.DescribeCluster,
                request_deserializer=pb.DescribeClusterRequest.FromString,
                response_serializer=pb.ClusterMap.SerializeToString,
            ),
            "WatchSignals": grpc.unary_stream_rpc_method_handler(
                self.WatchSignals,
                request_deserializer=pb.WatchSignalsRequest.FromString,
                response_serializer=pb.WatchSignalsResponse.SerializeToString,
            ),
        }


def galaxy_message(galaxy: GalaxySpec) -> signal_service_pb2.Galaxy:
    message = signal_service_pb2.Galaxy(
        name=galaxy.name,
        key_type=galaxy.key.type.value,
        key_length=galaxy.codec.length,
        partitions=galaxy.partitions,
        description=galaxy.description,
    )
    for spec in galaxy.signals:
        signal = message.signals.add(
            name=spec.name,
            version=spec.version,
            value_type=spec.value_type,
            description=spec.description,
            inline_value=spec.inline_value,
            is_default=galaxy.is_default(spec),
            state=_STATES[spec.state],
        )
        if spec.ttl is not None:
            signal.ttl.FromTimedelta(spec.ttl)
    return message
