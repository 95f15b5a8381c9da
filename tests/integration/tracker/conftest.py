"""Fixtures for the tracker against a real nats-server and its real uvicorn server."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from tests.nats_users import service_auth

from mailfold.events import AnyEvent, Keyring, TokenKind, TrackingClaims, decode, new_id
from mailfold.events.subjects import STREAM
from mailfold.runtime import bus
from mailfold.tracker.bootstrap import Service, Settings, start

KEYS = "it1:integration-tracking-key-0123"
BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
SENTINEL_PREFIX = "sentinel."

StartTracker = Callable[..., contextlib.AbstractAsyncContextManager[Service]]


class Stream:
    """Reads what the tracker published to MAIL_EVENTS on one nats-server."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    async def events(
        self,
        nats_url: str,
        org_id: str,
        until: Callable[[list[AnyEvent]], bool],
        timeout: float = 60.0,
    ) -> list[AnyEvent]:
        """The org's events, oldest first, read until `until(events)` holds."""
        nc = await bus.connect(nats_url, "tracker-test-reader", reconnect=False)
        events: list[AnyEvent] = []
        try:
            sub = await nc.jetstream().pull_subscribe(f"mail.events.{org_id}.>", stream=STREAM)
            async with asyncio.timeout(timeout):
                while not until(events):
                    try:
                        messages = await sub.fetch(100, timeout=0.5)
                    except TimeoutError:  # nothing new yet (nats raises either kind)
                        continue
                    for message in messages:
                        event = decode(message.data)
                        # Every publish carries its event id for JetStream's deduplication.
                        assert message.headers == {"Nats-Msg-Id": event.event_id}
                        events.append(event)
                        await message.ack()
            await sub.unsubscribe()
        finally:
            await bus.close(nc)
        return events

    async def settle(self, http: httpx.AsyncClient, nats_url: str, org_id: str) -> list[AnyEvent]:
        """Everything the org's requests so far published, and nothing else.

        A last valid click goes through the same path after them (a person's click is held for
        the burst span, so a click, not an open, comes after every held click); once it is in
        the stream, so is everything recorded before it. It is left out of the answer.
        """
        sentinel = f"{SENTINEL_PREFIX}{uuid.uuid4().hex}@example.org"
        a_day_ago = new_id(int(time.time() * 1000) - 86_400_000)
        claims = TrackingClaims(
            TokenKind.CLICK, org_id, a_day_ago, sentinel, "https://example.org/sentinel"
        )
        response = await http.get(
            f"/c/{self.keyring.sign(claims)}", headers={"user-agent": BROWSER}
        )
        assert response.status_code == 302
        events = await self.events(
            nats_url, org_id, lambda seen: any(_recipient(e) == sentinel for e in seen)
        )
        return [e for e in events if not _recipient(e).startswith(SENTINEL_PREFIX)]


def _recipient(event: AnyEvent) -> str:
    return str(getattr(event, "recipient", ""))


@pytest.fixture
def keyring() -> Keyring:
    """The keyring the trackers under test verify with."""
    return Keyring.parse(KEYS)


@pytest.fixture
def stream(keyring: Keyring) -> Stream:
    """Reads the events the tracker published."""
    return Stream(keyring)


@pytest.fixture
def start_tracker() -> StartTracker:
    """Start a tracker (port 0) on a given NATS URL; it is stopped when the block ends."""

    @contextlib.asynccontextmanager
    async def run(nats_url: str, **overrides: Any) -> AsyncIterator[Service]:
        service = await start(
            Settings(
                nats_url=nats_url,
                nats_auth=service_auth("tracker"),
                tracking_keys=KEYS,
                port=0,
                **overrides,
            )
        )
        try:
            yield service
        finally:
            await service.stop()

    return run


@pytest.fixture
async def tracker(start_tracker: StartTracker, nats_url: str) -> AsyncIterator[Service]:
    """A tracker on the session's nats-server."""
    async with start_tracker(nats_url) as service:
        yield service


@pytest.fixture
async def client(tracker: Service) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the tracker, sending a browser's user agent."""
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{tracker.port}", headers={"user-agent": BROWSER}
    ) as http:
        yield http
