"""Ingest on a nats-server of the test's own: whole-store checks and NATS going down."""

from __future__ import annotations

import asyncio
import base64
import smtplib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib
import httpx
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from mailfold.cli.embedded import EmbeddedNats
from mailfold.events import AnyEvent, EmailComposed, EmailReceived, Module
from mailfold.ingest.adapters.nats import KvDirectory
from mailfold.ingest.bootstrap import IngestService, Settings, start
from mailfold.runtime import bus
from mailfold.runtime.directory import AddressCache, RecordEntry, put_record
from mailfold.runtime.orgs import create_org

ReadStream = Callable[[JetStreamContext, str], Awaitable[list[AnyEvent]]]


@dataclass
class Stack:
    nats: EmbeddedNats
    nc: Client
    service: IngestService
    token: str
    org_id: str

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.service.http_port}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )


@pytest.fixture
async def stack(
    fresh_nats: EmbeddedNats, org_id: str, make_settings: Callable[..., Settings]
) -> AsyncIterator[Stack]:
    nc = await bus.connect(fresh_nats.url, "ingest-tests")
    await bus.ensure_topology(nc.jetstream())
    token = await create_org(await bus.kv(nc.jetstream(), bus.BUCKET_ORGS), org_id)
    service = await start(make_settings(fresh_nats.url, publish_timeout_s=2.0))
    yield Stack(fresh_nats, nc, service, token, org_id)
    await service.stop()
    await bus.close(nc)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def wait_until_healthy(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.service.http_port}") as client:
        for _ in range(300):
            if (await client.get("/healthz")).status_code == 200:
                return
            await asyncio.sleep(0.1)
    raise AssertionError("the service did not reconnect to NATS")


async def restart_nats(stack: Stack) -> None:
    await asyncio.to_thread(stack.nats.restart)
    await wait_until_healthy(stack)


def inbound_message(subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "bob@x.example"
    msg["To"] = "rep@acme.example"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@x.example>"
    msg["Date"] = "Tue, 02 Jan 2024 03:04:05 +0000"
    msg.set_content("hello")
    return msg


async def test_a_template_attachment_sent_to_many_records_is_stored_once(
    stack: Stack, read_stream: ReadStream
) -> None:
    attachment = b"%PDF-1.7 brochure " * 1000
    async with stack.client() as api:
        template = {
            "subject": "Spring offer",
            "html": "<p>Offer</p>",
            "attachments": [
                {
                    "name": "brochure.pdf",
                    "content_type": "application/pdf",
                    "content_base64": b64(attachment),
                }
            ],
        }
        assert (
            await api.put(f"/v1/orgs/{stack.org_id}/templates/spring", json=template)
        ).status_code == 200
        for i in range(25):
            await api.put(
                f"/v1/orgs/{stack.org_id}/records/lead{i}",
                json={"module": "Leads", "addresses": [f"lead{i}@x.example"]},
            )
            body = {
                "source": "mass_email",
                "from": "rep@acme.example",
                "to": [f"lead{i}@x.example"],
                "template_id": "spring",
            }
            assert (await api.post(f"/v1/orgs/{stack.org_id}/emails", json=body)).status_code == 202
    events = await read_stream(stack.nc.jetstream(), stack.org_id)
    assert len(events) == 25
    shas = set()
    for event in events:
        assert isinstance(event, EmailComposed)
        (ref,) = event.attachments
        assert ref.from_template
        assert ref.name == "brochure.pdf"
        assert len(event.records) == 1
        shas.add(ref.sha256)
    assert len(shas) == 1
    store = await bus.objects(stack.nc.jetstream())
    names = sorted(info.name for info in await store.list() if info.name)
    # the attachment and the template's html, each once, whatever the number of emails
    assert len(names) == 2
    assert shas <= set(names)


async def test_compose_while_nats_is_down_is_503_and_the_retry_is_published_once(
    stack: Stack, read_stream: ReadStream
) -> None:
    body = {
        "source": "individual",
        "from": "rep@acme.example",
        "to": ["bob@x.example"],
        "text": "hi",
    }
    headers = {"Idempotency-Key": "while-down"}
    async with stack.client() as api:
        stack.nats.kill()
        down = await api.post(f"/v1/orgs/{stack.org_id}/emails", json=body, headers=headers)
        assert down.status_code == 503
        assert down.headers["content-type"] == "application/problem+json"
        assert (await api.get("/healthz")).status_code == 503
        await restart_nats(stack)
        up = await api.post(f"/v1/orgs/{stack.org_id}/emails", json=body, headers=headers)
        assert up.status_code == 202
    events = await read_stream(stack.nc.jetstream(), stack.org_id)
    assert [e.email_id for e in events] == [up.json()["email_id"]]


async def test_smtp_while_nats_is_down_is_451_and_the_retry_is_kept(
    stack: Stack, read_stream: ReadStream
) -> None:
    recipient = f"in+{stack.org_id}@in.example"
    stack.nats.kill()

    def send_with_smtplib() -> None:
        with smtplib.SMTP("127.0.0.1", stack.service.smtp_port, timeout=30) as client:
            client.send_message(inbound_message("first"), "bob@x.example", [recipient])

    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await asyncio.to_thread(send_with_smtplib)
    code, text = refused.value.recipients[recipient]
    assert (code, text[:5]) == (451, b"4.3.0")
    await restart_nats(stack)
    await asyncio.to_thread(send_with_smtplib)
    (event,) = await read_stream(stack.nc.jetstream(), stack.org_id)
    assert isinstance(event, EmailReceived)
    assert event.subject == "first"


async def test_nats_lost_during_data_is_451_and_nothing_is_published_twice(
    stack: Stack, read_stream: ReadStream
) -> None:
    message = inbound_message("second").as_bytes()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=stack.service.smtp_port, timeout=30)
    async with client:
        await client.ehlo()
        await client.mail("bob@x.example")
        await client.rcpt(f"in+{stack.org_id}@in.example")
        stack.nats.kill()
        with pytest.raises(aiosmtplib.SMTPDataError) as failed:
            await client.data(message)
        assert failed.value.code == 451
    await restart_nats(stack)
    for _ in range(2):  # the sending server retries; a duplicate retry is dropped
        await aiosmtplib.send(
            message,
            sender="bob@x.example",
            recipients=[f"in+{stack.org_id}@in.example"],
            hostname="127.0.0.1",
            port=stack.service.smtp_port,
        )
    (event,) = await read_stream(stack.nc.jetstream(), stack.org_id)
    assert isinstance(event, EmailReceived)


