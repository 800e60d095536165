"""The one server interceptor: every call passes here before it reaches a servicer.

In order, for every method of every service on the port:

1. who is calling (gss.auth.authenticator) → UNAUTHENTICATED;
2. request bytes that do not decode → INVALID_ARGUMENT (gRPC would answer UNKNOWN);
3. the permission the method needs in the galaxies the request names → PERMISSION_DENIED,
   naming the permission and the galaxy (never a credential);
4. at most ``server.max_calls_per_caller`` calls in flight per caller → RESOURCE_EXHAUSTED;
5. a unary call without a client deadline is cut off after ``server.default_deadline_seconds``
   → DEADLINE_EXCEEDED.

The caller is then available to the servicer as :data:`gss.auth.identity.CURRENT_CALLER`.
Health checks pass without credentials (Kubernetes probes carry none); oversize messages are
refused by gRPC itself (RESOURCE_EXHAUSTED, ``server.max_receive_message_bytes``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc
import grpc.aio
import structlog

from contract.settings import ServerSettings
from gss import metrics
from gss.auth.authenticator import Authenticator, Unauthenticated
from gss.auth.identity import CURRENT_CALLER, UNRESTRICTED, Caller, Permission

log = structlog.get_logger(__name__)
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

_SERVICE = "/gss.v1.SignalService/"
# Methods that read the one galaxy their request names.
_READS_GALAXY = {f"{_SERVICE}{m}" for m in ("GetSignals", "DescribeGalaxy", "WatchSignals")}
_PUT = f"{_SERVICE}PutSignals"
_OPEN = ("/grpc.health.v1.Health/",)


class Undecodable:
    """What the guarded deserializer returns for bytes that do not parse."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _guarded(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # any parse failure of hostile bytes is the caller's error
            return Undecodable(f"{type(exc).__name__}: {exc}")

    return parse


