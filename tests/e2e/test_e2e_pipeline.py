"""The whole pipeline through its public interfaces: HTTP, SMTP, the CLI, and the event stream."""

from __future__ import annotations

import asyncio
import email
import email.policy
import email.utils
import re
import smtplib
import time
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.polling import eventually

from mailfold.events import EmailCaptured, EmailOpened, Module, RecordRef, Source, decode, new_id
from mailfold.runtime import bus

pytestmark = pytest.mark.timeout(300)

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
MAIL_DOMAIN = "mailfold.localhost"
REP = "rep@e2e.example"


def _uid() -> str:
    return uuid.uuid4().hex[:10]


class Api:
    """The ingest and query HTTP APIs with the org's token."""

    def __init__(self, stack: Any, client: httpx.AsyncClient) -> None:
        self.stack = stack
        self.client = client
        self.headers = {"Authorization": f"Bearer {stack.token}"}
        self.ingest = f"{stack.ingest}/v1/orgs/{stack.org}"
        self.query = f"{stack.query}/v1/orgs/{stack.org}"

    async def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.client.put(f"{self.ingest}{path}", json=body, headers=self.headers)
        assert r.status_code in (200, 201, 204), r.text
        return r.json() if r.content else {}

    async def compose(self, **body: Any) -> str:
        r = await self.client.post(f"{self.ingest}/emails", json=body, headers=self.headers)
        assert r.status_code == 202, r.text
        return str(r.json()["email_id"])

    async def campaign(self, **body: Any) -> dict[str, Any]:
        r = await self.client.post(f"{self.ingest}/emails", json=body, headers=self.headers)
        assert r.status_code == 202, r.text
        answer: dict[str, Any] = r.json()
        return answer

    async def campaign_counts(self, campaign_id: str) -> dict[str, Any] | None:
        r = await self.client.get(f"{self.query}/campaigns/{campaign_id}", headers=self.headers)
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        counts: dict[str, Any] = r.json()["counts"]
        return counts

    async def timeline(self, record_id: str, filter_: str = "all") -> list[dict[str, Any]]:
        r = await self.client.get(
            f"{self.query}/records/{record_id}/emails",
            params={"filter": filter_, "limit": 100},
            headers=self.headers,
        )
        if r.status_code == 404:
            return []
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    async def email(self, email_id: str) -> dict[str, Any] | None:
        r = await self.client.get(f"{self.query}/emails/{email_id}", headers=self.headers)
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def email_with(self, email_id: str, **expected: Any) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            found = await self.email(email_id)
            if found is None:
                return None
            state = found["email"]
            return found if all(state.get(k) == v for k, v in expected.items()) else None

        result: dict[str, Any] = await eventually(check)
        return result


@pytest.fixture
async def api(stack: Any) -> Any:
    async with httpx.AsyncClient(timeout=30) as client:
        yield Api(stack, client)


@pytest.fixture(scope="session")
def org_settings_done() -> dict[str, bool]:
    return {}


@pytest.fixture
async def ready_org(api: Api, stack: Any, org_settings_done: dict[str, bool]) -> Api:
    """Org settings and the rep's integrated mailbox (the sink stands in for its SMTP server)."""
    if not org_settings_done:
        await api.put(
            "/settings",
            {
                "time_zone": "Europe/Berlin",
                "mass_email_daily_limit": 1000,
                "blacklisted_domains": ["spam.example"],
                "dropbox_senders": [REP],
                "mail_domain": MAIL_DOMAIN,
            },
        )
        await api.put(
            "/mailboxes/rep",
            {
                "smtp_host": "127.0.0.1",
                "smtp_port": int(stack.runtime["ports"]["sink_smtp"]),
                "username": "rep",
                "secret": "not-a-real-secret",
                "security": "none",
                "email": REP,
            },
        )
        org_settings_done["done"] = True
    return api


