"""Decisions and events for mail arriving by SMTP: inbound mail and BCC dropbox copies."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from datetime import datetime
from typing import Final

from mailfold.events import (
    ContentRef,
    EmailCaptured,
    EmailReceived,
    EmailSent,
    RecordRef,
    Source,
    Transport,
)
from mailfold.events.addresses import domain_listed, domain_of, is_address
from mailfold.events.captures import captured_and_sent
from mailfold.events.headers import MessageSummary
from mailfold.events.ids import derived_id
from mailfold.ingest.domain.replies import SENDER_BLACKLISTED, SENDER_NOT_APPROVED, Reply
from mailfold.runtime.directory import OrgSettings

PRODUCER: Final = "ingest"
NULL_SENDER: Final = "<>"


def envelope_sender(mail_from: str | None) -> str:
    """The envelope sender as an address, "" for the null sender `<>` or anything unusable."""
    if not mail_from or mail_from == NULL_SENDER:
        return ""
    return mail_from if is_address(mail_from) else ""


def sender_of(summary: MessageSummary, mail_from: str | None) -> str:
    """Who sent a message: the From: header, else the envelope sender."""
    return summary.from_addr or envelope_sender(mail_from)


def blacklisted(settings: OrgSettings, *addresses: str) -> Reply | None:
    """A refusal when one of these sender addresses is in (a subdomain of) a blacklisted domain."""
    for address in addresses:
        if address and domain_listed(domain_of(address), settings.blacklisted_domains):
            return SENDER_BLACKLISTED
    return None


def dropbox_refusal(settings: OrgSettings, summary: MessageSummary) -> Reply | None:
    """A refusal unless the From: header names one of the org's approved dropbox senders.

    The From: header, not the envelope sender: the copy the user's provider relays keeps the
    user in From:, while the envelope sender is often rewritten on the way (SRS, forwarding).
    """
    approved = {s.strip().lower() for s in settings.dropbox_senders}
    if summary.from_addr and summary.from_addr.lower() in approved:
        return None
    return SENDER_NOT_APPROVED


def _ms(summary: MessageSummary) -> int:
    # The Date: header is part of the message, so ids derived with it stay deterministic.
    return summary.date_ms if summary.date_ms is not None else 0


def received_event(
    *,
    org_id: str,
    user: str | None,
    summary: MessageSummary,
    sender: str,
    raw: ContentRef,
    records: tuple[RecordRef, ...],
    occurred_at: datetime,
) -> EmailReceived:
    """EmailReceived (source External) for mail a mailbox forwarded to `in+<org>@`.

    The ids derive from the raw message and the mailbox.
    """
    email_id = derived_id("received", org_id, user or "", raw.sha256, unix_ms=_ms(summary))
    return EmailReceived(
        event_id=derived_id("email_received", email_id, unix_ms=_ms(summary)),
        org_id=org_id,
        email_id=email_id,
        occurred_at=occurred_at,
        producer=PRODUCER,
        # Forwarded by SMTP, not read over IMAP or POP3: the mailbox service alone says IMAP/POP3.
        source=Source.EXTERNAL,
        transport=Transport.INTEGRATED_MAILBOX,
        from_addr=sender,
        to=summary.to,
        cc=summary.cc,
        subject=summary.subject,
        message_id=summary.message_id,
        raw=raw,
        records=records,
        mailbox_user=user,
    )


def _without(addresses: tuple[str, ...], own: Collection[str]) -> tuple[str, ...]:
    return tuple(a for a in addresses if a.lower() not in own)


def dropbox_recipients(summary: MessageSummary, own: Collection[str]) -> tuple[str, ...]:
    """The To and Cc addresses a dropbox copy links records by, the dropbox itself left out."""
    lowered = {a.lower() for a in own}
    return (*_without(summary.to, lowered), *_without(summary.cc, lowered))


def dropbox_events(
    *,
    org_id: str,
    summary: MessageSummary,
    raw: ContentRef,
    records: tuple[RecordRef, ...],
    own: Collection[str],
    occurred_at: datetime,
) -> tuple[EmailCaptured, EmailSent]:
    """EmailCaptured (source BCC Dropbox) and EmailSent for a copy of mail sent elsewhere.

    The mail left through the sender's own mail system, so the transport is the integrated
    mailbox one. `own` holds the dropbox addresses, which are not recipients of the mail.
    """
    lowered = {a.lower() for a in own}
    to, cc, bcc = (_without(v, lowered) for v in (summary.to, summary.cc, summary.bcc))
    email_id = derived_id("captured", org_id, raw.sha256, unix_ms=_ms(summary))
    return captured_and_sent(
        org_id=org_id,
        email_id=email_id,
        source=Source.BCC_DROPBOX,
        producer=PRODUCER,
        summary=dataclasses.replace(summary, to=to, cc=cc, bcc=bcc),
        records=records,
        occurred_at=occurred_at,
        raw=raw,
    )
