"""Bad input against the running stack: every refusal is clear, nothing accepted is lost."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import os
import signal
import smtplib
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.polling import eventually

pytestmark = pytest.mark.timeout(300)

MAIL_DOMAIN = "hardening.localhost"
REP = "rep@hardening.example"
# Written to the API below; the log check at the end of the run looks for it.
MAILBOX_SECRET = "hunter2-mailbox-secret-0f9c"


def _uid() -> str:
    return uuid.uuid4().hex[:10]


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    assert isinstance(body["errors"], list)
    if field is not None:
        assert field in {e["field"] for e in body["errors"]}, body


@pytest.fixture
async def client(stack: Any) -> Any:
    async with httpx.AsyncClient(
        timeout=30, headers={"Authorization": f"Bearer {stack.token}"}
    ) as c:
        yield c


def ingest(stack: Any, path: str) -> str:
    return f"{stack.ingest}/v1/orgs/{stack.org}{path}"


def query(stack: Any, path: str) -> str:
    return f"{stack.query}/v1/orgs/{stack.org}{path}"


async def test_invalid_utf8_is_422_naming_the_body_and_a_huge_field_is_refused(
    stack: Any, client: httpx.AsyncClient
) -> None:
    body = (
        b'{"smtp_host":"127.0.0.1","username":"rep","secret":"'
        + MAILBOX_SECRET.encode()
        + b'\xff"}'
    )
    bad = await client.put(
        ingest(stack, "/mailboxes/u8"), content=body, headers={"content-type": "application/json"}
    )
    assert_problem(bad, 422, "body")
    assert MAILBOX_SECRET not in bad.text

    huge = await client.put(
        ingest(stack, "/mailboxes/u8"),
        json={"smtp_host": "h", "username": "rep", "secret": MAILBOX_SECRET + "x" * 1_000_000},
    )
    assert_problem(huge, 422, "secret")
    assert MAILBOX_SECRET not in huge.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/records/head-{n}", {"module": "Contacts", "addresses": ["h@x.example"]}),
        ("/templates/head-{n}", {"subject": "s", "text": "t"}),
        ("/mailboxes/head-{n}", {"smtp_host": "h", "username": "u", "secret": MAILBOX_SECRET}),
    ],
)
async def test_head_with_a_body_never_writes(
    stack: Any, client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> None:
    url = ingest(stack, path.format(n=_uid()))
    head = await client.request("HEAD", url, json=body)
    assert head.status_code == 404  # answered as GET: nothing there
    assert (await client.get(url)).status_code == 404


async def test_head_never_changes_settings(stack: Any, client: httpx.AsyncClient) -> None:
    before = (await client.get(ingest(stack, "/settings"))).json()
    head = await client.request(
        "HEAD", ingest(stack, "/settings"), json={"time_zone": "Asia/Tokyo"}
    )
    assert head.status_code == 200
    assert (await client.get(ingest(stack, "/settings"))).json() == before


async def test_json_nested_a_thousand_levels_deep_is_422(
    stack: Any, client: httpx.AsyncClient
) -> None:
    deep = b"[" * 1000 + b"]" * 1000
    response = await client.post(
        ingest(stack, "/emails"), content=deep, headers={"content-type": "application/json"}
    )
    assert_problem(response, 422, "body")


async def test_a_nul_in_a_path_id_or_a_forged_cursor_is_refused_and_the_connection_kept(
    stack: Any, client: httpx.AsyncClient
) -> None:
    nul = await client.get(query(stack, "/emails/%00"))
    assert_problem(nul, 400, "path")
    for forged in ('["0001-01-01T00:00:00+14:00","x"]', '["9999-12-31T23:00:00-14:00","x"]'):
        cursor = base64.urlsafe_b64encode(forged.encode()).decode().rstrip("=")
        page = await client.get(query(stack, "/records/r1/emails"), params={"cursor": cursor})
        assert_problem(page, 422, "cursor")
    # the same client (and its kept-alive connection) goes on working
    assert (await client.get(f"{stack.query}/healthz")).status_code == 200


@pytest.mark.parametrize("service", ["ingest", "query", "tracker"])
async def test_a_trailing_slash_is_404_without_any_redirect(stack: Any, service: str) -> None:
    base = getattr(stack, service)
    async with httpx.AsyncClient(timeout=30, follow_redirects=False) as plain:
        for path in ("/metrics/", "/healthz/", f"/v1/orgs/{stack.org}/settings/"):
            response = await plain.get(f"{base}{path}", headers={"Host": "evil.example"})
            assert "location" not in response.headers
            assert_problem(response, 404)


def _return_path(stack: Any, address: str) -> str:
    """The envelope sender (the VERP address) of the one message the sink holds for `address`."""
    folder: Path = stack.sink / address.lower()
    (sunk,) = folder.glob("*.eml")
    msg = email.message_from_bytes(sunk.read_bytes(), policy=email.policy.default)
    return str(msg["X-Sink-Mail-From"])


def _send(stack: Any, mail_from: str, rcpt: str, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30) as smtp:
        smtp.sendmail(mail_from, [rcpt], raw)


async def test_mail_with_a_nul_in_its_headers_is_accepted_and_reaches_the_timeline(
    stack: Any, client: httpx.AsyncClient
) -> None:
    n = _uid()
    sender = f"nul.{n}@customer.example"
    record = f"contact-nul-{n}"
    put = await client.put(
        ingest(stack, f"/records/{record}"), json={"module": "Contacts", "addresses": [sender]}
    )
    assert put.status_code == 200, put.text
    rcpt = f"in+{stack.org}@crm.example"
    raw = (
        f"From: {sender}\r\nTo: {rcpt}\r\nSubject: hel\x00lo {n}\r\n"
        f"Message-ID: <{n}@customer.example>\r\nX-Odd: \x00\xff\r\n\r\nbody\x00text\r\n"
    ).encode("latin-1")
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30) as smtp:
        assert smtp.sendmail(sender, [rcpt], raw) == {}

    async def on_timeline() -> list[dict[str, Any]]:
        r = await client.get(query(stack, f"/records/{record}/emails"))
        return list(r.json()["items"]) if r.status_code == 200 else []

    (item,) = await eventually(on_timeline)
    assert n in item["subject"]
    assert "\x00" not in item["subject"]


async def test_three_hundred_simultaneous_smtp_connections_all_get_a_greeting(stack: Any) -> None:
    async def greet() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.smtp_port)
        try:
            return await asyncio.wait_for(reader.readline(), 60)
        finally:
            writer.close()

    greetings = await asyncio.gather(*(greet() for _ in range(300)))
    assert all(g.startswith(b"220 ") for g in greetings), {g[:40] for g in greetings}


async def test_a_report_to_one_recipients_verp_address_cannot_bounce_another(
    stack: Any, client: httpx.AsyncClient
) -> None:
    n = _uid()
    a, b = f"verp-a.{n}@example.org", f"verp-b.{n}@example.org"
    settings = await client.put(ingest(stack, "/settings"), json={"mail_domain": MAIL_DOMAIN})
    assert settings.status_code == 200, settings.text
    composed = await client.post(
        ingest(stack, "/emails"),
        json={"source": "individual", "from": REP, "to": [a], "cc": [b], "text": "x"},
    )
    assert composed.status_code == 202, composed.text
    email_id = composed.json()["email_id"]

    async def delivered() -> dict[str, Any] | None:
        r = await client.get(query(stack, f"/emails/{email_id}"))
        return (
            r.json()
            if r.status_code == 200 and r.json()["email"]["status"] == "Delivered"
            else None
        )

    await eventually(delivered)
    verp_a = _return_path(stack, a)

    def dsn(recipient: str, action: str, status: str) -> bytes:
        return (
            f"From: MAILER-DAEMON@mx.example.org\r\nTo: {verp_a}\r\nSubject: report\r\n"
            "MIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
            "--b\r\nContent-Type: text/plain\r\n\r\nreport\r\n"
            "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
            "Reporting-MTA: dns; mx.example.org\r\n\r\n"
            f"Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\n"
            f"Diagnostic-Code: smtp; 550 {status} no\x00such user\r\n--b--\r\n"
        ).encode()

    _send(stack, "", verp_a, dsn(b, "failed", "5.1.1"))  # a's address speaking for b
    _send(stack, "", verp_a, dsn("stranger@example.net", "failed", "5.1.1"))
    _send(stack, "", verp_a, dsn(a, "delayed", "4.2.2"))  # a's own report: applied

    async def deferred() -> dict[str, Any] | None:
        r = await client.get(query(stack, f"/emails/{email_id}"))
        found: dict[str, Any] = r.json()
        return found if "email_deferred" in {h["type"] for h in found["history"]} else None

    found = await eventually(deferred)
    assert "email_bounced" not in {h["type"] for h in found["history"]}
    assert found["email"]["status"] == "Delivered"


async def test_a_dsn_with_a_nul_in_its_diagnostic_bounces_the_email(
    stack: Any, client: httpx.AsyncClient
) -> None:
    n = _uid()
    rcpt = f"nuldsn.{n}@example.org"
    settings = await client.put(ingest(stack, "/settings"), json={"mail_domain": MAIL_DOMAIN})
    assert settings.status_code == 200
    composed = await client.post(
        ingest(stack, "/emails"),
        json={"source": "individual", "from": REP, "to": [rcpt], "text": "x"},
    )
    email_id = composed.json()["email_id"]

    async def with_status(status: str) -> dict[str, Any] | None:
        r = await client.get(query(stack, f"/emails/{email_id}"))
        return r.json() if r.status_code == 200 and r.json()["email"]["status"] == status else None

    await eventually(lambda: with_status("Delivered"))
    verp = _return_path(stack, rcpt)
    report = (
        f"From: MAILER-DAEMON@mx.example.org\r\nTo: {verp}\r\nSubject: report\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user\x00unknown\r\n--b--\r\n"
    ).encode()
    _send(stack, "", verp, report)
    found = await eventually(lambda: with_status("Bounced"))
    assert "\x00" not in found["email"]["bounce"]["diagnostic"]


async def test_the_dev_supervisor_restarts_a_service_that_dies(stack: Any) -> None:
    dev = psutil.Process(int(stack.runtime["pid"]))
    (tracker,) = [p for p in dev.children() if p.cmdline()[-2:] == ["serve", "tracker"]]
    os.kill(tracker.pid, signal.SIGKILL)

    async def healthy_again() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as c:
                ok = (await c.get(f"{stack.tracker}/healthz")).status_code == 200
        except httpx.HTTPError:
            return False
        return ok and "service tracker restarted" in (stack.data / "dev.out").read_text()

    assert await eventually(healthy_again)
    assert tracker.pid not in {p.pid for p in dev.children()}