def _sink_messages(stack: Any, address: str) -> list[EmailMessage]:
    folder: Path = stack.sink / address.lower()
    if not folder.exists():
        return []
    out = []
    for path in sorted(folder.glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        out.append(msg)
    return out


async def _sink_message(stack: Any, address: str) -> EmailMessage:
    async def check() -> EmailMessage | None:
        found = _sink_messages(stack, address)
        return found[0] if found else None

    msg: EmailMessage = await eventually(check)
    return msg


def _html(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("html",))
    return "" if part is None else str(part.get_content())


def _tracking_urls(html: str) -> tuple[list[str], list[str]]:
    pixels = re.findall(r'src="(http[^"]+/o/[^"]+\.gif)"', html)
    links = re.findall(r'href="(http[^"]+/c/[^"]+)"', html)
    return pixels, links


def _smtp_send(stack: Any, mail_from: str, rcpt: str, msg: EmailMessage | bytes) -> None:
    raw = msg if isinstance(msg, bytes) else msg.as_bytes()
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30) as client:
        client.sendmail(mail_from, [rcpt], raw)


def _message(sender: str, to: str, subject: str, cc: str | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{_uid()}@e2e.example>"
    msg["Date"] = email.utils.format_datetime(datetime.now(UTC))
    msg.set_content("Hello from the e2e suite.")
    return msg


async def _publish(stack: Any, event: Any) -> None:
    nc = await bus.connect(stack.nats_url, "e2e", reconnect=False)
    try:
        await bus.publish_event(nc.jetstream(), event)
    finally:
        await bus.close(nc)


async def test_a_tracked_email_is_delivered_opened_and_clicked_and_the_click_lands_on_the_original_url(
    ready_org: Api, stack: Any
) -> None:
    api, n = ready_org, _uid()
    ann = f"ann.{n}@example.com"
    await api.put(f"/records/contact-{n}", {"module": "Contacts", "addresses": [ann]})
    composed = time.monotonic()
    email_id = await api.compose(
        source="individual",
        **{"from": REP},
        to=[ann],
        subject="Our pricing",
        html='<html><body><p>See <a href="https://example.com/pricing?plan=pro">pricing</a>.</p></body></html>',
    )
    await api.email_with(email_id, status="Delivered")
    pixels, links = _tracking_urls(_html(await _sink_message(stack, ann)))
    assert len(pixels) == 1
    assert len(links) == 1

    async with httpx.AsyncClient(headers={"User-Agent": BROWSER}, timeout=30) as browser:
        pixel = await browser.get(pixels[0])
        assert pixel.status_code == 200
        assert pixel.headers["content-type"] == "image/gif"
        await api.email_with(email_id, status="Opened")
        # People click seconds after mail arrives; a click right after sending is a link
        # scanner's, which the tracker records as a machine click.
        await asyncio.sleep(max(0.0, 6.0 - (time.monotonic() - composed)))
        click = await browser.get(links[0], follow_redirects=False)
        assert click.status_code == 302
        assert click.headers["location"] == "https://example.com/pricing?plan=pro"

    state = (await api.email_with(email_id, status="Clicked"))["email"]
    assert state["delivered_at"]
    assert state["opened_at"]
    assert state["clicked_at"]
    assert state["opens"]["human"] == 1
    assert state["clicks"]["human"] == 1
    timeline = await api.timeline(f"contact-{n}")
    assert [(e["email_id"], e["status"], e["source"]) for e in timeline] == [
        (email_id, "Clicked", "Individual")
    ]


async def test_a_recipient_server_answering_550_makes_the_email_bounced_with_its_reason(
    ready_org: Api,
) -> None:
    api, n = ready_org, _uid()
    await api.put(
        f"/records/lead-{n}", {"module": "Leads", "addresses": [f"nobody.{n}@example.com"]}
    )
    email_id = await api.compose(
        source="workflow_alert",
        **{"from": REP},
        to=[f"nobody.{n}@example.com"],
        subject="Hi",
        text="x",
    )
    state = (await api.email_with(email_id, status="Bounced"))["email"]
    assert state["bounce"]["reason"] == "userunknown"
    assert state["bounce"]["kind"] == "hard"
    assert state["bounce"]["reply_code"] == 550


async def test_a_dsn_arriving_later_for_a_delivered_email_wins_and_the_history_shows_both(
    ready_org: Api, stack: Any
) -> None:
    api, n = ready_org, _uid()
    rcpt = f"later.{n}@example.com"
    await api.put(f"/records/contact-l{n}", {"module": "Contacts", "addresses": [rcpt]})
    email_id = await api.compose(
        source="individual", **{"from": REP}, to=[rcpt], subject="Hi", text="x"
    )
    await api.email_with(email_id, status="Delivered")
    msg = await _sink_message(stack, rcpt)
    return_path = str(msg["X-Sink-Mail-From"])
    assert return_path.startswith("bounce+")
    assert return_path.endswith(f"@{MAIL_DOMAIN}")

    dsn = (
        f"From: MAILER-DAEMON@mx.example.com\r\nTo: {return_path}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nThe mailbox is full.\r\n"
        "--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.com\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.2.2\r\n"
        "Diagnostic-Code: smtp; 552 5.2.2 Mailbox full\r\n"
        "--b1--\r\n"
    ).encode()
    _smtp_send(stack, "", return_path, dsn)

    found = await api.email_with(email_id, status="Bounced")
    assert found["email"]["delivered_at"] is not None
    assert found["email"]["bounce"]["reason"] == "mailboxfull"
    types = [h["type"] for h in found["history"]]
    assert "email_delivered" in types
    assert "email_bounced" in types
    assert all(h["decision"] == "applied" for h in found["history"])


async def test_bcc_dropbox_mail_is_sent_and_an_open_published_for_it_is_a_violation(
    ready_org: Api, stack: Any
) -> None:
    api, n = ready_org, _uid()
    customer = f"dropbox.{n}@example.com"
    await api.put(f"/records/contact-d{n}", {"module": "Contacts", "addresses": [customer]})
    _smtp_send(
        stack, REP, f"dropbox+{stack.org}@{MAIL_DOMAIN}", _message(REP, customer, "Call notes")
    )

    async def captured() -> list[dict[str, Any]]:
        return [e for e in await api.timeline(f"contact-d{n}") if e["status"] == "Sent"]

    (entry,) = await eventually(captured)
    assert entry["source"] == "BCC Dropbox"
    email_id = entry["email_id"]

    await _publish(
        stack,
        EmailOpened(
            event_id=new_id(),
            org_id=stack.org,
            email_id=email_id,
            occurred_at=datetime.now(UTC),
            producer="e2e",
            recipient=customer,
        ),
    )
    found = await api.email_with(email_id, violations=1)
    assert found["email"]["status"] == "Sent"
    (violation,) = [h for h in found["history"] if h["decision"] == "violation"]
    assert violation["type"] == "email_opened"
    assert violation["reason"] == "unreachable_status"


async def test_inbound_mail_from_a_secondary_address_is_received_on_every_record_sharing_it(
    ready_org: Api, stack: Any
) -> None:
    api, n = ready_org, _uid()
    shared = f"shared.{n}@example.net"
    await api.put(
        f"/records/contact-s{n}",
        {"module": "Contacts", "addresses": [f"p.{n}@example.com", shared]},
    )
    await api.put(f"/records/account-s{n}", {"module": "Accounts", "addresses": [shared]})
    await api.put(
        f"/records/lead-s{n}", {"module": "Leads", "addresses": [f"other.{n}@example.com"]}
    )
    _smtp_send(stack, shared, f"in+{stack.org}@{MAIL_DOMAIN}", _message(shared, REP, "A question"))

    async def on_both() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        a, b = await api.timeline(f"contact-s{n}"), await api.timeline(f"account-s{n}")
        return (a, b) if a and b else None

    contact, account = await eventually(on_both)
    assert contact[0]["email_id"] == account[0]["email_id"]
    assert contact[0]["status"] == "Received"
    assert contact[0]["direction"] == "incoming"
    assert contact[0]["source"] == "External"
    assert await api.timeline(f"lead-s{n}") == []


async def test_inbound_mail_from_an_unknown_address_is_received_on_no_record(
    ready_org: Api, stack: Any
) -> None:
    api, n = ready_org, _uid()
    stranger = f"stranger.{n}@unknown.example"
    subject = f"Unsolicited {n}"
    nc = await bus.connect(stack.nats_url, "e2e", reconnect=False)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(f"mail.events.{stack.org}.email_received", ordered_consumer=True)
        _smtp_send(
            stack, stranger, f"in+{stack.org}@{MAIL_DOMAIN}", _message(stranger, REP, subject)
        )

        async def received() -> Any:
            try:
                msg = await sub.next_msg(timeout=1)
            except TimeoutError:
                return None
            event = decode(msg.data)
            return event if getattr(event, "subject", "") == subject else None

        event = await eventually(received)
        await sub.unsubscribe()
    finally:
        await bus.close(nc)
    assert event.records == ()
    found = await api.email_with(event.email_id, status="Received")
    assert found["email"]["records"] == []


async def test_multi_recipient_and_integrated_mailbox_mail_carry_no_tracking_and_never_reach_opened(
    ready_org: Api, stack: Any
) -> None:
    api, n = ready_org, _uid()
    a, b, c = (f"{x}.{n}@example.org" for x in ("multi1", "multi2", "mbox"))
    html = '<html><body><a href="https://example.org/x">x</a></body></html>'
    multi = await api.compose(
        source="workflow_alert", **{"from": REP}, to=[a, b], subject="News", html=html
    )
    mailbox = await api.compose(
        source="individual",
        transport="integrated_mailbox",
        mailbox_user="rep",
        **{"from": REP},
        to=[c],
        subject="Own mailbox",
        html=html,
    )
    await api.email_with(multi, status="Delivered")
    await api.email_with(mailbox, status="Sent")
    for address in (a, b, c):
        pixels, links = _tracking_urls(_html(await _sink_message(stack, address)))
        assert pixels == []
        assert links == []
        assert "https://example.org/x" in _html(await _sink_message(stack, address))


async def test_the_crm_filter_leaves_out_imap_dropbox_and_associated_mail(
    ready_org: Api, stack: Any
) -> None:
    api, n = ready_org, _uid()
    addr = f"filter.{n}@example.com"
    record = f"contact-f{n}"
    await api.put(f"/records/{record}", {"module": "Contacts", "addresses": [addr]})
    crm = await api.compose(
        source="individual", **{"from": REP}, to=[addr], subject="From the CRM", text="x"
    )
    _smtp_send(stack, REP, f"dropbox+{stack.org}@{MAIL_DOMAIN}", _message(REP, addr, "Dropbox"))
    _smtp_send(stack, addr, f"in+{stack.org}@{MAIL_DOMAIN}", _message(addr, REP, "Inbound"))
    await _publish(
        stack,
        EmailCaptured(
            event_id=new_id(),
            org_id=stack.org,
            email_id=new_id(),
            occurred_at=datetime.now(UTC),
            producer="outlook-add-on",
            source=Source.EXTERNAL,
            from_addr=REP,
            to=(addr,),
            subject="Associated from Outlook",
            records=(RecordRef(record_id=record, module=Module.CONTACTS),),
        ),
    )

    async def all_four() -> list[dict[str, Any]] | None:
        items = await api.timeline(record)
        return items if len(items) == 4 else None

    everything = await eventually(all_four)
    assert {e["source"] for e in everything} == {"Individual", "BCC Dropbox", "External"}
    crm_only = await api.timeline(record, "crm")
    assert [e["email_id"] for e in crm_only] == [crm]


async def test_replay_verify_passes_and_audit_shows_each_emails_history(
    ready_org: Api, stack: Any
) -> None:
    api, n = ready_org, _uid()
    addr = f"audit.{n}@example.com"
    await api.put(f"/records/contact-a{n}", {"module": "Contacts", "addresses": [addr]})
    email_id = await api.compose(
        source="individual", **{"from": REP}, to=[addr], subject="Audited", text="x"
    )
    await api.email_with(email_id, status="Delivered")

    # Let the projector catch up with everything published so far, then verify the whole stream.
    await asyncio.sleep(2)
    replay = await asyncio.to_thread(stack.cli, "replay", "--verify", check=False)
    assert replay.returncode == 0, replay.stdout + replay.stderr

    audit = await asyncio.to_thread(stack.cli, "audit", email_id)
    for expected in (email_id, "email_composed", "email_sent", "email_delivered", "applied"):
        assert expected in audit.stdout


async def test_a_mass_email_reaches_each_recipient_alone_tracked_and_counted_per_campaign(
    ready_org: Api, stack: Any
) -> None:
    api, n = ready_org, _uid()
    shared, own = f"shared.{n}@example.com", f"own.{n}@example.org"
    await api.put(f"/records/contact-{n}", {"module": "Contacts", "addresses": [shared]})
    await api.put(f"/records/account-{n}", {"module": "Accounts", "addresses": [shared.upper()]})
    await api.put(f"/records/lead-{n}", {"module": "Leads", "addresses": [own]})
    composed = time.monotonic()
    html = (
        '<html><body><p>Read <a href="https://example.com/spring">the news</a>.</p></body></html>'
    )
    body = {
        "source": "mass_email",
        "from": REP,
        "record_ids": [f"contact-{n}", f"account-{n}", f"lead-{n}"],
        "subject": f"Spring {n}",
        "html": html,
    }
    campaign = await api.campaign(**body)
    emails = {e["recipient"].lower(): e for e in campaign["emails"]}
    assert set(emails) == {shared, own}
    assert sorted(emails[shared]["record_ids"]) == [f"account-{n}", f"contact-{n}"]
    assert emails[own]["record_ids"] == [f"lead-{n}"]

    urls = {}
    for address in (shared, own):
        await api.email_with(emails[address]["email_id"], status="Delivered")
        (msg,) = _sink_messages(stack, address)
        assert [a.lower() for a in msg.get_all("To", [])] == [address]
        assert msg["Cc"] is None
        pixels, links = _tracking_urls(_html(msg))
        assert len(pixels) == 1
        assert len(links) == 1
        urls[address] = (pixels[0], links[0])

    async with httpx.AsyncClient(headers={"User-Agent": BROWSER}, timeout=30) as browser:
        assert (await browser.get(urls[shared][0])).status_code == 200
        await asyncio.sleep(max(0.0, 6.0 - (time.monotonic() - composed)))
        click = await browser.get(urls[own][1], follow_redirects=False)
        assert click.status_code == 302
        assert click.headers["location"] == "https://example.com/spring"

    await api.email_with(
        emails[shared]["email_id"], status="Opened", campaign_id=campaign["campaign_id"]
    )
    await api.email_with(emails[own]["email_id"], status="Clicked")
    for record in (f"contact-{n}", f"account-{n}"):
        timeline = await api.timeline(record)
        assert [(e["email_id"], e["status"], e["to"]) for e in timeline] == [
            (emails[shared]["email_id"], "Opened", [shared])
        ]

    async def counted() -> dict[str, Any] | None:
        counts = await api.campaign_counts(campaign["campaign_id"])
        if counts is None or counts["clicked"]["human"] != 1:
            return None
        return counts if counts["opened"]["human"] == 2 else None

    counts = await eventually(counted)
    assert counts["emails"] == 2
    assert counts["sent"] == 2
    assert counts["delivered"] == 2
    assert counts["bounced"]["total"] == 0
    assert counts["rejected"]["total"] == 0
