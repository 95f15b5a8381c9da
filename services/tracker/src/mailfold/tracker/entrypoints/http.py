"""`GET /o/{token}.gif` and `GET /c/{token}` as a bare ASGI app: decode, call the handler, answer.

The pixel is the hottest path of the pipeline (every rendered email loads it), so the routes are
plain ASGI, with precomputed responses and no framework in between; everything else (/healthz,
/metrics, unknown paths) goes to the operational Starlette app.
"""

from __future__ import annotations

import time
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from mailfold.runtime.logging import get_logger
from mailfold.runtime.problems import FieldError, problem_body
from mailfold.tracker.domain.network import IPAddress, NetworkSet, client_address
from mailfold.tracker.metrics import INVALID_TOKENS, REQUEST_SECONDS
from mailfold.tracker.service_layer.handlers import NotRecorded, Tracker

# A 1x1 transparent GIF89a: a two-colour table, a graphic control extension marking colour 0
# transparent, and one pixel of colour 0.
PIXEL: Final = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00"
    b"!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
NO_CACHE: Final = (
    (b"cache-control", b"no-store, no-cache, must-revalidate, max-age=0"),
    (b"pragma", b"no-cache"),
    (b"expires", b"0"),
)
PIXEL_HEADERS: Final = [
    (b"content-type", b"image/gif"),
    (b"content-length", str(len(PIXEL)).encode()),
    *NO_CACHE,
]
# The token names the recipient; the page the link leads to has no business seeing it.
REDIRECT_HEADERS: Final = [
    (b"content-length", b"0"),
    (b"referrer-policy", b"no-referrer"),
    *NO_CACHE,
]
ALLOWED: Final = "GET, HEAD"

log = get_logger(__name__)

_MESSAGES: Final = {
    NotRecorded.INVALID_TOKEN: "the link's token is not valid",
    NotRecorded.WRONG_KIND: "the token is not a click token",
    NotRecorded.BAD_CLAIMS: "the link's token is not valid",
    NotRecorded.UNSAFE_URL: "the link does not lead to an http or https address",
}


def _problem_headers(body: bytes, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        *NO_CACHE,
        *extra,
    ]


_NOT_FOUND: Final = {
    reason: problem_body(404, "This link is not valid.", [FieldError("token", message)])
    for reason, message in _MESSAGES.items()
}
_NO_PIXEL: Final = problem_body(
    404, "Tracking pixels end in .gif.", [FieldError("path", "expected /o/{token}.gif")]
)
_NOT_ALLOWED: Final = problem_body(
    405, f"Only {ALLOWED} are answered here.", [FieldError("method", f"use {ALLOWED}")]
)


def _client_traits(scope: Scope, trusted: NetworkSet) -> tuple[str, IPAddress | None]:
    """The user agent and the client address a request carries."""
    user_agent = ""
    forwarded: str | None = None
    for name, value in scope["headers"]:
        if name == b"user-agent":
            user_agent = value.decode("latin-1")
        elif name == b"x-forwarded-for":
            text = value.decode("latin-1")
            forwarded = text if forwarded is None else f"{forwarded},{text}"
    peer = scope.get("client")
    return user_agent, client_address(peer[0] if peer else None, forwarded, trusted)


def tracker_app(tracker: Tracker, ops: ASGIApp, trusted: NetworkSet) -> ASGIApp:
    """The tracker's ASGI app: the pixel and redirect routes, the rest handed to `ops`."""
    open_seconds = REQUEST_SECONDS.labels("open")
    click_seconds = REQUEST_SECONDS.labels("click")
    invalid = {
        (endpoint, reason): INVALID_TOKENS.labels(endpoint, reason.value)
        for endpoint in ("open", "click")
        for reason in NotRecorded
    }

    async def answer(
        send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def not_allowed(send: Send) -> None:
        await answer(
            send, 405, _problem_headers(_NOT_ALLOWED, (b"allow", ALLOWED.encode())), _NOT_ALLOWED
        )

    async def pixel(scope: Scope, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if method != "GET" and method != "HEAD":
            await not_allowed(send)
        elif not path.endswith(".gif"):
            await answer(send, 404, _problem_headers(_NO_PIXEL), _NO_PIXEL)
        else:
            if method == "GET":
                try:
                    user_agent, client = _client_traits(scope, trusted)
                    refusal = tracker.open(path[3:-4], user_agent, client)
                except Exception:
                    log.exception("open not recorded", path=path[:64])
                else:
                    if refusal is not None:
                        invalid["open", refusal].inc()
            # Whatever happened, the mail client gets its image: a broken image helps nobody.
            await answer(send, 200, PIXEL_HEADERS, PIXEL)

    async def redirect(scope: Scope, send: Send) -> None:
        method: str = scope["method"]
        token = scope["path"][3:]
        result: str | NotRecorded
        if method == "GET":
            user_agent, client = _client_traits(scope, trusted)
            result = tracker.click(token, user_agent, client)
        elif method == "HEAD":
            resolved = tracker.link(token)
            result = resolved if isinstance(resolved, NotRecorded) else resolved[1]
        else:
            await not_allowed(send)
            return
        if isinstance(result, NotRecorded):
            if method == "GET":
                invalid["click", result].inc()
            body = _NOT_FOUND[result]
            await answer(send, 404, _problem_headers(body), body)
        else:
            headers = [(b"location", result.encode("ascii")), *REDIRECT_HEADERS]
            await answer(send, 302, headers, b"")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/o/"):
                started = time.perf_counter()
                await pixel(scope, send)
                open_seconds.observe(time.perf_counter() - started)
                return
            if path.startswith("/c/"):
                started = time.perf_counter()
                await redirect(scope, send)
                click_seconds.observe(time.perf_counter() - started)
                return
        await ops(scope, receive, send)

    return app
