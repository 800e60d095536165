"""The signal explorer: one static page over a few JSON endpoints (aiohttp), read-only.

    GET /                               the page (gss/ui/page.html: plain HTML and JavaScript)
    GET /api/galaxies                   galaxies, signals, versions, states, value types
    GET /api/entity?galaxy=G&id=E       every signal of an entity, with its lineage
    GET /api/events?galaxy=G            recent availability events and the galaxy's freshness
    GET /api/health                     ingest lag per galaxy and the outbox depth
    GET /api/deadletters?galaxy=G       dead-letter counts of the last hour, and samples

Every call reaches GSS with the browser caller's ``Authorization`` header when it sends one
(else the explorer's own ``client.*`` credentials), so the API's access rules decide what the
page shows: a refused call answers 401/403 with GSS's message.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from importlib import resources
from typing import Any

import grpc
import structlog
from aiohttp import web

from clients.lookup import GssClient, open_channel, settings_token
from contract.settings import Settings
from gss.ui import data

log = structlog.get_logger(__name__)

_HTTP_STATUS = {
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Explorer:
    """The page's state: the GSS channel, settings, and the blocking work's thread pool."""

    def __init__(self, settings: Settings, target: str) -> None:
        self.settings = settings
        self.target = target
        self.channel = open_channel(target, settings.client.tls)
        self.default_token = settings_token(settings.client)

    def client(self, request: web.Request) -> GssClient:
        """A client over the shared channel, with the caller's token if it sent one."""
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None
        return GssClient(
            self.target,
            channel=self.channel,
            tls=self.settings.client.tls,
            token=token or self.default_token,
        )

    @property
    def metrics_url(self) -> str | None:
        ui = self.settings.ui
        if ui.metrics_url:
            return ui.metrics_url
        port = self.settings.server.metrics_port
        host = self.target.rpartition(":")[0] or "127.0.0.1"
        return f"http://{host}:{port}/metrics" if port and port > 0 else None


async def _blocking(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, partial(fn, *args))


def _json_errors(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = exc.details() if hasattr(exc, "details") else str(exc)
            return web.json_response(
                {"error": f"{code.name}: {details}"}, status=_HTTP_STATUS.get(code, 502)
            )
        except KeyError as exc:
            return web.json_response({"error": f"missing query parameter {exc}"}, status=400)

    return wrapped


EXPLORER = web.AppKey("explorer", Explorer)


def _explorer(request: web.Request) -> Explorer:
    return request.app[EXPLORER]


async def page(request: web.Request) -> web.Response:
    html = resources.files("gss.ui").joinpath("page.html").read_text()
    return web.Response(text=html, content_type="text/html")


@_json_errors
async def api_galaxies(request: web.Request) -> web.Response:
    client = _explorer(request).client(request)
    return web.json_response({"galaxies": await _blocking(data.galaxies, client)})


@_json_errors
async def api_entity(request: web.Request) -> web.Response:
    client = _explorer(request).client(request)
    galaxy, entity_id = request.query["galaxy"], request.query["id"].strip()
    return web.json_response(await _blocking(data.entity, client, galaxy, entity_id))


@_json_errors
async def api_events(request: web.Request) -> web.Response:
    explorer = _explorer(request)
    galaxy = request.query["galaxy"]
    await _blocking(explorer.client(request).describe, galaxy)  # may the caller read it?
    events = await _blocking(
        data.recent_events, explorer.settings.kafka, galaxy, explorer.settings.ui.recent_events
    )
    return web.json_response({"events": events, "freshness": data.freshness(events)})


@_json_errors
async def api_health(request: web.Request) -> web.Response:
    explorer = _explorer(request)
    await _blocking(explorer.client(request).galaxies)  # an authenticated caller
    return web.json_response(await _blocking(data.ingest_health, explorer.metrics_url))


@_json_errors
async def api_dead_letters(request: web.Request) -> web.Response:
    explorer = _explorer(request)
    galaxy = request.query["galaxy"]
    await _blocking(explorer.client(request).describe, galaxy)
    since_ms = int((time.time() - explorer.settings.ui.dead_letter_seconds) * 1000)
    found = await _blocking(data.dead_letters, explorer.settings.kafka, galaxy, since_ms)
    return web.json_response(found)


def make_app(settings: Settings, target: str) -> web.Application:
    """The explorer's aiohttp application, reading GSS at ``target``."""
    app = web.Application()
    app[EXPLORER] = Explorer(settings, target)
    app.router.add_get("/", page)
    app.router.add_get("/api/galaxies", api_galaxies)
    app.router.add_get("/api/entity", api_entity)
    app.router.add_get("/api/events", api_events)
    app.router.add_get("/api/health", api_health)
    app.router.add_get("/api/deadletters", api_dead_letters)
    return app


class RunningExplorer:
    """The explorer served from a thread of its own (``gss run``, tests); ``stop()`` ends it."""

    def __init__(self, settings: Settings, target: str, host: str, port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(make_app(settings, target))
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, host, port)
        self._loop.run_until_complete(site.start())
        bound = self._runner.addresses[0]
        self.url = f"http://{bound[0]}:{bound[1]}/"
        self._thread = threading.Thread(target=self._loop.run_forever, name="gss-ui", daemon=True)
        self._thread.start()
        log.info("explorer_started", url=self.url, target=target)

    def stop(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()


def serve(settings: Settings, target: str, host: str, port: int) -> None:
    """Run the explorer until interrupted (blocking)."""
    log.info("explorer_started", url=f"http://{host}:{port}/", target=target)
    web.run_app(make_app(settings, target), host=host, port=port, print=None)
