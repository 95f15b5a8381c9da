"""The operational HTTP surface every service has: /healthz and /metrics, and a uvicorn runner."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

HealthCheck = Callable[[], Awaitable[dict[str, object]]]


def ops_routes(
    health: HealthCheck,
    registry: CollectorRegistry = REGISTRY,
    *,
    asyncapi: Callable[[], str] | None = None,
) -> list[BaseRoute]:
    """`GET /healthz` (200 when every dependency answers, else 503), `GET /metrics`, and
    `GET /asyncapi.json` (the service's AsyncAPI document) when one is given."""

    async def healthz(_: Request) -> Response:
        try:
            checks = await asyncio.wait_for(health(), timeout=5)
        except Exception as exc:  # a failing check is an unhealthy answer, not a crash
            return JSONResponse({"status": "unhealthy", "error": str(exc)}, status_code=503)
        ok = all(v is True or v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "unhealthy", "checks": checks},
            status_code=200 if ok else 503,
        )

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes: list[BaseRoute] = [Route("/healthz", healthz), Route("/metrics", metrics)]
    if asyncapi is not None:
        document = asyncapi

        async def spec(_: Request) -> Response:
            return Response(document(), media_type="application/json")

        routes.append(Route("/asyncapi.json", spec))
    return routes


def ops_app(health: HealthCheck, *, asyncapi: Callable[[], str] | None = None) -> Starlette:
    """An app with only the operational routes, for services without an HTTP API of their own."""
    return Starlette(routes=ops_routes(health, asyncapi=asyncapi))


class HttpServer:
    """uvicorn on the running event loop, started and stopped by the service."""

    def __init__(self, app: Callable[..., Awaitable[None]], host: str, port: int) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            # X-Forwarded-For is trusted only where a service decides to (see the tracker).
            proxy_headers=False,
        )
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start serving; returns once the socket listens."""
        self._task = asyncio.create_task(self._server.serve())
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