async def test_the_address_cache_watches_again_after_nats_restarts(
    fresh_nats: EmbeddedNats, org_id: str
) -> None:
    nc = await bus.connect(fresh_nats.url, "ingest-address-cache")
    writer = await bus.connect(fresh_nats.url, "ingest-address-writer")
    addresses = AddressCache(nc)
    try:
        js = nc.jetstream()
        await bus.ensure_topology(js)
        await addresses.start()
        directory = KvDirectory(
            await bus.kv(js, bus.BUCKET_ORGS),
            await bus.kv(js, bus.BUCKET_DIRECTORY),
            None,
            addresses,
        )
        assert await directory.records_for_addresses(org_id, ["carol@x.example"]) == ()
        await asyncio.to_thread(fresh_nats.restart)
        for _ in range(300):
            if nc.is_connected and writer.is_connected:
                break
            await asyncio.sleep(0.05)
        # the first lookup after the reconnect reads the bucket and starts a new watch
        assert await directory.records_for_addresses(org_id, ["carol@x.example"]) == ()
        for _ in range(200):
            if addresses.live:
                break
            await asyncio.sleep(0.05)
        assert addresses.live
        assert await directory.records_for_addresses(org_id, ["carol@x.example"]) == ()
        # a record written elsewhere after the restart reaches the cached lookup
        carol = RecordEntry(record_id="c7", module=Module.CONTACTS, addresses=("carol@x.example",))
        await put_record(await bus.kv(writer.jetstream(), bus.BUCKET_DIRECTORY), org_id, carol)
        for _ in range(100):
            if await directory.records_for_addresses(org_id, ["carol@x.example"]):
                break
            await asyncio.sleep(0.02)
        assert await directory.records_for_addresses(org_id, ["carol@x.example"]) == (carol.ref,)
    finally:
        await addresses.stop()
        await bus.close(writer)
        await bus.close(nc)
