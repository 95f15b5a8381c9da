"""Bulk sends through the ingest API to two racing sender copies and a real SMTP server.

The daily limit counts one email per recipient: exactly the limit is sent, every recipient past it
gets its own EmailRejected, whichever sender copy takes it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from mailfold.events import AnyEvent, EmailComposed, EmailRejected, EmailSent
from mailfold.ingest.bootstrap import IngestService, Settings, start
from mailfold.runtime import bus
from mailfold.runtime.orgs import create_org
from mailfold.runtime.settings import CommonSettings

if TYPE_CHECKING:
    from tests.integration.sender.conftest import Bus, MxFactory, SenderFactory

pytestmark = pytest.mark.timeout(180)


def _only(events: list[AnyEvent], kind: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


@pytest.fixture
async def api(nats_bus: Bus, org_id: str) -> AsyncIterator[httpx.AsyncClient]:
    """The ingest HTTP API on the test's nats-server, authorised for the test's org."""
    token = await create_org(await bus.kv(nats_bus.js, bus.BUCKET_ORGS), org_id)
    common = CommonSettings(
        nats_url=nats_bus.url,
        log_level="warning",
        log_json=True,
        tracking_keys="t1:sender-integration-tests-key",
        public_tracker_url="https://track.example.net",
    )
    service: IngestService = await start(Settings(common=common, http_port=0, smtp_port=0))
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{service.http_port}/v1/orgs/{org_id}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        ) as client:
            yield client
    finally:
        await service.stop()


async def _compose(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    body.setdefault("from", "sales@crm.example.com")
    body.setdefault("text", "Hello")
    r = await api.post("/emails", json=body)
    assert r.status_code == 202, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def test_a_campaign_of_300_under_a_limit_of_250_sends_250_and_rejects_50_with_two_senders(
    nats_bus: Bus, mx: MxFactory, sender: SenderFactory, org_id: str, api: httpx.AsyncClient
) -> None:
    limit, size = 250, 300
    server = await mx()
    await nats_bus.settings(org_id, mass_email_daily_limit=limit)
    for _ in range(2):
        await sender({"example.org": server.port}, concurrency=8)
    recipients = [f"lead{i}@example.org" for i in range(size)]

    campaign = await _compose(api, source="mass_email", subject="Launch", to=recipients)

    assert len(campaign["emails"]) == size
    assert len({e["email_id"] for e in campaign["emails"]}) == size

    def settled(events: list[AnyEvent]) -> bool:
        return len(_only(events, EmailSent)) + len(_only(events, EmailRejected)) >= size

    events = await nats_bus.events(org_id, settled, timeout=150, settle=1.5)
    sent = _only(events, EmailSent)
    rejected = _only(events, EmailRejected)
    assert len(sent) == limit
    assert len(rejected) == size - limit
    assert {e.reason for e in rejected} == {"daily_limit_reached"}
    # Each refusal is its own email's, naming its own recipient.
    assert len({e.email_id for e in rejected}) == size - limit
    assert {e.recipient for e in rejected} | {s.recipients[0] for s in sent} == set(recipients)
    assert {s.email_id for s in sent}.isdisjoint(e.email_id for e in rejected)
    composed = _only(events, EmailComposed)
    assert {c.campaign_id for c in composed} == {campaign["campaign_id"]}
    assert len(server.handler.received) == limit
    assert all(len(m.rcpt_tos) == 1 for m in server.handler.received)
    assert all(len(m.message.get_all("To", [])) == 1 for m in server.handler.received)


async def test_multiple_counts_toward_the_daily_limit_like_mass_email(
    nats_bus: Bus, mx: MxFactory, sender: SenderFactory, org_id: str, api: httpx.AsyncClient
) -> None:
    server = await mx()
    await nats_bus.settings(org_id, mass_email_daily_limit=4)
    for _ in range(2):
        await sender({"example.org": server.port})

    await _compose(
        api, source="mass_email", subject="A", to=[f"m{i}@example.org" for i in range(3)]
    )
    await _compose(api, source="multiple", subject="B", to=[f"l{i}@example.org" for i in range(3)])
    await _compose(api, source="individual", subject="C", to=["solo@example.org"])

    def settled(events: list[AnyEvent]) -> bool:
        return len(_only(events, EmailSent)) + len(_only(events, EmailRejected)) >= 7

    events = await nats_bus.events(org_id, settled, timeout=60, settle=1.0)
    rejected = _only(events, EmailRejected)
    assert len(_only(events, EmailSent)) == 5  # four bulk emails and the individual one
    assert len(rejected) == 2
    assert {e.reason for e in rejected} == {"daily_limit_reached"}
    assert "solo@example.org" not in {e.recipient for e in rejected}


async def test_a_mass_email_never_goes_twice_to_one_address_per_recipient_email(
    nats_bus: Bus, mx: MxFactory, sender: SenderFactory, org_id: str, api: httpx.AsyncClient
) -> None:
    server = await mx()
    await sender({"example.org": server.port})
    await _compose(
        api, source="mass_email", subject="Spring", to=["ann@example.org", "bob@example.org"]
    )
    # The same mass email the same day again, to one old and one new address.
    await _compose(
        api, source="mass_email", subject="Spring", to=["ANN@example.org", "cy@example.org"]
    )

    def settled(events: list[AnyEvent]) -> bool:
        return len(_only(events, EmailSent)) + len(_only(events, EmailRejected)) >= 4

    events = await nats_bus.events(org_id, settled, timeout=60, settle=1.0)
    (duplicate,) = _only(events, EmailRejected)
    assert duplicate.reason == "duplicate_recipient"
    # The two emails are handled at once: either may reach Ann first, the other is refused.
    assert duplicate.recipient.lower() == "ann@example.org"
    assert server.handler.count_for("ann@example.org") == 1
    assert server.handler.count_for("cy@example.org") == 1
