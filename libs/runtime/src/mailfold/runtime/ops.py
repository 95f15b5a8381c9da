"""The operational HTTP surface every service has: /healthz and /metrics, and a uvicorn runner."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import Final

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mailfold.runtime.problems import Guard, api_app, problem_body
from mailfold.runtime.settings import HttpLimits, shared_listener

HealthCheck = Callable[[], Awaitable[dict[str, object]]]


def scraped(registry: CollectorRegistry) -> CollectorRegistry:
    """What `/metrics` shows: `registry`, or, in a worker of `mailfold serve --workers N`
    (PROMETHEUS_MULTIPROC_DIR set), the metrics of every worker of the service merged from
    their files by prometheus-client's MultiProcessCollector (counters summed, gauges each by
    its `multiprocess_mode`)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return registry
    merged = CollectorRegistry()
    MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
    return merged


def ops_routes(
    health: HealthCheck,
    registry: CollectorRegistry = REGISTRY,
    *,
    asyncapi: Callable[[], str],
    details: Callable[[], dict[str, object]] | None = None,
) -> list[BaseRoute]:
    """`GET /healthz` (200 when every dependency answers, else 503), `GET /metrics`, and
    `GET /asyncapi.json` (the service's AsyncAPI document). `details` adds what the service
    does right now (not a check) to the health answer."""

    async def healthz(_: Request) -> Response:
        try:
            checks = await asyncio.wait_for(health(), timeout=5)
        except Exception as exc:  # a failing check is an unhealthy answer, not a crash
            return JSONResponse({"status": "unhealthy", "error": str(exc)}, status_code=503)
        ok = all(v is True or v == "ok" for v in checks.values())
        body: dict[str, object] = {"status": "ok" if ok else "unhealthy", "checks": checks}
        if details is not None:
            body.update(details())
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(scraped(registry)), media_type=CONTENT_TYPE_LATEST)

    async def spec(_: Request) -> Response:
        return Response(asyncapi(), media_type="application/json")

    return [Route("/healthz", healthz), Route("/metrics", metrics), Route("/asyncapi.json", spec)]


def ops_app(health: HealthCheck, *, asyncapi: Callable[[], str]) -> Starlette:
    """An app with only the operational routes, for services without an HTTP API of their own."""
    return api_app(ops_routes(health, asyncapi=asyncapi))


def _closing_answer(status: int, reason: str, detail: str) -> bytes:
    body = problem_body(status, detail)
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


_TIMEOUT_RESPONSE: Final = _closing_answer(
    408, "Request Timeout", "the request headers did not arrive in time"
)
_FULL_RESPONSE: Final = _closing_answer(
    503, "Service Unavailable", "too many connections; try again later"
)


def bounded_protocol(header_timeout_s: float, max_connections: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a connection limit and a deadline on request headers.

    uvicorn times out idle keep-alive connections, but not a connection that opens and then sends
    its headers slowly or never: each would hold a file descriptor for good. The deadline starts
    when the connection opens and again when a new request starts on a kept-alive connection,
    and ends when the headers are complete; past it the client gets 408 and the connection closes.
    A connection beyond `max_connections` open ones is answered 503 and closed at once.
    """

    class BoundedProtocol(HttpToolsProtocol):
        _header_deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._header_deadline is None:
                self._header_deadline = self.loop.call_later(
                    header_timeout_s, self._headers_too_slow
                )

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _headers_too_slow(self) -> None:
            self._header_deadline = None
            if not self.transport.is_closing():
                self.transport.write(_TIMEOUT_RESPONSE)
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(_FULL_RESPONSE)
                transport.close()
                return
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return BoundedProtocol


class HttpServer:
    """uvicorn on the running event loop, started and stopped by the service.

    Every app is wrapped in the problem+json Guard; the listener's timeouts and limits come
    from `limits` (by default MAILFOLD_HTTP_* from the environment).
    """

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        host: str,
        port: int,
        *,
        limits: HttpLimits | None = None,
    ) -> None:
        limits = limits or HttpLimits.from_env()
        config = uvicorn.Config(
            Guard(app, body_timeout_s=limits.body_timeout_s),
            host=host,
            port=port,
            http=bounded_protocol(limits.header_timeout_s, limits.max_connections),
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            # X-Forwarded-For is trusted only where a service decides to (see the tracker).
            proxy_headers=False,
            timeout_keep_alive=limits.keepalive_timeout_s,
            backlog=limits.backlog,
        )
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None
        self._reuse_port = limits.reuse_port

    async def start(self) -> None:
        """Start serving; returns once the socket listens."""
        config = self._server.config
        sockets = (
            [shared_listener(config.host, config.port, backlog=config.backlog)]
            if self._reuse_port
            else None
        )
        self._task = asyncio.create_task(self._server.serve(sockets=sockets))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # surfaces the bind error
                raise RuntimeError("HTTP server stopped before it started")
            await asyncio.sleep(0.01)

    @property
    def port(self) -> int:
        """The bound port (useful when asked for port 0)."""
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return int(self._server.config.port)

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests, return."""
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
