"""The ingest SMTP server with real SMTP clients (smtplib, aiosmtplib), against real NATS."""

from __future__ import annotations

import asyncio
import hashlib
import smtplib
from collections.abc import AsyncIterator, Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import httpx
import pytest
from nats.js import JetStreamContext

from mailfold.bounces import parse
from mailfold.events import (
    AnyEvent,
    BounceKind,
    EmailBounced,
    EmailCaptured,
    EmailComplained,
    EmailDeferred,
    EmailDelivered,
    EmailReceived,
    EmailSent,
    Keyring,
    Module,
    Source,
    TokenKind,
    TrackingClaims,
    Transport,
    VerpRecord,
    new_id,
)
from mailfold.ingest.bootstrap import IngestService, Settings, start
from mailfold.runtime import bus
from mailfold.runtime.content import get_content, has_content
from mailfold.runtime.directory import save_verp_record

ReadEvents = Callable[[str], Awaitable[list[AnyEvent]]]
ReadMetric = Callable[[str], Awaitable[float]]
BOUNCES = Path(__file__).parents[2] / "fixtures" / "bounces"
HOST = "127.0.0.1"


@pytest.fixture(autouse=True)
def _org_exists(org_token: str) -> None:
    """Every test here mails the test's org, which must exist."""


def crlf(raw: bytes) -> bytes:
    """Line endings as SMTP carries them, and a final one."""
    text = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return text if text.endswith(b"\r\n") else text + b"\r\n"


