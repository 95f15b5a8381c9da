"""One contract for the ports, run against the in-memory fakes and the NATS adapters alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from mailfold.events import AttachmentRef, ContentRef, Module, RecordRef
from mailfold.ingest.adapters.memory import MemoryContentStore, MemoryDirectory, MemoryIdempotency
from mailfold.ingest.adapters.nats import (
    KvDirectory,
    KvIdempotency,
    ObjectContentStore,
)
from mailfold.ingest.domain.template import Template
from mailfold.ingest.service_layer.ports import (
    ContentStore,
    Directory,
    IdempotencyClaim,
    IdempotencyStore,
)
from mailfold.runtime import bus
from mailfold.runtime.content import get_content
from mailfold.runtime.directory import (
    AddressCache,
    MailboxSettings,
    OrgCache,
    OrgSettings,
    RecordEntry,
    put_record,
    save_settings,
)
from mailfold.runtime.orgs import create_org


@dataclass
class Adapters:
    directory: Directory
    idempotency: IdempotencyStore
    content: ContentStore
    org_id: str


@pytest.fixture(params=["memory", "nats"])
async def adapters(
    request: pytest.FixtureRequest, nats_client: Client, js: JetStreamContext, org_id: str
) -> AsyncIterator[Adapters]:
    if request.param == "memory":
        yield Adapters(MemoryDirectory([org_id]), MemoryIdempotency(), MemoryContentStore(), org_id)
        return
    orgs = await bus.kv(js, bus.BUCKET_ORGS)
    await create_org(orgs, org_id)
    cache = OrgCache(orgs)
    await cache.start()
    addresses = AddressCache(nats_client)
    await addresses.start()
    yield Adapters(
        KvDirectory(orgs, await bus.kv(js, bus.BUCKET_DIRECTORY), cache, addresses),
        KvIdempotency(await bus.kv(js, bus.BUCKET_IDEMPOTENCY)),
        ObjectContentStore(await bus.objects(js), js),
        org_id,
    )
    await addresses.stop()
    await cache.stop()


async def test_orgs_exist_once_created(adapters: Adapters) -> None:
    assert await adapters.directory.org_exists(adapters.org_id)
    assert not await adapters.directory.org_exists(adapters.org_id + "nope")


async def test_settings_default_until_saved_then_read_back(adapters: Adapters) -> None:
    d, org = adapters.directory, adapters.org_id
    assert await d.load_settings(org) == OrgSettings()
    saved = OrgSettings(time_zone="Asia/Tokyo", blacklisted_domains=("spam.example",))
    await d.save_settings(org, saved)
    assert await d.load_settings(org) == saved


async def test_records_are_found_by_any_of_their_addresses_case_insensitively(
    adapters: Adapters,
) -> None:
    d, org = adapters.directory, adapters.org_id
    await d.put_record(
        org,
        RecordEntry(
            record_id="c1", module=Module.CONTACTS, addresses=("A@x.example", "b@x.example")
        ),
    )
    await d.put_record(
        org, RecordEntry(record_id="l1", module=Module.LEADS, addresses=("b@x.example",))
    )
    found = await d.records_for_addresses(org, ["B@X.example"])
    assert set(found) == {
        RecordRef(record_id="c1", module=Module.CONTACTS),
        RecordRef(record_id="l1", module=Module.LEADS),
    }
    await d.put_record(
        org, RecordEntry(record_id="c1", module=Module.CONTACTS, addresses=("a@x.example",))
    )
    assert await d.records_for_addresses(org, ["b@x.example"]) == (
        RecordRef(record_id="l1", module=Module.LEADS),
    )
    assert await d.delete_record(org, "l1")
    assert not await d.delete_record(org, "l1")
    assert await d.records_for_addresses(org, ["b@x.example"]) == ()
    record = await d.load_record(org, "c1")
    assert record is not None
    assert record.addresses == ("a@x.example",)


async def test_templates_and_mailboxes_round_trip(adapters: Adapters) -> None:
    d, org = adapters.directory, adapters.org_id
    ref = AttachmentRef(sha256="b" * 64, size=3, name="a.pdf", from_template=True)
    template = Template(template_id="t1", subject="S", attachments=(ref,))
    await d.save_template(org, template)
    assert await d.load_template(org, "t1") == template
    assert await d.load_template(org, "t2") is None
    mailbox = MailboxSettings(smtp_host="smtp.x.example", username="u", secret="s")
    await d.save_mailbox(org, "alice", mailbox)
    assert await d.load_mailbox(org, "alice") == mailbox
    assert await d.load_mailbox(org, "bob") is None


async def test_the_first_claim_on_a_key_wins(adapters: Adapters) -> None:
    i, org = adapters.idempotency, adapters.org_id
    assert await i.get(org, "k") is None
    claims = [IdempotencyClaim(email_id=f"e{n}", fingerprint="f") for n in range(5)]
    results = await asyncio.gather(*(i.claim(org, "k", c) for c in claims))
    assert len({r.email_id for r in results}) == 1
    winner = results[0]
    done = IdempotencyClaim(email_id=winner.email_id, fingerprint="f", done=True)
    await i.complete(org, "k", done)
    assert await i.get(org, "k") == done
    assert await i.get(org + "x", "k") is None


async def test_content_is_addressed_by_sha256_fresh_or_not(adapters: Adapters) -> None:
    data = b"x" * 300_000  # three chunks
    first = await adapters.content.put(data, "message/rfc822", fresh=True)
    again = await adapters.content.put(data, "message/rfc822")
    empty = await adapters.content.put(b"", "text/plain", fresh=True)
    assert first == again
    assert first == ContentRef(sha256=first.sha256, size=300_000, content_type="message/rfc822")
    assert empty.size == 0


async def test_freshly_written_objects_read_back_through_the_object_store(
    js: JetStreamContext,
) -> None:
    store = ObjectContentStore(await bus.objects(js), js)
    for data in (b"", b"small", bytes(range(256)) * 1500):
        ref = await store.put(data, "application/octet-stream", fresh=True)
        assert await get_content(await bus.objects(js), ref.sha256) == data


async def test_the_org_cache_follows_writes_made_elsewhere(
    js: JetStreamContext, org_id: str
) -> None:
    orgs = await bus.kv(js, bus.BUCKET_ORGS)
    cache = OrgCache(orgs)
    await cache.start()
    try:
        directory = KvDirectory(orgs, await bus.kv(js, bus.BUCKET_DIRECTORY), cache)
        for _ in range(100):
            if cache.live:
                break
            await asyncio.sleep(0.05)
        assert cache.live
        # an org created by another process is found at once, watch or not
        await create_org(orgs, org_id)
        assert await directory.org_exists(org_id)
        # settings written by another process arrive through the watch
        changed = OrgSettings(dropbox_senders=("rep@acme.example",))
        await save_settings(orgs, org_id, changed)
        for _ in range(100):
            if await directory.load_settings(org_id) == changed:
                break
            await asyncio.sleep(0.02)
        assert await directory.load_settings(org_id) == changed
        assert cache.known(org_id)
    finally:
        await cache.stop()
    assert not cache.live


async def test_the_address_cache_follows_record_writes_made_elsewhere(
    nats_client: Client, js: JetStreamContext, org_id: str
) -> None:
    records = await bus.kv(js, bus.BUCKET_DIRECTORY)
    addresses = AddressCache(nats_client)
    await addresses.start()
    try:
        directory = KvDirectory(await bus.kv(js, bus.BUCKET_ORGS), records, None, addresses)
        assert addresses.live
        # a miss is remembered too: most senders have no record
        assert await directory.records_for_addresses(org_id, ["new@x.example"]) == ()
        # a record written by another process reaches the cached lookup through the watch
        lead = RecordEntry(record_id="l9", module=Module.LEADS, addresses=("New@x.example",))
        await put_record(records, org_id, lead)
        for _ in range(100):
            if await directory.records_for_addresses(org_id, ["new@x.example"]):
                break
            await asyncio.sleep(0.02)
        assert await directory.records_for_addresses(org_id, ["NEW@x.example"]) == (lead.ref,)
        # and this service's own writes show at once
        await directory.delete_record(org_id, "l9")
        assert await directory.records_for_addresses(org_id, ["new@x.example"]) == ()
    finally:
        await addresses.stop()
    assert not addresses.live
