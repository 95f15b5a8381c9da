"""The events a mailbox message becomes, with ids derived so that a re-sync publishes nothing new.

An email's id derives from (org, mailbox user, folder role, Message-ID) or, for a message without
one, from the SHA-256 of its bytes: never from a UID, so a UIDVALIDITY reset, a second copy of
the service or a restart finds the same ids. Each event's id derives from its email's id.
"""

from __future__ import annotations

import enum
import hashlib
import re
from datetime import datetime
from typing import Final

from mailfold.events import (
    EmailBounced,
    EmailCaptured,
    EmailDeleted,
    EmailReceived,
    EmailSent,
    RecordRef,
    Source,
    Transport,
)
from mailfold.events.captures import captured_and_sent
from mailfold.events.headers import MessageSummary
from mailfold.events.ids import derived_id
from mailfold.events.model import BounceKind

PRODUCER: Final = "mailbox"
_CRM_MESSAGE_ID: Final = re.compile(
    r"^<?([0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})@([^<>@\s]+)>?$"
)


class Role(enum.StrEnum):
    """What a watched folder holds: mail received, or mail the user sent."""

    INBOX = "inbox"
    SENT = "sent"


def normal_message_id(message_id: str) -> str:
    """A Message-ID compared as bounces quote it: without angle brackets, lower-cased."""
    return message_id.strip().strip("<>").strip().lower()


def message_key(summary: MessageSummary, raw: bytes) -> str:
    """What identifies a message across UIDVALIDITY resets: its Message-ID, else its bytes."""
    if summary.message_id:
        return normal_message_id(summary.message_id)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def email_id_for(org_id: str, user: str, role: Role, key: str, date_ms: int | None) -> str:
    """The email a mailbox message is."""
    return derived_id("mailbox", org_id, user, role.value, key, unix_ms=date_ms or 0)


def crm_email_id(message_id: str, mail_domain: str) -> str | None:
    """The CRM email a Message-ID names (`<email_id@mail domain>`, as the sender writes it)."""
    found = _CRM_MESSAGE_ID.match(message_id.strip().lower())
    if found is None or found.group(2) != mail_domain.strip().lower():
        return None
    return found.group(1)


def _ms(summary: MessageSummary) -> int:
    return summary.date_ms or 0


def received(
    *,
    org_id: str,
    user: str,
    source: Source,
    email_id: str,
    summary: MessageSummary,
    records: tuple[RecordRef, ...],
    occurred_at: datetime,
) -> EmailReceived:
    """EmailReceived on every record of the sender's address."""
    return EmailReceived(
        event_id=derived_id("email_received", email_id, unix_ms=_ms(summary)),
        org_id=org_id,
        email_id=email_id,
        occurred_at=occurred_at,
        producer=PRODUCER,
        source=source,
        transport=Transport.INTEGRATED_MAILBOX,
        from_addr=summary.from_addr,
        to=summary.to,
        cc=summary.cc,
        subject=summary.subject,
        message_id=summary.message_id,
        records=records,
        mailbox_user=user,
    )


def captured(
    *,
    org_id: str,
    user: str,
    email_id: str,
    summary: MessageSummary,
    records: tuple[RecordRef, ...],
    occurred_at: datetime,
) -> tuple[EmailCaptured, EmailSent]:
    """EmailCaptured (source IMAP) and EmailSent for mail found in the Sent folder."""
    return captured_and_sent(
        org_id=org_id,
        email_id=email_id,
        source=Source.IMAP,
        producer=PRODUCER,
        summary=summary,
        records=records,
        occurred_at=occurred_at,
        mailbox_user=user,
    )


def bounced(
    *,
    org_id: str,
    email_id: str,
    recipient: str,
    kind: BounceKind,
    status: str | None,
    reply_code: int | None,
    reason: str | None,
    diagnostic: str | None,
    reporting_mta: str | None,
    occurred_at: datetime,
) -> EmailBounced:
    """EmailBounced for one recipient of mail this mailbox sent, with the parser's reason."""
    return EmailBounced(
        event_id=derived_id("email_bounced", email_id, recipient.lower(), unix_ms=0),
        org_id=org_id,
        email_id=email_id,
        occurred_at=occurred_at,
        producer=PRODUCER,
        recipient=recipient,
        kind=kind,
        status=status,
        reply_code=reply_code,
        reason=reason,
        diagnostic=diagnostic,
        reporting_mta=reporting_mta,
    )


def deleted(
    *, org_id: str, user: str, email_id: str, reason: str, occurred_at: datetime
) -> EmailDeleted:
    """EmailDeleted: one per email, whichever side deleted it first."""
    return EmailDeleted(
        event_id=derived_id("email_deleted", email_id, unix_ms=0),
        org_id=org_id,
        email_id=email_id,
        occurred_at=occurred_at,
        producer=PRODUCER,
        mailbox_user=user,
        reason=reason,
    )
