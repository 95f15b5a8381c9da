"""The one place that builds problem+json (RFC 9457) and turns every failure into one.

Every HTTP service answers errors the same way: a `HttpProblem` raised anywhere under a route becomes
its document; an unreachable NATS becomes 503 with Retry-After; a body that stops arriving becomes
408; a path with control characters becomes 400; anything else becomes 500, logged as one bounded
line (never the request body). `Guard` wraps each service's ASGI app for that, and `api_app`
builds a Starlette app with it inside, whose 404/405 answers are problems and which never
redirects.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec
import nats.errors
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailfold.runtime.logging import get_logger

PROBLEM_JSON: Final = "application/problem+json"
PROBLEM_BASE: Final = "urn:mailfold:problem:"
# Errors that mean NATS (or another dependency) did not answer: a retry may succeed.
UNAVAILABLE: Final = (nats.errors.Error, asyncio.TimeoutError, OSError)

log = get_logger("mailfold.http")
_ENCODER: Final = msgspec.json.Encoder()
_TITLES: Final = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class FieldError:
    """One field at fault: a JSON path like `to[1]`, a path or query parameter, or a header."""

    field: str
    message: str


def page_limit(raw: str | None, default: int, maximum: int, errors: list[FieldError]) -> int:
    """The `limit` query parameter of a paged list: digits only, 1 to `maximum` (`default`
    when absent); a refusal joins `errors`."""
    if raw is None:
        return default
    limit = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 6 else 0
    if not 1 <= limit <= maximum:
        errors.append(FieldError("limit", f"must be an integer from 1 to {maximum}"))
    return limit


class HttpProblem(Exception):
    """A refusal with an HTTP status, a problem type and the fields at fault."""

    status: int = 400
    slug: str = "bad-request"
    title: str = "Bad Request"

    def __init__(
        self,
        errors: Sequence[FieldError] = (),
        detail: str = "",
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.errors = tuple(errors)
        self.detail = detail or "; ".join(f"{e.field}: {e.message}" for e in self.errors)
        self.headers = dict(headers or {})
        super().__init__(self.detail)

    @property
    def type(self) -> str:
        """The problem type URI."""
        return PROBLEM_BASE + self.slug


def problem_body(
    status: int,
    detail: str,
    errors: Sequence[FieldError] = (),
    *,
    title: str | None = None,
    type_: str = "about:blank",
) -> bytes:
    """An RFC 9457 document: type, title, status, detail and the fields at fault in `errors`."""
    return _ENCODER.encode(
        {
            "type": type_,
            "title": title or _TITLES.get(status, "Error"),
            "status": status,
            "detail": detail,
            "errors": [{"field": e.field, "message": e.message} for e in errors],
        }
    )


def problem(
    status: int,
    detail: str,
    errors: Sequence[FieldError] = (),
    *,
    title: str | None = None,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = problem_body(status, detail, errors, title=title, type_=type_)
    return Response(body, status, dict(headers or {}), media_type=PROBLEM_JSON)


def problem_for(exc: HttpProblem) -> Response:
    return problem(
        exc.status, exc.detail, exc.errors, title=exc.title, type_=exc.type, headers=exc.headers
    )


def unavailable() -> Response:
    """503: a dependency did not answer in time; a retry may succeed.

    What was asked may or may not have been stored (an acknowledgement lost on the way back
    looks the same as a write that never arrived), so the answer asks for a retry of the same
    request, which an Idempotency-Key and the event ids make safe.
    """
    return problem(
        503,
        "the event store did not answer in time; retry the same request (with the same "
        "Idempotency-Key, if it had one)",
        title="Service Unavailable",
        type_=PROBLEM_BASE + "unavailable",
        headers={"Retry-After": "1"},
    )


async def _http_exception(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
    field = "method" if status == 405 else "path"
    return problem(
        status,
        f"{request.method} is not answered at this path" if status == 405 else "no such resource",
        [FieldError(field, "not found" if status == 404 else "not allowed")],
        headers=headers,
    )


def api_app(routes: Sequence[BaseRoute]) -> Starlette:
    """A Starlette app whose refusals are problems and that never answers with a redirect.

    Starlette would answer `/metrics/` with a 307 to a URL built from the Host header; the only
    Location this system sends is the URL inside a valid click token, so paths match exactly.
    """
    app = Starlette(
        routes=list(routes),
        middleware=[Middleware(Guard)],
        exception_handlers={HTTPException: _http_exception},
    )
    app.router.redirect_slashes = False
    return app


class BodyTimeout(Exception):
    """The client stopped sending its request body."""


def _bad_path(path: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in path)


class Guard:
    """ASGI middleware: every failure the app lets out becomes a problem answer, never a crash.

    With `body_timeout_s` it also bounds the time the whole request body may take: a client that
    stops sending gets 408 and the connection is closed. (The server wraps every app in a Guard
    with the configured timeout; the one inside `api_app` catches what routes raise before
    Starlette's own error page would.)
    """

    def __init__(self, app: ASGIApp, *, body_timeout_s: float | None = None) -> None:
        self._app = app
        self._body_timeout = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request through the wrapped app."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = False
        deadline: float | None = None
        body_done = False
        limit = self._body_timeout

        async def timed_receive() -> Message:
            nonlocal deadline, body_done
            if body_done or limit is None:
                return await receive()
            if deadline is None:
                deadline = time.monotonic() + limit
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError as exc:
                raise BodyTimeout from exc
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        async def answer(response: Response) -> None:
            if not started:
                await response(scope, receive, send)

        path: str = scope.get("path", "")
        if _bad_path(path):
            await answer(
                problem(400, "the path holds control characters", [FieldError("path", "invalid")])
            )
            return
        try:
            await self._app(scope, timed_receive, tracked_send)
        except BodyTimeout:
            await answer(
                problem(
                    408,
                    "the request body did not arrive in time",
                    [FieldError("body", "incomplete")],
                    headers={"Connection": "close"},
                )
            )
        except HttpProblem as exc:
            await answer(problem_for(exc))
        except UNAVAILABLE as exc:
            log.warning("dependency_unavailable", path=path, error=repr(exc))
            await answer(unavailable())
        except Exception as exc:  # a bug: answer 500, log one bounded line, keep serving
            log.error(
                "unhandled_error",
                path=path,
                method=scope.get("method", ""),
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )
            await answer(problem(500, "the request failed"))