def mail(
    sender: str = "Bob <bob@x.example>",
    to: str = "rep@acme.example",
    subject: str = "Hello",
    **headers: str,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{new_id()}@x.example>"
    msg["Date"] = "Tue, 02 Jan 2024 03:04:05 +0000"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Hello there.\n")
    return crlf(msg.as_bytes())


def dsn(
    recipient: str,
    *,
    action: str = "failed",
    status: str = "5.1.1",
    code: str = "550 5.1.1 <{r}>: Recipient address rejected: User unknown",
) -> bytes:
    diagnostic = code.format(r=recipient)
    return crlf(
        (
            "From: MAILER-DAEMON@mx.x.example (Mail Delivery System)\n"
            "To: bounce@bounces.acme.example\n"
            "Subject: Undelivered Mail Returned to Sender\n"
            f"Message-ID: <{new_id()}@mx.x.example>\n"
            "Date: Tue, 02 Jan 2024 03:04:05 +0000\n"
            "MIME-Version: 1.0\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="BOUNDARY"\n'
            "\n"
            "--BOUNDARY\n"
            "Content-Type: text/plain\n\n"
            "I'm sorry to have to inform you that your message could not be delivered.\n\n"
            "--BOUNDARY\n"
            "Content-Type: message/delivery-status\n\n"
            "Reporting-MTA: dns; mx.x.example\n"
            "Arrival-Date: Tue, 02 Jan 2024 03:04:00 +0000\n\n"
            f"Final-Recipient: rfc822; {recipient}\n"
            f"Original-Recipient: rfc822; {recipient}\n"
            f"Action: {action}\n"
            f"Status: {status}\n"
            "Remote-MTA: dns; mx2.x.example\n"
            f"Diagnostic-Code: smtp; {diagnostic}\n\n"
            "--BOUNDARY\n"
            "Content-Type: text/rfc822-headers\n\n"
            "From: rep@acme.example\n"
            f"To: {recipient}\n"
            "Subject: Offer\n\n"
            "--BOUNDARY--\n"
        ).encode()
    )


async def verp(
    js: JetStreamContext,
    keyring: Keyring,
    org_id: str,
    email_id: str,
    recipient: str = "bob@x.example",
) -> str:
    """A short VERP address, its record written to NATS KV as the sender writes it."""
    record = VerpRecord(org_id=org_id, email_id=email_id, recipients=("amy@x.example", recipient))
    await save_verp_record(await bus.kv(js, bus.BUCKET_SENDER), record)
    claims = TrackingClaims(TokenKind.BOUNCE, org_id, email_id, recipient)
    return f"bounce+{keyring.sign_verp(claims, 1)}@bounces.acme.example"


async def send(service: IngestService, raw: bytes, sender: str, *recipients: str) -> None:
    """Send with aiosmtplib; the sender "" is the null reverse path `<>` bounces come from."""
    async with aiosmtplib.SMTP(hostname=HOST, port=service.smtp_port) as client:
        await client.sendmail(sender, list(recipients), raw)


def send_with_smtplib(port: int, raw: bytes, sender: str, *recipients: str) -> None:
    with smtplib.SMTP(HOST, port, timeout=30) as client:
        client.sendmail(sender, list(recipients), raw)


async def put_json(service: IngestService, token: str, path: str, body: object) -> None:
    async with httpx.AsyncClient(
        base_url=f"http://{HOST}:{service.http_port}", headers={"Authorization": f"Bearer {token}"}
    ) as client:
        response = await client.put(path, json=body)
        assert response.status_code == 200, response.text


async def stored(js: JetStreamContext, sha256: str) -> bytes:
    return await get_content(await bus.objects(js), sha256)


# --- inbound -------------------------------------------------------------------------------------


async def test_inbound_mail_reaches_both_contacts_sharing_the_senders_address(
    ingest: IngestService, org_id: str, org_token: str, events: ReadEvents, js: JetStreamContext
) -> None:
    for rid in ("c1", "c2"):
        await put_json(
            ingest,
            org_token,
            f"/v1/orgs/{org_id}/records/{rid}",
            {"module": "Contacts", "addresses": ["other@x.example", "BOB@x.example"]},
        )
    raw = mail(cc="Rep Two <rep2@acme.example>", subject="Question about the offer")
    await send(ingest, raw, "bob@x.example", f"in+{org_id}+alice@in.acme.example")
    (event,) = await events(org_id)
    assert isinstance(event, EmailReceived)
    assert event.source is Source.EXTERNAL
    assert event.transport is Transport.INTEGRATED_MAILBOX
    assert event.from_addr == "bob@x.example"
    assert event.to == ("rep@acme.example",)
    assert event.cc == ("rep2@acme.example",)
    assert event.subject == "Question about the offer"
    assert event.mailbox_user == "alice"
    assert {(r.module, r.record_id) for r in event.records} == {
        (Module.CONTACTS, "c1"),
        (Module.CONTACTS, "c2"),
    }
    assert event.raw is not None
    assert await stored(js, event.raw.sha256) == raw


async def test_unmatched_inbound_mail_is_received_without_records(
    ingest: IngestService, org_id: str, events: ReadEvents
) -> None:
    raw = mail(sender="stranger@y.example")
    await asyncio.to_thread(
        send_with_smtplib, ingest.smtp_port, raw, "stranger@y.example", f"in+{org_id}@in.example"
    )
    (event,) = await events(org_id)
    assert isinstance(event, EmailReceived)
    assert event.records == ()
    assert event.mailbox_user is None


async def test_malformed_mime_is_accepted_kept_and_received(
    ingest: IngestService, org_id: str, events: ReadEvents, js: JetStreamContext
) -> None:
    raw = crlf(
        b"From: =?utf-8?q?broken <bob@x.example\n"
        b"To: \xff\xfe@@@, rep@acme.example\n"
        b"Subject: =?bogus-charset?b?!!!?=\n"
        b"Date: not a date\n"
        b"a header line without a colon\n"
        b"MIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="never-closed"\n\n'
        b"--never-closed\n"
        b"Content-Type: text/plain; charset=unknown-8bit\n"
        b"Content-Transfer-Encoding: base64\n\n"
        b"this is not base64 !!! \x00\x01\x02\n"
        b"--wrong-boundary\n"
    )
    await asyncio.to_thread(
        send_with_smtplib, ingest.smtp_port, raw, "bob@x.example", f"in+{org_id}@in.example"
    )
    (event,) = await events(org_id)
    assert isinstance(event, EmailReceived)
    assert event.to == ("rep@acme.example",)
    assert event.raw is not None
    assert await stored(js, event.raw.sha256) == raw


async def test_blacklisted_envelope_senders_are_refused_at_rcpt_and_nothing_is_published(
    ingest: IngestService, org_id: str, org_token: str, events: ReadEvents
) -> None:
    await put_json(
        ingest, org_token, f"/v1/orgs/{org_id}/settings", {"blacklisted_domains": ["spam.example"]}
    )
    recipient = f"in+{org_id}@in.example"
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await asyncio.to_thread(
            send_with_smtplib,
            ingest.smtp_port,
            mail(sender="x@mx.spam.example"),
            "x@mx.spam.example",
            recipient,
        )
    code, text = refused.value.recipients[recipient]
    assert (code, text[:5]) == (550, b"5.7.1")
    assert await events(org_id) == []


async def test_blacklisted_from_headers_are_refused_at_data_and_nothing_is_kept(
    ingest: IngestService, org_id: str, org_token: str, events: ReadEvents, js: JetStreamContext
) -> None:
    await put_json(
        ingest, org_token, f"/v1/orgs/{org_id}/settings", {"blacklisted_domains": ["spam.example"]}
    )
    raw = mail(sender="Spammer <offers@news.spam.example>")
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await send(ingest, raw, "relay@forwarder.example", f"in+{org_id}@in.example")
    assert refused.value.code == 550
    assert refused.value.message.startswith("5.7.1")
    assert await events(org_id) == []
    assert not await has_content(await bus.objects(js), hashlib.sha256(raw).hexdigest())


# --- BCC dropbox ---------------------------------------------------------------------------------


async def test_a_dropbox_copy_from_an_approved_sender_is_captured_and_sent(
    ingest: IngestService, org_id: str, org_token: str, events: ReadEvents
) -> None:
    await put_json(
        ingest, org_token, f"/v1/orgs/{org_id}/settings", {"dropbox_senders": ["Rep@Acme.example"]}
    )
    await put_json(
        ingest,
        org_token,
        f"/v1/orgs/{org_id}/records/l1",
        {"module": "Leads", "addresses": ["lead@x.example"]},
    )
    await put_json(
        ingest,
        org_token,
        f"/v1/orgs/{org_id}/records/d1",
        {"module": "Deals", "addresses": ["cfo@y.example"]},
    )
    await put_json(
        ingest,
        org_token,
        f"/v1/orgs/{org_id}/records/l9",
        {"module": "Leads", "addresses": ["hidden@z.example"]},
    )
    raw = mail(
        sender="Rep <rep@acme.example>",
        to="lead@x.example",
        cc="cfo@y.example",
        bcc="hidden@z.example",
    )
    await asyncio.to_thread(
        send_with_smtplib, ingest.smtp_port, raw, "rep@acme.example", f"dropbox+{org_id}@in.example"
    )
    captured, sent = await events(org_id)
    assert isinstance(captured, EmailCaptured)
    assert isinstance(sent, EmailSent)
    assert captured.source is Source.BCC_DROPBOX
    assert captured.transport is Transport.INTEGRATED_MAILBOX
    assert captured.from_addr == "rep@acme.example"
    # linked by To and Cc only
    assert {r.record_id for r in captured.records} == {"l1", "d1"}
    assert sent.email_id == captured.email_id
    assert sent.transport is Transport.INTEGRATED_MAILBOX
    assert set(sent.recipients) == {"lead@x.example", "cfo@y.example", "hidden@z.example"}


async def test_a_dropbox_copy_from_an_unapproved_sender_is_refused_550_571(
    ingest: IngestService, org_id: str, org_token: str, events: ReadEvents
) -> None:
    await put_json(
        ingest, org_token, f"/v1/orgs/{org_id}/settings", {"dropbox_senders": ["rep@acme.example"]}
    )
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        # the envelope names an approved sender; the From: header, which decides, does not
        await send(
            ingest,
            mail(sender="intruder@acme.example"),
            "rep@acme.example",
            f"dropbox+{org_id}@in.example",
        )
    assert refused.value.code == 550
    assert refused.value.message.startswith("5.7.1")
    assert await events(org_id) == []


# --- addresses and limits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "local", ["postmaster", "sales", "in+{org}x", "dropbox+nosuchorg", "in+bad!org"]
)
async def test_unknown_mailboxes_and_orgs_are_550_511(
    ingest: IngestService, org_id: str, local: str
) -> None:
    async with aiosmtplib.SMTP(hostname=HOST, port=ingest.smtp_port) as client:
        await client.mail("bob@x.example")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await client.rcpt(local.format(org=org_id) + "@in.example")
    assert refused.value.code == 550
    assert refused.value.message.startswith("5.1.1")


