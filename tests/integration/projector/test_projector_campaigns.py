"""A campaign (one bulk send) through the query API: its emails paged, and its counts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import msgspec
from nats.aio.client import Client
from tests.integration.projector.conftest import last_seq, publish, wait_for_position

from mailfold.events import AnyEvent, EmailComposed, EmailRejected, Source, Verdict, new_id
from mailfold.runtime import bus
from mailfold.runtime.orgs import create_org

if TYPE_CHECKING:
    from tests.integration.projector.conftest import Mail, StartProjector


def _of(mail: Mail, email_id: str, campaign: str, n: int) -> EmailComposed:
    composed = mail.composed(
        email_id, source=Source.MASS_EMAIL, to=(f"r{n}@example.org",), minutes=n
    )
    return msgspec.structs.replace(composed, campaign_id=campaign)


async def test_a_campaigns_counts_and_its_emails_page_by_page(
    nc: Client, mail: Mail, database_url: str, start_projector: StartProjector
) -> None:
    js = nc.jetstream()
    token = await create_org(await bus.kv(js, bus.BUCKET_ORGS), mail.org_id)
    other_token = await create_org(await bus.kv(js, bus.BUCKET_ORGS), mail.org_id + "x")
    campaign, other_campaign = new_id(), new_id()
    ids = [new_id() for _ in range(7)]
    events: list[AnyEvent] = [_of(mail, e, campaign, n) for n, e in enumerate(ids)]
    opened, clicked, scanned, bounced, over, quota, pending = ids
    events += [mail.sent(e) for e in (opened, clicked, scanned, bounced, pending)]
    events += [mail.delivered(e) for e in (opened, clicked, scanned)]
    events += [
        mail.opened(opened),
        mail.opened(opened, 4.5),
        mail.clicked(clicked),
        mail.opened(scanned, verdict=Verdict.MACHINE),
        mail.clicked(scanned, verdict=Verdict.MACHINE),
        mail.bounced(bounced),
    ]
    for email_id, reason in ((over, "daily_limit_reached"), (quota, "record_attachment_quota")):
        events.append(
            EmailRejected(**mail.env(email_id, 1), reason=reason, recipient="x@example.org")
        )
    events.append(_of(mail, new_id(), other_campaign, 9))

    async with (
        start_projector() as service,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}") as client,
    ):
        await publish(js, events)
        await wait_for_position(database_url, await last_seq(js))
        auth = {"Authorization": f"Bearer {token}"}
        url = f"/v1/orgs/{mail.org_id}/campaigns/{campaign}"

        r = await client.get(url, headers=auth)
        assert r.status_code == 200, r.text
        counts: dict[str, Any] = r.json()["counts"]
        assert counts == {
            "emails": 7,
            "sent": 5,
            "delivered": 3,
            "bounced": {"total": 1, "by_reason": {"user_unknown": 1}},
            "opened": {"human": 2, "machine": 1},  # a human click implies an open
            "clicked": {"human": 1, "machine": 1},
            "rejected": {
                "total": 2,
                "by_reason": {"daily_limit_reached": 1, "record_attachment_quota": 1},
            },
        }

        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
            page = await client.get(f"{url}/emails", params=params, headers=auth)
            assert page.status_code == 200, page.text
            body = page.json()
            seen += [item["email_id"] for item in body["items"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted(ids)
        assert pages == 3
        items = {
            i["email_id"]: i
            for i in (await client.get(f"{url}/emails?limit=10", headers=auth)).json()["items"]
        }
        assert items[clicked]["status"] == "Clicked"
        assert items[clicked]["recipient"] == "r1@example.org"
        assert items[clicked]["record_ids"] == ["lead-1"]
        assert items[over]["rejection"]["reason"] == "daily_limit_reached"

        bad = await client.get(f"{url}/emails", params={"limit": "0"}, headers=auth)
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["field"] == "limit"
        elsewhere = {"Authorization": f"Bearer {other_token}"}
        assert (
            await client.get(f"/v1/orgs/{mail.org_id}x/campaigns/{campaign}", headers=elsewhere)
        ).status_code == 404
        assert (await client.get(url, headers=elsewhere)).status_code == 404
        assert (
            await client.get(f"/v1/orgs/{mail.org_id}/campaigns/{new_id()}", headers=auth)
        ).status_code == 404
        assert (await client.get(url)).status_code == 401
