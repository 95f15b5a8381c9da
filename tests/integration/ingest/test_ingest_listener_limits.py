"""The ingest listeners bound slow and greedy clients: bodies that stop, too many SMTP sessions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from mailfold.ingest.bootstrap import IngestService, Settings, start


@pytest.fixture
async def tight_ingest(
    nats_url: str,
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    org_token: str,
) -> AsyncIterator[IngestService]:
    monkeypatch.setenv("MAILFOLD_HTTP_BODY_TIMEOUT_S", "0.5")
    service = await start(make_settings(nats_url, smtp_max_connections=5))
    yield service
    await service.stop()


async def test_a_request_body_that_stops_arriving_is_answered_408(
    tight_ingest: IngestService, org_id: str, org_token: str
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", tight_ingest.http_port)
    try:
        writer.write(
            f"PUT /v1/orgs/{org_id}/settings HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {org_token}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n{".encode()
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:60]
    assert b"application/problem+json" in answer


async def test_smtp_sessions_past_the_limit_are_told_421_and_the_rest_served(
    tight_ingest: IngestService,
) -> None:
    opened = [await asyncio.open_connection("127.0.0.1", tight_ingest.smtp_port) for _ in range(5)]
    try:
        greetings = [await asyncio.wait_for(r.readline(), 30) for r, _ in opened]
        assert all(g.startswith(b"220 ") for g in greetings)
        reader, writer = await asyncio.open_connection("127.0.0.1", tight_ingest.smtp_port)
        refused = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        assert refused.startswith(b"421 4.7.0 ")
    finally:
        for _, w in opened:
            w.close()
