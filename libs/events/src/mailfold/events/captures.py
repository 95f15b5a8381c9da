"""Outbound mail seen after it left (a BCC dropbox copy, a mailbox's Sent folder) as events."""

from __future__ import annotations

from datetime import datetime

from mailfold.events.events import ContentRef, EmailCaptured, EmailSent, RecordRef
from mailfold.events.headers import MessageSummary
from mailfold.events.ids import derived_id
from mailfold.events.model import Source, Transport


def captured_and_sent(
    *,
    org_id: str,
    email_id: str,
    source: Source,
    producer: str,
    summary: MessageSummary,
    records: tuple[RecordRef, ...],
    occurred_at: datetime,
    raw: ContentRef | None = None,
    mailbox_user: str | None = None,
) -> tuple[EmailCaptured, EmailSent]:
    """EmailCaptured with the message's headers, and EmailSent to its To, Cc and Bcc.

    The mail left through the sender's own mail system, so the transport is the integrated
    mailbox one. Both ids derive from `email_id` and the Date header, so seeing the same
    message again publishes the same two events.
    """
    unix_ms = summary.date_ms or 0
    captured = EmailCaptured(
        event_id=derived_id("email_captured", email_id, unix_ms=unix_ms),
        org_id=org_id,
        email_id=email_id,
        occurred_at=occurred_at,
        producer=producer,
        source=source,
        transport=Transport.INTEGRATED_MAILBOX,
        from_addr=summary.from_addr,
        to=summary.to,
        cc=summary.cc,
        bcc=summary.bcc,
        subject=summary.subject,
        message_id=summary.message_id,
        raw=raw,
        records=records,
        mailbox_user=mailbox_user,
    )
    sent = EmailSent(
        event_id=derived_id("email_sent", email_id, unix_ms=unix_ms),
        org_id=org_id,
        email_id=email_id,
        occurred_at=occurred_at,
        producer=producer,
        recipients=summary.recipients,
        message_id=summary.message_id,
        transport=Transport.INTEGRATED_MAILBOX,
    )
    return captured, sent
