"""The webhooks API: endpoints, deliveries, replay and the events feed, as an org and as others."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
from tests.integration.webhooks.conftest import (
    Org,
    StartReceiver,
    StartWebhooks,
    add_endpoint,
    always,
    make_org,
)

from mailfold.webhooks.entrypoints.openapi import (
    DeliveryPage,
    EndpointList,
    EndpointView,
    EventPage,
    openapi,
)
from mailfold.webhooks.service_layer.replay import Replayed


async def _delivered(api: httpx.AsyncClient, org: Org, endpoint_id: str, n: int) -> list[Any]:
    async with asyncio.timeout(30):
        while True:
            response = await api.get(
                f"/v1/orgs/{org.org_id}/webhooks/{endpoint_id}/deliveries",
                params={"outcome": "delivered", "limit": "500"},
            )
            items: list[Any] = response.json()["items"]
            if len(items) >= n:
                return items
            await asyncio.sleep(0.1)


async def test_requests_without_the_orgs_token_are_refused(
    start_webhooks: StartWebhooks, org: Org, nats_url: str
) -> None:
    other = await make_org(nats_url, org.org_id + "x")
    async with start_webhooks(nats_url) as service:
        base = f"http://127.0.0.1:{service.port}"
        path = f"/v1/orgs/{org.org_id}/webhooks"
        async with httpx.AsyncClient(base_url=base) as anonymous:
            missing = await anonymous.get(path)
            forged = await anonymous.get(path, headers={"authorization": "Bearer mf_nope_123"})
        async with other.api(service) as api:
            foreign = await api.get(path)
            foreign_events = await api.get(f"/v1/orgs/{org.org_id}/events")
    assert missing.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert forged.status_code == 401
    # Another org's valid token learns nothing, not even that the org exists.
    assert foreign.status_code == 404
    assert foreign_events.status_code == 404


async def test_bad_endpoint_input_names_the_field(
    start_webhooks: StartWebhooks, org: Org, nats_url: str
) -> None:
    cases = [
        ({}, "url"),
        ({"url": 7}, "url"),
        ({"url": "http://127.0.0.1:9/x", "colour": "red"}, "colour"),
        ({"url": "http://127.0.0.1:9/x", "event_types": ["email_exploded"]}, "event_types"),
        ({"url": "http://127.0.0.1:9/x", "sources": ["carrier_pigeon"]}, "sources"),
        ({"url": "http://127.0.0.1:9/x", "secret": "plain"}, "secret"),
        ({"url": "not a url"}, "url"),
        ({"url": "http://127.0.0.1:9/a\u0000b"}, "url"),
        ({"url": "http://127.0.0.1:9/a b"}, "url"),
        ({"url": "http://exa mple.org/"}, "url"),
    ]
    async with start_webhooks(nats_url) as service, org.api(service) as api:
        for body, field in cases:
            response = await api.post(f"/v1/orgs/{org.org_id}/webhooks", json=body)
            assert response.status_code == 422, body
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["errors"][0]["field"] == field, body
        not_json = await api.post(
            f"/v1/orgs/{org.org_id}/webhooks",
            content=b"{",
            headers={"content-type": "application/json"},
        )
        assert not_json.status_code == 422
        for raw in (b'{"url": "http://127.0.0.1:9/\xff"}', b"[" * 60_000):
            refused = await api.post(
                f"/v1/orgs/{org.org_id}/webhooks",
                content=raw,
                headers={"content-type": "application/json"},
            )
            assert refused.status_code == 422, raw[:40]
            assert refused.json()["errors"][0]["field"] == "body"
        listed = await api.get(f"/v1/orgs/{org.org_id}/webhooks")
        assert listed.json()["items"] == []


async def test_endpoints_are_created_shown_changed_and_deleted_without_showing_secrets(
    start_webhooks: StartWebhooks, org: Org, nats_url: str
) -> None:
    async with start_webhooks(nats_url) as service, org.api(service) as api:
        created = await add_endpoint(
            api, org, "http://127.0.0.1:9/x", event_types=["email_bounced"], description="crm"
        )
        assert created["secret"].startswith("whsec_")
        path = f"/v1/orgs/{org.org_id}/webhooks/{created['id']}"
        shown = (await api.get(path)).json()
        assert "secret" not in shown
        assert created["secret"] not in str(shown)
        assert shown["event_types"] == ["email_bounced"]
        assert shown["backlog"] == 0
        # Every answer is the type the OpenAPI document declares for it.
        for answer in (created, shown):
            msgspec.convert(answer, EndpointView)
        listed = (await api.get(f"/v1/orgs/{org.org_id}/webhooks")).json()
        assert [e.id for e in msgspec.convert(listed, EndpointList).items] == [created["id"]]
        patched = await api.patch(path, json={"event_types": [], "enabled": False})
        assert patched.status_code == 200
        assert patched.json()["enabled"] is False
        assert "secret" not in patched.json()
        assert (await api.delete(path)).status_code == 204
        assert (await api.get(path)).status_code == 404
        assert (await api.patch(path, json={"enabled": True})).status_code == 404


async def test_deliveries_page_and_replay_resends_with_the_original_webhook_id(
    start_webhooks: StartWebhooks, start_receiver: StartReceiver, org: Org, nats_url: str
) -> None:
    async with (
        start_receiver(always(200)) as receiver,
        start_webhooks(nats_url) as service,
        org.api(service) as api,
    ):
        endpoint = await add_endpoint(api, org, receiver.url)
        before = datetime.now(UTC) - timedelta(seconds=1)
        events = [org.composed(f"page-{i}") for i in range(3)]
        await org.publish(*events)
        await _delivered(api, org, endpoint["id"], 3)
        path = f"/v1/orgs/{org.org_id}/webhooks/{endpoint['id']}"

        first = (await api.get(f"{path}/deliveries", params={"limit": "2"})).json()
        assert len(first["items"]) == 2
        assert msgspec.convert(first, DeliveryPage).items[0].webhook_id == events[0].event_id
        rest = await api.get(f"{path}/deliveries", params={"after": str(first["next_after"])})
        assert len(rest.json()["items"]) == 1
        assert rest.json()["next_after"] is None
        bad = await api.get(f"{path}/deliveries", params={"outcome": "lost"})
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["field"] == "outcome"
        superscript = await api.get(f"{path}/deliveries", params={"after": "\u00b9"})
        assert superscript.status_code == 422
        assert superscript.json()["errors"][0]["field"] == "after"

        one = await api.post(f"{path}/replay", json={"event_id": events[1].event_id})
        assert one.status_code == 202, one.text
        assert msgspec.convert(one.json(), Replayed).event_ids == [events[1].event_id]
        await receiver.wait_for(4)
        assert receiver.requests[3].headers["webhook-id"] == events[1].event_id
        replayed = receiver.verified(endpoint["secret"])[3]
        assert replayed["event_id"] == events[1].event_id

        ranged = await api.post(f"{path}/replay", json={"since": before.isoformat()})
        assert ranged.status_code == 202
        assert sorted(ranged.json()["event_ids"]) == sorted(e.event_id for e in events)
        await receiver.wait_for(7)
        ids = [r.headers["webhook-id"] for r in receiver.requests]
        assert sorted(ids[4:]) == sorted(e.event_id for e in events)
        receiver.verified(endpoint["secret"])

        missing = await api.post(f"{path}/replay", json={"event_id": "no-such-event"})
        assert missing.status_code == 422
        assert missing.json()["errors"][0]["field"] == "event_id"
        neither = await api.post(f"{path}/replay", json={})
        assert neither.status_code == 422
        empty = await api.post(f"{path}/replay", json={"event_id": ""})
        assert empty.status_code == 422, empty.text
        assert empty.json()["errors"][0]["field"] == "event_id"


async def test_events_feed_pages_only_the_orgs_own_events(
    start_webhooks: StartWebhooks, org: Org, nats_url: str
) -> None:
    other = await make_org(nats_url, org.org_id + "y")
    mine = [org.composed(f"feed-{i}") for i in range(3)]
    await org.publish(mine[0])
    await other.publish(other.composed("theirs"))
    await org.publish(*mine[1:])
    async with start_webhooks(nats_url) as service, org.api(service) as api:
        path = f"/v1/orgs/{org.org_id}/events"
        page = (await api.get(path, params={"limit": "2"})).json()
        assert len(msgspec.convert(page, EventPage).items) == 2
        assert [i["event"]["event_id"] for i in page["items"]] == [e.event_id for e in mine[:2]]
        rest = (await api.get(path, params={"after": str(page["next_after"])})).json()
        assert [i["event"]["event_id"] for i in rest["items"]] == [mine[2].event_id]
        assert all(i["event"]["org_id"] == org.org_id for i in page["items"] + rest["items"])
        typed = (await api.get(path, params={"type": "email_sent"})).json()
        assert typed["items"] == []
        for params, field in (
            ({"after": "-1"}, "after"),
            ({"after": str(2**64)}, "after"),
            ({"after": "\u00b9"}, "after"),  # a digit to str.isdigit, not a number
            ({"limit": "0"}, "limit"),
            ({"limit": "+5"}, "limit"),  # int() takes these; a page size is digits only
            ({"limit": " 5"}, "limit"),
            ({"limit": "1_0"}, "limit"),
            ({"limit": "9" * 5000}, "limit"),
            ({"type": "x"}, "type"),
        ):
            bad = await api.get(path, params=params)
            assert bad.status_code == 422
            assert bad.json()["errors"][0]["field"] == field


async def test_an_org_has_at_most_twenty_endpoints(
    start_webhooks: StartWebhooks, org: Org, nats_url: str
) -> None:
    async with start_webhooks(nats_url) as service, org.api(service) as api:
        for i in range(20):
            await add_endpoint(api, org, f"http://127.0.0.1:9/hook{i}")
        refused = await api.post(
            f"/v1/orgs/{org.org_id}/webhooks", json={"url": "http://127.0.0.1:9/one-more"}
        )
        assert refused.status_code == 409
        assert refused.headers["content-type"] == "application/problem+json"
        assert len((await api.get(f"/v1/orgs/{org.org_id}/webhooks")).json()["items"]) == 20


async def test_the_service_serves_its_openapi_document_without_a_token(
    start_webhooks: StartWebhooks, nats_url: str
) -> None:
    async with (
        start_webhooks(nats_url) as service,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}") as anonymous,
    ):
        response = await anonymous.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == msgspec.json.decode(msgspec.json.encode(openapi()))
    assert "/v1/orgs/{org}/webhooks/{endpoint_id}/replay" in response.json()["paths"]
