"""Fixtures for the webhooks service: a real nats-server, real receivers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tests.nats_users import service_auth

from mailfold.cli.embedded import EmbeddedNats
from mailfold.events import EmailComposed, EmailDelivered, EmailSent, Event, RecordRef, new_id
from mailfold.events.model import Module, Source
from mailfold.runtime import bus
from mailfold.runtime.ops import HttpServer
from mailfold.runtime.orgs import create_org
from mailfold.webhooks.bootstrap import Service, Settings, start

# Short delays so that the schedule's shape is exercised without its hours.
FAST_SCHEDULE = (0.3, 0.3, 0.3, 0.3)

# What a receiver answers: a status, (status, headers), or an awaitable producing either.
Reply = int | tuple[int, dict[str, str]]
Script = Callable[[int], Awaitable[Reply]]


@dataclass
class Received:
    """One request a receiver got."""

    at: float
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP server on loopback answering webhooks by a script (attempt number -> reply)."""

    script: Script
    requests: list[Received] = field(default_factory=list)
    server: HttpServer | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/hook"

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.requests.append(Received(time.monotonic(), dict(request.headers), body))
        self.arrived.set()
        reply = await self.script(len(self.requests))
        status, headers = reply if isinstance(reply, tuple) else (reply, {})
        return Response(status_code=status, headers=headers)

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """Wait until `count` requests arrived."""
        async with asyncio.timeout(timeout):
            while len(self.requests) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.requests

    def verified(self, secret: str) -> list[dict[str, Any]]:
        """Every request's body, each checked with the standardwebhooks package."""
        hook = Webhook(secret)
        return [hook.verify(r.body, r.headers) for r in self.requests]


def always(status: int) -> Script:
    async def reply(_: int) -> Reply:
        return status

    return reply


StartReceiver = Callable[[Script], contextlib.AbstractAsyncContextManager[Receiver]]


@pytest.fixture
def nats_url(fresh_nats: EmbeddedNats) -> str:
    """A nats-server of each test's own: endpoints and their queued jobs outlive a test, and a
    later test's receiver may get the port an earlier endpoint still retries."""
    return fresh_nats.url


@pytest.fixture
def start_receiver() -> StartReceiver:
    """Start a receiver on a free loopback port; stopped when the block ends."""

    @contextlib.asynccontextmanager
    async def run(script: Script) -> AsyncIterator[Receiver]:
        receiver = Receiver(script)
        app = Starlette(routes=[Route("/hook", receiver.handle, methods=["POST"])])
        receiver.server = HttpServer(app, "127.0.0.1", 0)
        await receiver.server.start()
        try:
            yield receiver
        finally:
            await receiver.server.stop()

    return run


StartWebhooks = Callable[..., contextlib.AbstractAsyncContextManager[Service]]


def settings(nats_url: str, **overrides: Any) -> Settings:
    """Test settings: any port, loopback allowed (development), short schedule and timeout."""
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "nats_auth": service_auth("webhooks"),
        "port": 0,
        "allow_loopback": True,
        "schedule_s": FAST_SCHEDULE,
        "timeout_s": 2.0,
        "ack_grace_s": 2.0,
        "batch_wait_s": 0.02,
        "backlog_interval_s": 0.5,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def start_webhooks() -> StartWebhooks:
    """Start the webhooks service on a NATS URL; stopped when the block ends."""

    @contextlib.asynccontextmanager
    async def run(nats_url: str, **overrides: Any) -> AsyncIterator[Service]:
        service = await start(settings(nats_url, **overrides))
        try:
            yield service
        finally:
            await service.stop()

    return run


@dataclass
class Org:
    """An org with its token, and helpers to publish its events and call the API."""

    org_id: str
    token: str
    nats_url: str

    def api(self, service: Service) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{service.port}",
            headers={"authorization": f"Bearer {self.token}"},
        )

    async def publish(self, *events: Event) -> list[int]:
        nc = await bus.connect(self.nats_url, "webhooks-test-publisher", reconnect=False)
        try:
            js = nc.jetstream()
            return [await bus.publish_event(js, e) for e in events]
        finally:
            await bus.close(nc)

    def composed(self, email_id: str, source: Source = Source.INDIVIDUAL) -> EmailComposed:
        return EmailComposed(
            event_id=new_id(),
            org_id=self.org_id,
            email_id=email_id,
            occurred_at=datetime.now(UTC),
            producer="test",
            source=source,
            from_addr="rep@crm.example",
            to=("ann@example.org",),
            subject="Quarterly review",
            records=(RecordRef(record_id="lead-1", module=Module.LEADS),),
        )

    def sent(self, email_id: str) -> EmailSent:
        return EmailSent(
            event_id=new_id(),
            org_id=self.org_id,
            email_id=email_id,
            occurred_at=datetime.now(UTC),
            producer="test",
            recipients=("ann@example.org",),
        )

    def delivered(self, email_id: str) -> EmailDelivered:
        return EmailDelivered(
            event_id=new_id(),
            org_id=self.org_id,
            email_id=email_id,
            occurred_at=datetime.now(UTC),
            producer="test",
            recipient="ann@example.org",
        )


async def make_org(nats_url: str, org_id: str) -> Org:
    """Create an org (and the topology) on the server; its token."""
    nc = await bus.connect(nats_url, "webhooks-test-org", reconnect=False)
    try:
        js = nc.jetstream()
        await bus.ensure_topology(js)
        token = await create_org(await bus.kv(js, bus.BUCKET_ORGS), org_id)
    finally:
        await bus.close(nc)
    return Org(org_id, token, nats_url)


@pytest.fixture
async def org(nats_url: str, org_id: str) -> Org:
    """A fresh org on the session's nats-server."""
    return await make_org(nats_url, org_id)


async def add_endpoint(api: httpx.AsyncClient, org: Org, url: str, **fields: Any) -> dict[str, Any]:
    """Create an endpoint through the API; its representation, with the secret."""
    response = await api.post(f"/v1/orgs/{org.org_id}/webhooks", json={"url": url, **fields})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created