async def test_one_transaction_carries_mail_for_one_destination(
    ingest: IngestService, org_id: str
) -> None:
    async with aiosmtplib.SMTP(hostname=HOST, port=ingest.smtp_port) as client:
        await client.mail("bob@x.example")
        await client.rcpt(f"in+{org_id}@in.example")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as deferred:
            await client.rcpt(f"dropbox+{org_id}@in.example")
    assert deferred.value.code == 452
    assert deferred.value.message.startswith("4.5.3")


async def test_more_than_a_hundred_recipients_are_452_453(
    ingest: IngestService, org_id: str
) -> None:
    async with aiosmtplib.SMTP(hostname=HOST, port=ingest.smtp_port) as client:
        await client.mail("bob@x.example")
        for i in range(100):
            await client.rcpt(f"in+{org_id}+u{i}@in.example")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as deferred:
            await client.rcpt(f"in+{org_id}+u100@in.example")
        await client.rset()
    assert deferred.value.code == 452
    assert deferred.value.message.startswith("4.5.3")


@pytest.fixture
async def small_ingest(
    nats_url: str, make_settings: Callable[..., Settings], js: JetStreamContext
) -> AsyncIterator[IngestService]:
    service = await start(make_settings(nats_url, smtp_max_bytes=20_000))
    yield service
    await service.stop()


