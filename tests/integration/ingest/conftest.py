"""The ingest service running against the session's nats-server, with an org and readers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from tests.nats_users import service_auth

from mailfold.events import STREAM, AnyEvent, Keyring, decode
from mailfold.ingest.bootstrap import IngestService, Settings, start
from mailfold.runtime import bus
from mailfold.runtime.orgs import create_org
from mailfold.runtime.settings import CommonSettings

TRACKING_KEYS = "it1:ingest-integration-key-0123456789"
ReadEvents = Callable[[str], Awaitable[list[AnyEvent]]]
ReadMetric = Callable[[str], Awaitable[float]]


def service_settings(nats_url: str, **overrides: object) -> Settings:
    """Settings for a test: loopback, ports chosen by the OS."""
    common = CommonSettings(
        nats_url=nats_url,
        nats_auth=service_auth("ingest"),
        log_level="warning",
        log_json=True,
        tracking_keys=TRACKING_KEYS,
        public_tracker_url="http://127.0.0.1:1",
    )
    values: dict[str, object] = {"common": common, "http_port": 0, "smtp_port": 0}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def nats_client(nats_url: str) -> AsyncIterator[Client]:
    nc = await bus.connect(nats_url, "ingest-tests", reconnect=False)
    await bus.ensure_topology(nc.jetstream())
    yield nc
    await bus.close(nc)


@pytest.fixture
def js(nats_client: Client) -> JetStreamContext:
    return nats_client.jetstream()


@pytest.fixture
async def org_token(js: JetStreamContext, org_id: str) -> str:
    return await create_org(await bus.kv(js, bus.BUCKET_ORGS), org_id)


@pytest.fixture
async def ingest(nats_client: Client, nats_url: str) -> AsyncIterator[IngestService]:
    service = await start(service_settings(nats_url))
    yield service
    await service.stop()


@pytest.fixture
async def api(ingest: IngestService, org_token: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the running API, authorised for the test's org."""
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{ingest.http_port}",
        headers={"Authorization": f"Bearer {org_token}"},
        timeout=30,
    ) as client:
        yield client


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.parse(TRACKING_KEYS)


async def read_events(js: JetStreamContext, org_id: str) -> list[AnyEvent]:
    """Every event of one org in MAIL_EVENTS, in stream order (direct gets, no consumer)."""
    found: list[AnyEvent] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(STREAM, seq=seq, subject=f"mail.events.{org_id}.>", next=True)
        except NotFoundError:
            return found
        found.append(decode(msg.data or b""))
        seq = (msg.seq or seq) + 1


@pytest.fixture
def events(js: JetStreamContext) -> ReadEvents:
    """`await events(org_id)`: the org's events now in the stream."""

    async def read(org_id: str) -> list[AnyEvent]:
        return await read_events(js, org_id)

    return read


@pytest.fixture
def metric(ingest: IngestService) -> ReadMetric:
    """`await metric('name{label="x"}')`: a sample's value on /metrics (0 when absent)."""

    async def read(sample: str) -> float:
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{ingest.http_port}/metrics")).text
        match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    return read


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    """`make_settings(nats_url, **overrides)`: service settings for a test."""
    return service_settings


@pytest.fixture
def read_stream() -> Callable[[JetStreamContext, str], Awaitable[list[AnyEvent]]]:
    """`await read_stream(js, org_id)`: an org's events on any server."""
    return read_events
