"""The query API over HTTP: a record's Emails related list and an email's full history."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import pytest
from nats.aio.client import Client

from mailfold.events import AnyEvent, Module, Source, Verdict, new_id
from mailfold.runtime import bus
from mailfold.runtime.directory import RecordEntry, put_record
from mailfold.runtime.orgs import create_org

if TYPE_CHECKING:
    from tests.integration.projector.conftest import Mail, StartProjector

from tests.integration.projector.conftest import Mail as MailBuilder
from tests.integration.projector.conftest import last_seq, publish, wait_for_position


@dataclass
class World:
    """Two orgs with emails on the same record id, served by one projector."""

    client: httpx.AsyncClient
    org: str
    token: str
    other_org: str
    other_token: str
    newest_first: list[str]  # the record's visible emails (all sources), newest first
    crm: list[str]  # of those, the CRM-originated ones
    deleted: str
    violating: str
    other_email: str

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}


@pytest.fixture
async def world(
    nc: Client, mail: Mail, database_url: str, start_projector: StartProjector
) -> AsyncIterator[World]:
    js = nc.jetstream()
    orgs = await bus.kv(js, bus.BUCKET_ORGS)
    other = MailBuilder(mail.org_id + "x")
    token = await create_org(orgs, mail.org_id)
    other_token = await create_org(orgs, other.org_id)
    await put_record(
        await bus.kv(js, bus.BUCKET_DIRECTORY),
        mail.org_id,
        RecordEntry(record_id="lead-empty", module=Module.LEADS, addresses=("x@example.org",)),
    )

    events: list[AnyEvent] = []
    visible: list[tuple[float, str, bool]] = []
    for n in range(7):
        email_id = new_id()
        # Minutes apart, sent a minute after composing: the list sorts by the time sent.
        events += [mail.composed(email_id, minutes=10 * n), mail.sent(email_id, 10 * n + 1)]
        visible.append((10 * n + 1, email_id, True))
    received = new_id()
    events.append(mail.received(received, minutes=35))
    visible.append((35, received, False))
    deleted = new_id()
    events += [mail.composed(deleted, minutes=50, source=Source.MASS_EMAIL), mail.deleted(deleted)]
    violating = new_id()
    events += [
        mail.composed(violating, minutes=5, to=("a@example.org", "b@example.org")),
        mail.sent(violating, 6),
        mail.delivered(violating, 7),
        mail.bounced(violating, 8),
        mail.opened(violating, 9),
        mail.opened(violating, 9.5, Verdict.MACHINE),
    ]
    visible.append((6, violating, True))
    other_email = new_id()
    events += [other.composed(other_email, minutes=70), other.sent(other_email, 71)]

    async with (
        start_projector() as service,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}") as client,
    ):
        await publish(js, events)
        await wait_for_position(database_url, await last_seq(js))
        ordered = sorted(visible, reverse=True)
        yield World(
            client=client,
            org=mail.org_id,
            token=token,
            other_org=other.org_id,
            other_token=other_token,
            newest_first=[e for _, e, _ in ordered],
            crm=[e for _, e, crm in ordered if crm],
            deleted=deleted,
            violating=violating,
            other_email=other_email,
        )


def record_url(world: World, record: str = "lead-1", org: str | None = None) -> str:
    return f"/v1/orgs/{org or world.org}/records/{record}/emails"


async def test_the_related_list_pages_newest_first_with_an_opaque_cursor(world: World) -> None:
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        response = await world.client.get(record_url(world), params=params, headers=world.auth())
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert len(body["items"]) <= 3
        seen += [item["email_id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == world.newest_first
    assert pages == 3
    assert world.deleted not in seen


async def test_an_item_shows_status_source_people_times_and_counts(world: World) -> None:
    response = await world.client.get(record_url(world), headers=world.auth())
    items = {item["email_id"]: item for item in response.json()["items"]}

    item = items[world.violating]
    assert item["status"] == "Bounced"
    assert item["source"] == "Individual"
    assert item["direction"] == "outgoing"
    assert item["from"] == "rep@crm.example"
    assert item["to"] == ["a@example.org", "b@example.org"]
    assert item["sent_at"].startswith("2026-03-02T09:06:00")
    assert item["delivered_at"].startswith("2026-03-02T09:07:00")
    assert item["bounced_at"].startswith("2026-03-02T09:08:00")
    # Multi-recipient mail has no open insights: its opens are violations, not counted.
    assert item["opened_at"] is None
    assert item["opens"] == {"human": 0, "machine": 0}
    assert item["clicks"] == {"human": 0, "machine": 0}
    assert item["bounce"] == {
        "recipient": "ann@example.org",
        "kind": "hard",
        "status": "5.1.1",
        "reply_code": 550,
        "reason": "user_unknown",
        "diagnostic": "550 5.1.1 no such user",
    }
    received = [i for i in items.values() if i["direction"] == "incoming"]
    assert [(i["source"], i["status"]) for i in received] == [("IMAP", "Received")]


async def test_filter_crm_keeps_only_mail_sent_from_the_crm(world: World) -> None:
    response = await world.client.get(
        record_url(world), params={"filter": "crm"}, headers=world.auth()
    )

    assert response.status_code == 200
    assert [i["email_id"] for i in response.json()["items"]] == world.crm
    assert response.json()["filter"] == "crm"


async def test_an_email_shows_its_state_and_every_event_with_its_decision(world: World) -> None:
    response = await world.client.get(
        f"/v1/orgs/{world.org}/emails/{world.violating}", headers=world.auth()
    )

    assert response.status_code == 200
    body = response.json()
    assert body["email"]["status"] == "Bounced"
    assert body["email"]["violations"] == 2
    assert body["email"]["records"] == [{"module": "Leads", "record_id": "lead-1"}]
    history = body["history"]
    assert [h["type"] for h in history] == [
        "email_composed",
        "email_sent",
        "email_delivered",
        "email_bounced",
        "email_opened",
        "email_opened",
    ]
    assert [h["seq"] for h in history] == sorted(h["seq"] for h in history)
    assert [h["decision"] for h in history] == ["applied"] * 4 + ["violation"] * 2
    violation = history[4]
    assert violation["reason"] == "unreachable_status"
    assert "Opened is not reachable" in violation["detail"]
    assert violation["payload"]["type"] == "email_opened"
    assert violation["payload"]["email_id"] == world.violating


async def test_a_deleted_email_leaves_the_list_but_keeps_its_history(world: World) -> None:
    response = await world.client.get(
        f"/v1/orgs/{world.org}/emails/{world.deleted}", headers=world.auth()
    )

    assert response.status_code == 200
    assert response.json()["email"]["deleted_at"] is not None
    assert [h["type"] for h in response.json()["history"]] == ["email_composed", "email_deleted"]


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "a bearer token is required"),
        ({"Authorization": "Basic dXNlcjpwdw=="}, "a bearer token is required"),
        ({"Authorization": "Bearer mf_nobody_xyz"}, "the bearer token is not valid"),
    ],
)
async def test_a_missing_or_invalid_token_is_401(
    world: World, headers: dict[str, str], detail: str
) -> None:
    for url in (record_url(world), f"/v1/orgs/{world.org}/emails/{world.violating}"):
        response = await world.client.get(url, headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["status"] == 401
        assert response.json()["detail"] == detail


async def test_the_token_of_one_org_cannot_see_another_and_unknown_ids_are_404(
    world: World,
) -> None:
    other_email = f"/v1/orgs/{world.org}/emails/{world.other_email}"
    cases = [
        # Another org's token on this org's data.
        (record_url(world), world.auth(world.other_token)),
        (f"/v1/orgs/{world.org}/emails/{world.violating}", world.auth(world.other_token)),
        # This org's token on another org's email, through its own org path.
        (other_email, world.auth()),
        # Unknown ids.
        (f"/v1/orgs/{world.org}/emails/{new_id()}", world.auth()),
        (record_url(world, "lead-404"), world.auth()),
    ]
    for url, headers in cases:
        response = await world.client.get(url, headers=headers)
        assert response.status_code == 404, url
        assert response.headers["content-type"] == "application/problem+json"
    # Its own org sees its own email and nothing of the other org on the shared record id.
    own = await world.client.get(
        record_url(world, org=world.other_org), headers=world.auth(world.other_token)
    )
    assert [i["email_id"] for i in own.json()["items"]] == [world.other_email]


async def test_a_known_record_without_emails_is_an_empty_list(world: World) -> None:
    response = await world.client.get(record_url(world, "lead-empty"), headers=world.auth())

    assert response.status_code == 200
    assert response.json()["items"] == []
    assert response.json()["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({"filter": "sent"}, ["filter"]),
        ({"limit": "0"}, ["limit"]),
        ({"limit": "201"}, ["limit"]),
        ({"limit": "ten"}, ["limit"]),
        ({"limit": "+5"}, ["limit"]),
        ({"limit": " 5"}, ["limit"]),
        ({"limit": "1_0"}, ["limit"]),
        ({"cursor": "not-a-cursor"}, ["cursor"]),
        ({"filter": "x", "limit": "-1", "cursor": "%%"}, ["filter", "limit", "cursor"]),
    ],
)
async def test_invalid_query_parameters_are_422_naming_each_field(
    world: World, params: dict[str, str], fields: list[str]
) -> None:
    response = await world.client.get(record_url(world), params=params, headers=world.auth())

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert [e["field"] for e in problem["errors"]] == fields
    assert all(e["message"] for e in problem["errors"])