async def test_oversize_messages_are_552_534_whether_declared_or_not(
    small_ingest: IngestService, org_id: str, org_token: str, events: ReadEvents
) -> None:
    recipient = f"in+{org_id}@in.example"
    big = mail(subject="big") + (b"y" * 900 + b"\r\n") * 40

    def declared() -> tuple[int, bytes]:
        with smtplib.SMTP(HOST, small_ingest.smtp_port, timeout=30) as client:
            client.ehlo()
            return client.mail("bob@x.example", [f"SIZE={len(big)}"])

    code, text = await asyncio.to_thread(declared)
    assert (code, text[:5]) == (552, b"5.3.4")
    async with aiosmtplib.SMTP(hostname=HOST, port=small_ingest.smtp_port) as client:
        await client.mail("bob@x.example")
        await client.rcpt(recipient)
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await client.data(big)
        assert refused.value.code == 552
        assert refused.value.message.startswith("5.3.4")
        # the session goes on: a message within the limit is taken
        await client.sendmail("bob@x.example", [recipient], mail(subject="small"))
    (event,) = await events(org_id)
    assert isinstance(event, EmailReceived)
    assert event.subject == "small"


async def test_lines_over_the_rfc_limit_are_500_552_and_the_server_stays_up(
    ingest: IngestService, org_id: str, events: ReadEvents
) -> None:
    recipient = f"in+{org_id}@in.example"
    async with aiosmtplib.SMTP(hostname=HOST, port=ingest.smtp_port) as client:
        await client.mail("bob@x.example")
        await client.rcpt(recipient)
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await client.data(mail() + b"z" * 5000 + b"\r\n")
        assert refused.value.code == 500
        assert refused.value.message.startswith("5.5.2")
    await send(ingest, mail(subject="after"), "bob@x.example", recipient)
    (event,) = await events(org_id)
    assert isinstance(event, EmailReceived)
    assert event.subject == "after"


# --- bounces and feedback ------------------------------------------------------------------------


async def test_a_bounce_with_a_valid_verp_token_publishes_email_bounced(
    ingest: IngestService, org_id: str, keyring: Keyring, events: ReadEvents, js: JetStreamContext
) -> None:
    email_id = new_id()
    raw = dsn("bob@x.example")
    await send(ingest, raw, "", await verp(js, keyring, org_id, email_id))
    (event,) = await events(org_id)
    assert isinstance(event, EmailBounced)
    assert event.email_id == email_id
    assert event.recipient == "bob@x.example"
    assert event.kind is BounceKind.HARD
    assert event.status == "5.1.1"
    assert event.reply_code == 550
    assert event.reason == "userunknown"
    assert event.diagnostic is not None
    assert "User unknown" in event.diagnostic
    assert event.reporting_mta == "mx.x.example"
    assert event.report is not None
    assert await stored(js, event.report.sha256) == raw


async def test_a_corpus_bounce_with_its_recipient_rewritten_is_parsed_into_the_event(
    ingest: IngestService, org_id: str, keyring: Keyring, events: ReadEvents, js: JetStreamContext
) -> None:
    original = (BOUNCES / "lhost-exim-01.eml").read_bytes()
    raw = crlf(original.replace(b"kijitora@example.ed.jp", b"carol@x.example"))
    (expected,) = parse(raw).recipients
    email_id = new_id()
    await asyncio.to_thread(
        send_with_smtplib,
        ingest.smtp_port,
        raw,
        "<>",
        await verp(js, keyring, org_id, email_id, "carol@x.example"),
    )
    (event,) = await events(org_id)
    assert isinstance(event, EmailBounced)
    assert event.recipient == "carol@x.example"
    assert (event.status, event.reply_code, event.reason) == ("5.7.0", 550, "blocked")
    assert event.kind.value == expected.kind
    assert event.diagnostic == expected.diagnostic


