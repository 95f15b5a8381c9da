"""The SMTP handlers on in-memory ports: who is taken at RCPT, what a message publishes."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from mailfold.bounces import ParseFailed
from mailfold.bounces import parser as bounce_parser
from mailfold.events import (
    EmailBounced,
    EmailCaptured,
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
from mailfold.ingest.adapters.memory import (
    MemoryContentStore,
    MemoryDirectory,
    MemoryIdempotency,
    MemoryPublisher,
    MemoryVerpRecords,
    PublishFailed,
)
from mailfold.ingest.adapters.usage import MemoryAttachmentUsage
from mailfold.ingest.domain import replies
from mailfold.ingest.service_layer.mail import BounceOutcome, MailIngress
from mailfold.ingest.service_layer.ports import Ports
from mailfold.runtime.directory import OrgSettings, RecordEntry

ORG = "acme"
KEYS = Keyring.parse("k1:unit-test-key-0123456789")
VERP_RECORDS = MemoryVerpRecords()


@pytest.fixture
def directory() -> MemoryDirectory:
    return MemoryDirectory([ORG])


@pytest.fixture
def publisher() -> MemoryPublisher:
    return MemoryPublisher()


@pytest.fixture
def content() -> MemoryContentStore:
    return MemoryContentStore()


@pytest.fixture
def mail(
    directory: MemoryDirectory, publisher: MemoryPublisher, content: MemoryContentStore
) -> MailIngress:
    ports = Ports(
        publisher=publisher,
        content=content,
        directory=directory,
        idempotency=MemoryIdempotency(),
        usage=MemoryAttachmentUsage(),
    )
    return MailIngress(ports, KEYS, VERP_RECORDS)


def message(sender: str = "bob@x.example", to: str = "rep@acme.example", **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = "Hello"
    msg["Message-ID"] = f"<{new_id()}@x.example>"
    msg["Date"] = "Tue, 02 Jan 2024 03:04:05 +0000"
    for name, value in headers.items():
        msg[name] = value
    msg.set_content("hello")
    return msg.as_bytes()


def dsn(recipient: str) -> bytes:
    return (
        "From: MAILER-DAEMON@mx.x.example\r\n"
        "To: bounce@acme.example\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Date: Tue, 02 Jan 2024 03:04:05 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nSorry.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.x.example\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        "Action: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n"
        "--b--\r\n"
    ).encode()


def verp(email_id: str, recipient: str = "bob@x.example", org: str = ORG) -> str:
    """A short VERP address, its record written as the sender writes it before sending."""
    record = VerpRecord(org_id=org, email_id=email_id, recipients=("first@x.example", recipient))
    VERP_RECORDS.add(record)
    claims = TrackingClaims(TokenKind.BOUNCE, org, email_id, recipient)
    return f"bounce+{KEYS.sign_verp(claims, record.index_of(recipient))}@bounces.example"


def long_verp(email_id: str, recipient: str = "bob@x.example", org: str = ORG) -> str:
    """The long VERP address mail sent before the short tokens carried."""
    token = KEYS.sign_long_verp(TrackingClaims(TokenKind.BOUNCE, org, email_id, recipient))
    return f"bounce+{token}@bounces.example"


async def test_unknown_mailboxes_and_orgs_are_refused_at_rcpt(mail: MailIngress) -> None:
    assert (
        await mail.check_recipient("postmaster@x.example", "a@b.example", [])
        is replies.NO_SUCH_MAILBOX
    )
    assert (
        await mail.check_recipient("in+ghost@x.example", "a@b.example", [])
        is replies.NO_SUCH_MAILBOX
    )
    assert (
        await mail.check_recipient("dropbox+ghost@x.example", "a@b.example", [])
        is replies.NO_SUCH_MAILBOX
    )
    assert (
        await mail.check_recipient("in+acme@x.example", "a@b.example", []) is replies.RECIPIENT_OK
    )


async def test_a_second_destination_in_one_transaction_is_deferred(mail: MailIngress) -> None:
    taken = ["in+acme@x.example"]
    assert (
        await mail.check_recipient("in+acme+bob@x.example", "a@b.example", taken)
        is replies.RECIPIENT_OK
    )
    assert (
        await mail.check_recipient("dropbox+acme@x.example", "a@b.example", taken)
        is replies.ONE_DESTINATION
    )


async def test_blacklisted_envelope_senders_are_refused_at_rcpt(
    mail: MailIngress, directory: MemoryDirectory
) -> None:
    directory.settings[ORG] = OrgSettings(blacklisted_domains=("spam.example",))
    reply = await mail.check_recipient("in+acme@x.example", "x@mx.spam.example", [])
    assert reply is replies.SENDER_BLACKLISTED
    assert str(reply).startswith("550 5.7.1")


async def test_any_bounce_address_is_taken_at_rcpt(mail: MailIngress) -> None:
    assert await mail.check_recipient("bounce+garbage@x.example", "<>", []) is replies.RECIPIENT_OK


async def test_inbound_mail_links_every_record_of_the_sender(
    mail: MailIngress, directory: MemoryDirectory, publisher: MemoryPublisher
) -> None:
    for rid in ("c1", "c2"):
        await directory.put_record(
            ORG, RecordEntry(record_id=rid, module=Module.CONTACTS, addresses=("bob@x.example",))
        )
    delivery = await mail.deliver("bob@x.example", ["in+acme+alice@x.example"], message())
    assert delivery.reply is replies.ACCEPTED
    (event,) = publisher.events
    assert isinstance(event, EmailReceived)
    assert event.source is Source.EXTERNAL
    assert event.transport is Transport.INTEGRATED_MAILBOX
    assert event.mailbox_user == "alice"
    assert {r.record_id for r in event.records} == {"c1", "c2"}
    assert event.raw == delivery.raw


async def test_unmatched_inbound_mail_is_received_without_records(
    mail: MailIngress, publisher: MemoryPublisher
) -> None:
    await mail.deliver("x@y.example", ["in+acme@x.example"], message("x@y.example"))
    (event,) = publisher.events
    assert isinstance(event, EmailReceived)
    assert event.records == ()


async def test_a_blacklisted_from_header_is_refused_at_data_and_nothing_is_kept(
    mail: MailIngress,
    directory: MemoryDirectory,
    publisher: MemoryPublisher,
    content: MemoryContentStore,
) -> None:
    directory.settings[ORG] = OrgSettings(blacklisted_domains=("spam.example",))
    delivery = await mail.deliver(
        "ok@ham.example", ["in+acme@x.example"], message("x@spam.example")
    )
    assert delivery.reply is replies.SENDER_BLACKLISTED
    assert publisher.events == []
    assert content.objects == {}


async def test_redelivered_mail_publishes_the_same_ids(
    mail: MailIngress, publisher: MemoryPublisher
) -> None:
    raw = message()
    first = await mail.deliver("bob@x.example", ["in+acme@x.example"], raw)
    second = await mail.deliver("bob@x.example", ["in+acme@x.example"], raw)
    assert [e.event_id for e in first.events] == [e.event_id for e in second.events]
    assert len(publisher.events) == 1


async def test_dropbox_copies_from_approved_senders_are_captured_and_sent(
    mail: MailIngress, directory: MemoryDirectory, publisher: MemoryPublisher
) -> None:
    directory.settings[ORG] = OrgSettings(dropbox_senders=("rep@acme.example",))
    await directory.put_record(
        ORG, RecordEntry(record_id="l1", module=Module.LEADS, addresses=("c@x.example",))
    )
    await directory.put_record(
        ORG, RecordEntry(record_id="l2", module=Module.LEADS, addresses=("d@x.example",))
    )
    raw = message("Rep <REP@acme.example>", "c@x.example", Cc="d@x.example", Bcc="e@x.example")
    delivery = await mail.deliver("rep@acme.example", ["dropbox+acme@x.example"], raw)
    assert delivery.reply is replies.ACCEPTED
    captured, sent = publisher.events
    assert isinstance(captured, EmailCaptured)
    assert isinstance(sent, EmailSent)
    assert captured.source is Source.BCC_DROPBOX
    assert captured.transport is Transport.INTEGRATED_MAILBOX
    assert {r.record_id for r in captured.records} == {"l1", "l2"}
    assert sent.email_id == captured.email_id
    assert sent.recipients == ("c@x.example", "d@x.example", "e@x.example")


async def test_dropbox_copies_from_strangers_are_refused(
    mail: MailIngress, directory: MemoryDirectory, publisher: MemoryPublisher
) -> None:
    directory.settings[ORG] = OrgSettings(dropbox_senders=("rep@acme.example",))
    delivery = await mail.deliver(
        "rep@acme.example", ["dropbox+acme@x.example"], message("eve@acme.example")
    )
    assert delivery.reply is replies.SENDER_NOT_APPROVED
    assert publisher.events == []


async def test_a_bounce_with_a_valid_token_is_published_for_the_tokens_email(
    mail: MailIngress, publisher: MemoryPublisher
) -> None:
    email_id = new_id()
    delivery = await mail.deliver("<>", [verp(email_id)], dsn("bob@x.example"))
    assert delivery.bounces == (BounceOutcome.PUBLISHED,)
    (event,) = publisher.events
    assert isinstance(event, EmailBounced)
    assert (event.org_id, event.email_id, event.status) == (ORG, email_id, "5.1.1")
    assert event.report == delivery.raw


async def test_a_bounce_to_an_old_long_token_is_still_published(
    mail: MailIngress, publisher: MemoryPublisher
) -> None:
    email_id = new_id()
    address = long_verp(email_id)
    assert len(address.split("@")[0]) > 64
    delivery = await mail.deliver("<>", [address.upper()], dsn("bob@x.example"))
    assert delivery.bounces == (BounceOutcome.PUBLISHED,)
    (event,) = publisher.events
    assert isinstance(event, EmailBounced)
    assert (event.org_id, event.email_id, event.recipient) == (ORG, email_id, "bob@x.example")


async def test_a_short_token_whose_record_is_unknown_is_kept_and_counted_as_invalid(
    mail: MailIngress, publisher: MemoryPublisher
) -> None:
    claims = TrackingClaims(TokenKind.BOUNCE, ORG, new_id(), "bob@x.example")
    address = f"bounce+{KEYS.sign_verp(claims, 0)}@bounces.example"
    delivery = await mail.deliver("<>", [address], dsn("bob@x.example"))
    assert delivery.bounces == (BounceOutcome.INVALID_TOKEN,)
    assert publisher.events == []


async def test_a_parser_failure_is_reported_and_the_message_kept(
    directory: MemoryDirectory,
    publisher: MemoryPublisher,
    content: MemoryContentStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(raw: bytes, depth: int = 0) -> object:
        raise RuntimeError("a bug in a reader")

    monkeypatch.setattr(bounce_parser, "_parse", broken)
    failures: list[ParseFailed] = []
    ports = Ports(
        publisher=publisher,
        content=content,
        directory=directory,
        idempotency=MemoryIdempotency(),
        usage=MemoryAttachmentUsage(),
    )
    mail = MailIngress(ports, KEYS, VERP_RECORDS, on_parse_error=failures.append)
    delivery = await mail.deliver("<>", [verp(new_id())], dsn("bob@x.example"))
    assert delivery.bounces == (BounceOutcome.UNPARSED,)
    assert publisher.events == []
    assert delivery.raw is not None
    assert delivery.raw.sha256 in content.objects
    (failure,) = failures
    assert failure.digest == delivery.raw.sha256
    assert isinstance(failure.error, RuntimeError)


async def test_a_bounce_with_a_bad_token_is_kept_and_counted_but_not_published(
    mail: MailIngress, publisher: MemoryPublisher, content: MemoryContentStore
) -> None:
    forged = verp(new_id()).replace("bounce+", "bounce+x")
    delivery = await mail.deliver("<>", [forged], dsn("bob@x.example"))
    assert delivery.reply is replies.ACCEPTED
    assert delivery.bounces == (BounceOutcome.INVALID_TOKEN,)
    assert publisher.events == []
    assert delivery.raw is not None
    assert delivery.raw.sha256 in content.objects


async def test_an_unparseable_bounce_is_kept_and_counted(
    mail: MailIngress, publisher: MemoryPublisher, content: MemoryContentStore
) -> None:
    delivery = await mail.deliver("<>", [verp(new_id())], b"\x00\xff not a report")
    assert delivery.reply is replies.ACCEPTED
    assert delivery.bounces == (BounceOutcome.UNPARSED,)
    assert publisher.events == []
    assert len(content.objects) == 1


async def test_a_publish_failure_propagates_so_the_sender_retries(
    mail: MailIngress, publisher: MemoryPublisher
) -> None:
    publisher.down = True
    with pytest.raises(PublishFailed):
        await mail.deliver("bob@x.example", ["in+acme@x.example"], message())


async def test_a_failure_to_keep_the_message_propagates_and_the_retry_completes_it(
    mail: MailIngress, publisher: MemoryPublisher, content: MemoryContentStore
) -> None:
    raw = message()
    content.down = True
    with pytest.raises(PublishFailed):
        await mail.deliver("bob@x.example", ["in+acme@x.example"], raw)
    assert content.objects == {}
    content.down = False
    delivery = await mail.deliver("bob@x.example", ["in+acme@x.example"], raw)
    assert delivery.reply is replies.ACCEPTED
    assert delivery.raw is not None
    assert content.objects[delivery.raw.sha256] == raw
    # the event the first attempt may have published carries the same id: one event in all
    assert [e.event_id for e in publisher.events] == [delivery.events[0].event_id]
