"""The tracker's listener bounds slow clients: headers that never finish are cut off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from tests.integration.tracker.conftest import StartTracker

from mailfold.tracker.bootstrap import Service


async def _held_open(port: int, request: bytes) -> bytes:
    """Send `request`, then nothing more; return what the server says before it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()


@pytest.fixture
async def slow_limits_tracker(
    start_tracker: StartTracker, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Service]:
    monkeypatch.setenv("MAILFOLD_HTTP_HEADER_TIMEOUT_S", "0.5")
    async with start_tracker(nats_url) as service:
        yield service


async def test_connections_that_never_finish_their_headers_are_closed_with_408(
    slow_limits_tracker: Service,
) -> None:
    port = slow_limits_tracker.port
    answers = await asyncio.gather(
        *(_held_open(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n") for _ in range(50)),
        _held_open(port, b""),  # not even a request line
    )
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), {a[:30] for a in answers}
    assert all(b"application/problem+json" in a for a in answers)


async def test_connections_past_the_limit_are_answered_503_and_closed(
    start_tracker: StartTracker, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILFOLD_HTTP_MAX_CONNECTIONS", "5")
    async with start_tracker(nats_url) as service:
        held = [await asyncio.open_connection("127.0.0.1", service.port) for _ in range(5)]
        try:
            for reader, writer in held:  # a request answered: the server holds the connection
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
            answer = await _held_open(service.port, b"")
        finally:
            for _, writer in held:
                writer.close()
    assert answer.startswith(b"HTTP/1.1 503 "), answer[:60]
    assert b"application/problem+json" in answer
