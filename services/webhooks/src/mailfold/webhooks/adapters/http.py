"""Outbound HTTP: one POST per attempt, to an address checked (and pinned) against SSRF."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Final

import httpx
import msgspec

from mailfold.webhooks.domain.addresses import first_refusal, is_loopback

USER_AGENT: Final = "mailfold-webhooks/0.1"
# An answer's body is read up to this much (and ignored) so the connection can carry the next
# request; a longer one costs its connection instead.
MAX_ANSWER_BYTES: Final = 64 * 1024
Resolve = Callable[[str, int], Awaitable[list[str]]]


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """What one attempt got: a status (None when no answer came), Retry-After, the time taken."""

    status: int | None
    retry_after: str | None = None
    latency_s: float
    error: str = ""


class UnreachableAddress(ValueError):
    """The URL's host resolves to an address deliveries may not reach."""


_RESOLVED: dict[tuple[str, int], tuple[float, list[str]]] = {}
RESOLVE_TTL_S: Final = 30.0


async def resolve(host: str, port: int) -> list[str]:
    """Every address the host resolves to (the system resolver, off the event loop).

    An address literal is its own answer; names are kept 30 s. Caching is safe here because
    the request goes to the address that was checked, never to a fresh resolution.
    """
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    now = time.monotonic()
    cached = _RESOLVED.get((host, port))
    if cached is not None and now - cached[0] < RESOLVE_TTL_S:
        return cached[1]
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if len(_RESOLVED) > 10_000:
        _RESOLVED.clear()
    _RESOLVED[(host, port)] = (now, addresses)
    return addresses


async def checked_address(
    url: str, *, allow_loopback: bool, resolver: Resolve = resolve
) -> tuple[httpx.URL, str]:
    """The URL and the one address to connect to; raises UnreachableAddress when any address is off limits.

    Every address the name has must be allowed, so that a name cannot mix a public address
    with a private one and win on a later resolution.
    """
    try:
        parsed = _parsed(url)
    except httpx.InvalidURL as exc:
        raise UnreachableAddress(f"not a valid URL: {exc}") from exc
    host = parsed.host
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        addresses = await resolver(host, port)
    except OSError as exc:
        raise UnreachableAddress(f"{host} does not resolve: {exc}") from exc
    if not addresses:
        raise UnreachableAddress(f"{host} does not resolve")
    reason = first_refusal(addresses, allow_loopback=allow_loopback)
    if reason is not None:
        raise UnreachableAddress(reason)
    if parsed.scheme == "http" and not all(is_loopback(a) for a in addresses):
        raise UnreachableAddress("plain http is allowed only to loopback (development)")
    return parsed, addresses[0]


@functools.lru_cache(maxsize=4096)
def _parsed(url: str) -> httpx.URL:
    """The URL parsed (immutable; the same endpoints are posted to over and over)."""
    return httpx.URL(url)


@functools.lru_cache(maxsize=4096)
def _pinned(parsed: httpx.URL, address: str) -> tuple[httpx.URL, str]:
    """The URL aimed at the checked address, and the Host header keeping the name."""
    return parsed.copy_with(host=address), parsed.netloc.decode()


class Poster:
    """Sends attempts with one shared client; redirects are not followed (only 2xx counts)."""

    def __init__(
        self, *, timeout_s: float, allow_loopback: bool, resolver: Resolve = resolve
    ) -> None:
        self._timeout_s = timeout_s
        self._allow_loopback = allow_loopback
        self._resolver = resolver
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: the checked address is the target
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=200),
            headers={"user-agent": USER_AGENT},
        )

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Answer:
        """One attempt: resolve and check, then POST to that very address, within the timeout."""
        started = time.perf_counter()
        try:
            parsed, address = await checked_address(
                url, allow_loopback=self._allow_loopback, resolver=self._resolver
            )
        except UnreachableAddress as exc:
            return Answer(status=None, latency_s=time.perf_counter() - started, error=str(exc))
        # Connect to the checked address, not to a second resolution of the name (DNS
        # rebinding); the Host header and TLS (SNI and certificate check) keep the name.
        target, host = _pinned(parsed, address)
        request_headers = {**headers, "host": host}
        extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
        try:
            async with asyncio.timeout(self._timeout_s):
                request = self._client.build_request(
                    "POST", target, content=body, headers=request_headers, extensions=extensions
                )
                # Only the status and Retry-After matter. The body is drained (bounded) because
                # a connection goes back to the keep-alive pool only after its whole answer.
                response = await self._client.send(request, stream=True)
                try:
                    read = 0
                    async for chunk in response.aiter_raw():
                        read += len(chunk)
                        if read > MAX_ANSWER_BYTES:
                            break
                finally:
                    await response.aclose()
        except (httpx.HTTPError, TimeoutError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError | httpx.TimeoutException) else "error"
            detail = str(exc) or type(exc).__name__
            return Answer(
                status=None, latency_s=time.perf_counter() - started, error=f"{kind}: {detail}"
            )
        return Answer(
            status=response.status_code,
            retry_after=response.headers.get("retry-after"),
            latency_s=time.perf_counter() - started,
        )

    async def close(self) -> None:
        """Close every connection."""
        await self._client.aclose()