async def test_delay_and_success_reports_become_deferred_and_delivered(
    ingest: IngestService, org_id: str, keyring: Keyring, events: ReadEvents, js: JetStreamContext
) -> None:
    email_id = new_id()
    delayed = dsn("bob@x.example", action="delayed", status="4.2.2", code="452 4.2.2 Mailbox full")
    delivered = dsn("bob@x.example", action="delivered", status="2.0.0", code="250 2.0.0 OK")
    await send(ingest, delayed, "", await verp(js, keyring, org_id, email_id))
    await send(ingest, delivered, "", await verp(js, keyring, org_id, email_id))
    deferred, done = await events(org_id)
    assert isinstance(deferred, EmailDeferred)
    assert (deferred.status, deferred.reply_code) == ("4.2.2", 452)
    assert isinstance(done, EmailDelivered)
    assert done.recipient == "bob@x.example"
    assert {deferred.email_id, done.email_id} == {email_id}


async def test_an_arf_report_becomes_email_complained_for_the_tokens_recipient(
    ingest: IngestService, org_id: str, keyring: Keyring, events: ReadEvents, js: JetStreamContext
) -> None:
    email_id = new_id()
    raw = crlf((BOUNCES / "arf-01.eml").read_bytes())
    await send(ingest, raw, "", await verp(js, keyring, org_id, email_id, "dave@x.example"))
    (event,) = await events(org_id)
    assert isinstance(event, EmailComplained)
    assert event.email_id == email_id
    assert event.recipient == "dave@x.example"
    assert event.feedback_type == "abuse"
    assert event.report is not None


async def test_a_dsn_to_an_old_long_token_still_bounces_its_email(
    ingest: IngestService, org_id: str, keyring: Keyring, events: ReadEvents
) -> None:
    email_id = new_id()
    claims = TrackingClaims(TokenKind.BOUNCE, org_id, email_id, "bob@x.example")
    address = f"bounce+{keyring.sign_long_verp(claims)}@bounces.acme.example"
    assert len(address.split("@")[0]) > 64
    await asyncio.to_thread(
        send_with_smtplib, ingest.smtp_port, dsn("bob@x.example"), "<>", address.upper()
    )
    (event,) = await events(org_id)
    assert isinstance(event, EmailBounced)
    assert (event.email_id, event.recipient, event.reason) == (
        email_id,
        "bob@x.example",
        "userunknown",
    )


async def test_a_redelivered_report_is_published_once(
    ingest: IngestService, org_id: str, keyring: Keyring, events: ReadEvents, js: JetStreamContext
) -> None:
    raw = dsn("bob@x.example")
    address = await verp(js, keyring, org_id, new_id())
    await send(ingest, raw, "", address)
    await asyncio.to_thread(send_with_smtplib, ingest.smtp_port, raw, "<>", address)
    assert len(await events(org_id)) == 1


async def test_a_bounce_with_a_forged_token_is_taken_kept_and_counted_but_not_published(
    ingest: IngestService, org_id: str, events: ReadEvents, js: JetStreamContext, metric: ReadMetric
) -> None:
    forger = Keyring.parse("it1:a-different-secret-0123456789")
    sample = 'mailfold_ingest_bounce_reports_total{outcome="invalid_token"}'
    before = await metric(sample)
    raw = dsn("bob@x.example")
    await send(ingest, raw, "", await verp(js, forger, org_id, new_id()))
    await send(ingest, dsn("bob@x.example"), "", "bounce+not-even-a-token@bounces.acme.example")
    assert await metric(sample) == before + 2
    assert await events(org_id) == []
    assert await has_content(await bus.objects(js), hashlib.sha256(raw).hexdigest())


async def test_an_unparseable_bounce_is_taken_kept_and_counted(
    ingest: IngestService,
    org_id: str,
    keyring: Keyring,
    events: ReadEvents,
    js: JetStreamContext,
    metric: ReadMetric,
) -> None:
    sample = 'mailfold_ingest_bounce_reports_total{outcome="unparsed"}'
    before = await metric(sample)
    raw = mail(subject="Out of office", sender="bob@x.example")
    await send(ingest, raw, "bob@x.example", await verp(js, keyring, org_id, new_id()))
    assert await metric(sample) == before + 1
    assert await events(org_id) == []
    assert await has_content(await bus.objects(js), hashlib.sha256(raw).hexdigest())
