"""The ingest HTTP API over real HTTP, against the real nats-server."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext

from mailfold.events import AnyEvent, EmailComposed, Module
from mailfold.ingest.bootstrap import IngestService
from mailfold.ingest.domain.requests import MIB
from mailfold.runtime import bus
from mailfold.runtime.content import get_content

ReadEvents = Callable[[str], Awaitable[list[AnyEvent]]]

EMAIL: dict[str, Any] = {
    "source": "individual",
    "from": "rep@acme.example",
    "to": ["bob@x.example"],
    "subject": "Hello",
    "html": "<p>Hello Bob</p>",
    "text": "Hello Bob",
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def problem_fields(response: httpx.Response) -> set[str]:
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == response.status_code
    assert body["title"]
    assert body["type"]
    return {e["field"] for e in body["errors"]}


async def composed(events: ReadEvents, org_id: str) -> list[EmailComposed]:
    found = await events(org_id)
    assert all(isinstance(e, EmailComposed) for e in found)
    return found  # type: ignore[return-value]


async def test_compose_answers_202_with_the_email_id_and_publishes_content_refs(
    api: httpx.AsyncClient, org_id: str, events: ReadEvents, js: JetStreamContext
) -> None:
    attachment = {
        "name": "notes.txt",
        "content_type": "text/plain",
        "content_base64": b64(b"notes"),
    }
    response = await api.post(
        f"/v1/orgs/{org_id}/emails", json={**EMAIL, "attachments": [attachment]}
    )
    assert response.status_code == 202
    email_id = response.json()["email_id"]
    assert response.headers["location"] == f"/v1/orgs/{org_id}/emails/{email_id}"
    (event,) = await composed(events, org_id)
    assert event.email_id == email_id
    assert event.org_id == org_id
    assert event.producer == "ingest"
    assert event.from_addr == "rep@acme.example"
    assert event.to == ("bob@x.example",)
    assert event.html is not None
    assert event.text is not None
    store = await bus.objects(js)
    assert await get_content(store, event.html.sha256) == b"<p>Hello Bob</p>"
    assert await get_content(store, event.attachments[0].sha256) == b"notes"
    assert b"notes" not in event.html.sha256.encode()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"source": "no_such_source"}, "source"),
        ({"source": "imap"}, "source"),
        ({"transport": "pigeon"}, "transport"),
        ({"from": "rep at acme"}, "from"),
        ({"to": ["bob@x.example", "bob at x"]}, "to[1]"),
        ({"to": [], "cc": [], "bcc": []}, "to"),
        ({"html": None, "text": None}, "html"),
        ({"subject": "a\nb"}, "subject"),
        (
            {"attachments": [{"name": "a", "content_base64": "***"}]},
            "attachments[0].content_base64",
        ),
        ({"template_id": "ghost"}, "template_id"),
        ({"record_ids": ["ghost"]}, "record_ids[0]"),
        ({"transport": "integrated_mailbox"}, "mailbox_user"),
        ({"transport": "integrated_mailbox", "mailbox_user": "nobody"}, "mailbox_user"),
        ({"unexpected": True}, "unexpected"),
    ],
)
async def test_each_invalid_field_is_named_in_a_422_problem(
    api: httpx.AsyncClient, org_id: str, events: ReadEvents, change: dict[str, Any], field: str
) -> None:
    body = {k: v for k, v in {**EMAIL, **change}.items() if v is not None}
    response = await api.post(f"/v1/orgs/{org_id}/emails", json=body)
    assert response.status_code == 422
    assert field in problem_fields(response)
    assert await events(org_id) == []


async def test_malformed_json_is_a_422_naming_the_body(api: httpx.AsyncClient, org_id: str) -> None:
    response = await api.post(
        f"/v1/orgs/{org_id}/emails",
        content=b'{"source": "individual",',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert problem_fields(response) == {"body"}


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic dXNlcjpwYXNz", "Bearer"])
async def test_requests_without_the_orgs_token_are_401(
    ingest: IngestService, org_id: str, org_token: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ingest.http_port}") as client:
        response = await client.post(f"/v1/orgs/{org_id}/emails", json=EMAIL, headers=headers)
        assert response.status_code == 401
        assert problem_fields(response) == {"Authorization"}
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_one_orgs_token_does_not_open_another_org(
    api: httpx.AsyncClient, js: JetStreamContext, org_id: str
) -> None:
    from mailfold.runtime.orgs import create_org

    other = f"{org_id}x"
    await create_org(await bus.kv(js, bus.BUCKET_ORGS), other)
    response = await api.get(f"/v1/orgs/{other}/settings")
    assert response.status_code == 401


async def test_attachments_over_ten_mib_in_total_are_413(
    api: httpx.AsyncClient, org_id: str, events: ReadEvents
) -> None:
    template = {
        "subject": "T",
        "attachments": [
            {"name": f"t{i}.bin", "content_base64": b64(bytes([i]) * (3 * MIB))} for i in range(3)
        ],
    }
    assert (await api.put(f"/v1/orgs/{org_id}/templates/heavy", json=template)).status_code == 200
    own = [{"name": "own.bin", "content_base64": b64(b"o" * (2 * MIB))}]
    response = await api.post(
        f"/v1/orgs/{org_id}/emails", json={**EMAIL, "template_id": "heavy", "attachments": own}
    )
    assert response.status_code == 413
    assert problem_fields(response) == {"attachments"}
    inline_only = [{"name": "big.bin", "content_base64": b64(b"b" * (10 * MIB + 1))}]
    response = await api.post(
        f"/v1/orgs/{org_id}/emails", json={**EMAIL, "attachments": inline_only}
    )
    assert response.status_code == 413
    assert problem_fields(response) == {"attachments"}
    assert await events(org_id) == []


async def test_a_template_attachment_over_three_mib_is_413_naming_it(
    api: httpx.AsyncClient, org_id: str
) -> None:
    template = {
        "subject": "T",
        "attachments": [
            {"name": "fine.txt", "content_base64": b64(b"ok")},
            {"name": "huge.pdf", "content_base64": b64(b"x" * (3 * MIB + 1))},
        ],
    }
    response = await api.put(f"/v1/orgs/{org_id}/templates/t1", json=template)
    assert response.status_code == 413
    assert problem_fields(response) == {"attachments[1].content_base64"}
    assert "huge.pdf" in response.json()["detail"]
    assert (await api.get(f"/v1/orgs/{org_id}/templates/t1")).status_code == 404


async def test_the_same_idempotency_key_returns_the_same_email_and_publishes_once(
    api: httpx.AsyncClient, org_id: str, events: ReadEvents
) -> None:
    url = f"/v1/orgs/{org_id}/emails"
    first = await api.post(url, json=EMAIL, headers={"Idempotency-Key": "order-1"})
    # the same JSON, keys in another order: the same payload
    again = await api.post(
        url, json=dict(reversed(list(EMAIL.items()))), headers={"Idempotency-Key": '"order-1"'}
    )
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert first.headers["location"] == again.headers["location"]
    assert len(await events(org_id)) == 1


async def test_racing_requests_with_one_key_agree_on_one_email(
    api: httpx.AsyncClient, org_id: str, events: ReadEvents
) -> None:
    url = f"/v1/orgs/{org_id}/emails"
    responses = await asyncio.gather(
        *(api.post(url, json=EMAIL, headers={"Idempotency-Key": "race"}) for _ in range(4))
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["email_id"] for r in responses}) == 1
    assert len(await events(org_id)) == 1


async def test_a_key_reused_with_a_different_body_is_422(
    api: httpx.AsyncClient, org_id: str, events: ReadEvents
) -> None:
    url = f"/v1/orgs/{org_id}/emails"
    assert (await api.post(url, json=EMAIL, headers={"Idempotency-Key": "k"})).status_code == 202
    response = await api.post(
        url, json={**EMAIL, "subject": "Other"}, headers={"Idempotency-Key": "k"}
    )
    assert response.status_code == 422
    assert problem_fields(response) == {"Idempotency-Key"}
    assert "different payload" in response.text
    assert len(await events(org_id)) == 1


async def test_a_malformed_idempotency_key_is_400(api: httpx.AsyncClient, org_id: str) -> None:
    response = await api.post(
        f"/v1/orgs/{org_id}/emails", json=EMAIL, headers={"Idempotency-Key": "x" * 300}
    )
    assert response.status_code == 400
    assert problem_fields(response) == {"Idempotency-Key"}


async def test_records_feed_the_address_index_and_can_be_deleted(
    api: httpx.AsyncClient, org_id: str, events: ReadEvents
) -> None:
    put = await api.put(
        f"/v1/orgs/{org_id}/records/c1", json={"module": "Contacts", "addresses": ["Bob@X.example"]}
    )
    assert put.status_code == 200
    assert put.json() == {"record_id": "c1", "module": "Contacts", "addresses": ["bob@x.example"]}
    await api.put(
        f"/v1/orgs/{org_id}/records/a1", json={"module": "Accounts", "addresses": ["bob@x.example"]}
    )
    assert (await api.post(f"/v1/orgs/{org_id}/emails", json=EMAIL)).status_code == 202
    assert (await api.delete(f"/v1/orgs/{org_id}/records/a1")).status_code == 204
    assert (await api.post(f"/v1/orgs/{org_id}/emails", json=EMAIL)).status_code == 202
    first, second = await composed(events, org_id)
    assert {(r.module, r.record_id) for r in first.records} == {
        (Module.CONTACTS, "c1"),
        (Module.ACCOUNTS, "a1"),
    }
    assert [r.record_id for r in second.records] == ["c1"]


async def test_deleting_an_unknown_record_is_404(api: httpx.AsyncClient, org_id: str) -> None:
    response = await api.delete(f"/v1/orgs/{org_id}/records/ghost")
    assert response.status_code == 404
    assert problem_fields(response) == {"record_id"}


async def test_record_validation_names_the_fields(api: httpx.AsyncClient, org_id: str) -> None:
    response = await api.put(
        f"/v1/orgs/{org_id}/records/r1",
        json={"module": "Tickets", "addresses": [f"a{i}@x.example" for i in range(6)]},
    )
    assert response.status_code == 422
    assert problem_fields(response) == {"module", "addresses"}
    response = await api.put(f"/v1/orgs/{org_id}/records/bad%20id", json={"module": "Leads"})
    assert response.status_code == 422
    assert problem_fields(response) == {"record_id"}


async def test_settings_are_saved_and_read_back(api: httpx.AsyncClient, org_id: str) -> None:
    settings = {
        "time_zone": "America/New_York",
        "mass_email_daily_limit": 250,
        "blacklisted_domains": ["spam.example"],
        "dropbox_senders": ["Rep@Acme.example"],
        "mail_domain": "mail.acme.example",
    }
    put = await api.put(f"/v1/orgs/{org_id}/settings", json=settings)
    assert put.status_code == 200
    got = await api.get(f"/v1/orgs/{org_id}/settings")
    assert got.json() == {
        **settings,
        "dropbox_senders": ["rep@acme.example"],
        "pop3_vanished_is_deleted": False,
    }


async def test_invalid_settings_name_every_field(api: httpx.AsyncClient, org_id: str) -> None:
    response = await api.put(
        f"/v1/orgs/{org_id}/settings",
        json={
            "time_zone": "Nowhere/Special",
            "mass_email_daily_limit": "lots",
            "dropbox_senders": [f"s{i}@x.example" for i in range(11)],
            "blacklisted_domains": ["not a domain"],
        },
    )
    assert response.status_code == 422
    assert problem_fields(response) == {
        "time_zone",
        "mass_email_daily_limit",
        "dropbox_senders",
        "blacklisted_domains[0]",
    }


async def test_mailbox_secrets_never_come_back_out(
    api: httpx.AsyncClient, org_id: str, events: ReadEvents
) -> None:
    mailbox = {
        "smtp_host": "smtp.acme.example",
        "smtp_port": 465,
        "username": "alice@acme.example",
        "secret": "s3cret-app-password",
        "security": "tls",
        "email": "alice@acme.example",
    }
    put = await api.put(f"/v1/orgs/{org_id}/mailboxes/alice", json=mailbox)
    assert put.status_code == 200
    assert "s3cret-app-password" not in put.text
    assert put.json()["smtp_port"] == 465
    got = await api.get(f"/v1/orgs/{org_id}/mailboxes/alice")
    assert "s3cret-app-password" not in got.text
    body = {**EMAIL, "transport": "integrated_mailbox", "mailbox_user": "alice"}
    assert (await api.post(f"/v1/orgs/{org_id}/emails", json=body)).status_code == 202
    (event,) = await events(org_id)
    assert isinstance(event, EmailComposed)
    assert event.mailbox_user == "alice"
    assert "s3cret-app-password" not in repr(event)


async def test_unknown_routes_and_methods_answer_problems(
    api: httpx.AsyncClient, org_id: str
) -> None:
    missing = await api.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    wrong = await api.delete(f"/v1/orgs/{org_id}/settings")
    assert wrong.status_code == 405
    assert wrong.headers["content-type"] == "application/problem+json"


async def test_health_and_metrics_share_the_api_port(api: httpx.AsyncClient, org_id: str) -> None:
    await api.post(f"/v1/orgs/{org_id}/emails", json=EMAIL)
    health = await api.get("/healthz")
    assert health.status_code == 200
    assert health.json()["checks"] == {"nats": True}
    metrics = await api.get("/metrics")
    assert 'mailfold_ingest_emails_composed_total{source="individual"}' in metrics.text
    operations = (await api.get("/asyncapi.json")).json()["operations"]
    assert operations["ingest:email_composed"]["action"] == "send"
    assert all(name.startswith("ingest:") for name in operations)


@pytest.mark.parametrize(
    ("path", "body", "fields"),
    [
        ("templates/t1", {"subject": "two\nlines", "html": 3}, {"subject", "html"}),
        ("templates/t1", {"attachments": [{"name": "a"}]}, {"attachments[0].content_base64"}),
        ("templates/bad%20id", {"subject": "s"}, {"template_id"}),
        (
            "mailboxes/alice",
            {"smtp_port": 70000, "security": "ssl"},
            {"smtp_host", "username", "secret", "smtp_port", "security"},
        ),
        (
            "mailboxes/alice",
            {"smtp_host": "smtp.x.example", "username": "u", "secret": "s", "email": "nope"},
            {"email"},
        ),
        ("mailboxes/has%20space", {"smtp_host": "h", "username": "u", "secret": "s"}, {"user"}),
        ("records/r1", {"addresses": ["a@x.example"]}, {"module"}),
        ("settings", {"mail_domain": "localhost", "extra": 1}, {"mail_domain", "extra"}),
        ("settings", [1, 2], {"body"}),
    ],
)
async def test_every_put_names_the_fields_at_fault(
    api: httpx.AsyncClient, org_id: str, path: str, body: object, fields: set[str]
) -> None:
    response = await api.put(f"/v1/orgs/{org_id}/{path}", json=body)
    assert response.status_code == 422
    assert problem_fields(response) == fields