def required(method: str, request: Any) -> list[tuple[Permission, str, str]]:
    """(permission, galaxy, where) the call needs; ``where`` names the request field."""
    if method in _READS_GALAXY:
        return [(Permission.READ, request.galaxy, "galaxy")]
    if method == _PUT:
        needs: dict[tuple[Permission, str], str] = {}
        for i, record in enumerate(request.records):
            permission = Permission.ADMIN if record.override_ordering else Permission.WRITE
            needs.setdefault((permission, record.galaxy), f"records[{i}]")
        return [(permission, galaxy, where) for (permission, galaxy), where in needs.items()]
    return []


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """Decoding, authentication, authorization, per-caller concurrency and the deadline cap."""

    def __init__(self, settings: ServerSettings, authenticator: Authenticator) -> None:
        self.settings = settings
        self.authenticator = authenticator
        self._in_flight: dict[str, int] = {}
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_OPEN):
            return handler
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrapped[method] = self._wrap(method, handler)
        return cast("grpc.RpcMethodHandler[_Req, _Resp]", wrapped)

    # -- the checks ----------------------------------------------------------------------

    def _admit(
        self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Caller:
        try:
            caller = (
                self.authenticator.authenticate(
                    context.invocation_metadata() or (), context.auth_context
                )
                if self.authenticator.enabled
                else UNRESTRICTED
            )
        except Unauthenticated as exc:
            log.warning("access_refused", rpc_method=method, peer=context.peer(), error=str(exc))
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from None
        if isinstance(request, Undecodable):
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request of {method} does not decode: {request.error}",
            )
        if request is not None:
            for permission, galaxy, where in required(method, request):
                if not caller.may(permission, galaxy):
                    log.warning(
                        "access_denied",
                        rpc_method=method,
                        caller=caller.identity,
                        galaxy=galaxy,
                        permission=permission.value,
                    )
                    raise _Refused(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"{caller.identity} lacks the {permission.value} permission on galaxy "
                        f"{galaxy!r} ({where} of {method.rsplit('/', 1)[-1]})",
                    )
        return caller

    def _enter(self, caller: Caller, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        # Anonymous callers are told apart by address, so one cannot starve the others.
        key = caller.identity if caller.authenticated else f"{caller.identity}@{_host(context)}"
        count = self._in_flight.get(key, 0)
        if count >= self.settings.max_calls_per_caller:
            raise _Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{caller.identity} has {count} calls in flight; the limit is "
                f"{self.settings.max_calls_per_caller} per caller (server.max_calls_per_caller)",
            )
        self._in_flight[key] = count + 1
        return key

    def _leave(self, key: str) -> None:
        count = self._in_flight.pop(key) - 1
        if count:
            self._in_flight[key] = count

    # -- wrapping handlers ---------------------------------------------------------------

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[_Req, _Resp]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        deserializer = _guarded(handler.request_deserializer)
        serializer = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary), deserializer, serializer
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._unary_stream(method, handler.unary_stream), deserializer, serializer
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._stream_unary(method, handler.stream_unary), deserializer, serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            self._stream_stream(method, handler.stream_stream), deserializer, serializer
        )

    def _unary(self, method: str, behavior: Any) -> Any:
        cap = self.settings.default_deadline_seconds

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                caller = self._admit(method, request, context)
                key = self._enter(caller, context)
            except _Refused as exc:
                _refused("unary", method, exc.code)
                await context.abort(exc.code, str(exc))
            token = CURRENT_CALLER.set(caller)
            try:
                if context.time_remaining() is None:
                    try:
                        return await asyncio.wait_for(behavior(request, context), cap)
                    except TimeoutError:
                        await context.abort(
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"the call took longer than {cap:g} s, the server's limit for calls "
                            "without a deadline (server.default_deadline_seconds): set a deadline",
                        )
                return await behavior(request, context)
            finally:
                CURRENT_CALLER.reset(token)
                self._leave(key)

        return call

    def _unary_stream(self, method: str, behavior: Any) -> Any:
        async def call(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                caller = self._admit(method, request, context)
                key = self._enter(caller, context)
            except _Refused as exc:
                _refused("server_stream", method, exc.code)
                await context.abort(exc.code, str(exc))
            token = CURRENT_CALLER.set(caller)
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                CURRENT_CALLER.reset(token)
                self._leave(key)

        return call

    def _admit_stream(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        # Request streams (server reflection): the caller must be authenticated; the galaxy, if
        # any, is not known up front, so no per-galaxy permission applies.
        return self._admit(method, None, context)

    def _stream_unary(self, method: str, behavior: Any) -> Any:
        async def call(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            try:
                key = self._enter(self._admit_stream(method, context), context)
            except _Refused as exc:
                _refused("client_stream", method, exc.code)
                await context.abort(exc.code, str(exc))
            try:
                return await behavior(_decoded(method, requests, context), context)
            finally:
                self._leave(key)

        return call

    def _stream_stream(self, method: str, behavior: Any) -> Any:
        async def call(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                key = self._enter(self._admit_stream(method, context), context)
            except _Refused as exc:
                _refused("bidi_stream", method, exc.code)
                await context.abort(exc.code, str(exc))
            try:
                async for response in behavior(_decoded(method, requests, context), context):
                    yield response
            finally:
                self._leave(key)

        return call


async def _decoded(
    method: str, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Undecodable):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a request of {method} does not decode: {request.error}",
            )
        yield request


def _refused(kind: str, method: str, code: grpc.StatusCode) -> None:
    # Refused calls never reach the servicer's own accounting: count them here, under the
    # same metric (grpc_server_handled_total), so dashboards see every refusal by code.
    service, _, name = method.lstrip("/").rpartition("/")
    metrics.GRPC_HANDLED.labels(kind, service, name, code.name).inc()


def _host(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    peer = context.peer() or ""
    return peer.rsplit(":", 1)[0]
