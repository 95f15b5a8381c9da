"""uvicorn for the tracker: like the shared HttpServer, without uvicorn's own proxy-header handling.

uvicorn by default rewrites the client address from X-Forwarded-For for any peer on 127.0.0.1,
which would let anything on the host choose the address the tracker records. The tracker decides
whom to trust itself (MAILFOLD_TRACKER_TRUSTED_PROXIES), so it needs the real peer.
"""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn
from starlette.types import ASGIApp


class TrackerHttpServer:
    """uvicorn on the running event loop, started and stopped by the service."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
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
