"""What one mailbox message becomes: events, and the email it is (kept for deletions)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mailfold.events import Event, RecordRef, Source
from mailfold.events.headers import MessageSummary, summarise
from mailfold.events.model import BounceKind
from mailfold.mailbox.adapters.bounces import BounceFact
from mailfold.mailbox.domain import events as ev
from mailfold.mailbox.domain.events import Role
from mailfold.mailbox.domain.messages import looks_like_bounce
from mailfold.runtime.directory import OrgSettings

RecordsFor = Callable[[str, Sequence[str]], Awaitable[tuple[RecordRef, ...]]]
SentEmail = Callable[[str, str, str], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class MailboxRef:
    """Which mailbox a message was read from."""

    org_id: str
    user: str
    source: Source  # IMAP or POP3


@dataclass(frozen=True, slots=True)
class MessageOutcome:
    """What a message became: the email it is (None when it is none) and its events."""

    email_id: str | None = None
    events: tuple[Event, ...] = ()
    sent_message_id: str = ""  # Message-ID of captured sent mail, for matching later bounces
    summary: MessageSummary = field(default_factory=MessageSummary)


NOTHING = MessageOutcome()


def _when(summary: MessageSummary, clock: Callable[[], datetime]) -> datetime:
    if summary.date_ms is not None:
        return datetime.fromtimestamp(summary.date_ms / 1000, UTC)
    return clock()


def _reply_code(text: str) -> int | None:
    return int(text) if text.isdigit() and 200 <= int(text) <= 599 else None


def _kind(text: str) -> BounceKind:
    try:
        return BounceKind(text)
    except ValueError:
        return BounceKind.UNDETERMINED


async def bounce_events(
    mailbox: MailboxRef,
    facts: Sequence[BounceFact],
    settings: OrgSettings,
    sent_email: SentEmail,
    at: datetime,
) -> tuple[Event, ...]:
    """EmailBounced for each failed recipient of mail this mailbox sent (by Message-ID)."""
    found: list[Event] = []
    for fact in facts:
        if not fact.original_message_id:
            continue
        target = ev.crm_email_id(fact.original_message_id, settings.mail_domain)
        if target is None:
            target = await sent_email(mailbox.org_id, mailbox.user, fact.original_message_id)
        if target is None:
            continue
        found.append(
            ev.bounced(
                org_id=mailbox.org_id,
                email_id=target,
                recipient=fact.recipient,
                kind=_kind(fact.kind),
                status=fact.status or None,
                reply_code=_reply_code(fact.reply_code),
                reason=fact.reason or None,
                diagnostic=fact.diagnostic or None,
                reporting_mta=fact.reporting_mta or None,
                occurred_at=at,
            )
        )
    return tuple(found)


def lookup_key(role: Role, summary: MessageSummary, settings: OrgSettings) -> tuple[str, ...]:
    """The addresses whose records decide a message: the sender of inbound mail, the recipients
    of sent mail; none for the CRM's own sent mail."""
    if role is Role.INBOX:
        return (summary.from_addr,) if summary.from_addr else ()
    if ev.crm_email_id(summary.message_id, settings.mail_domain) is not None:
        return ()
    return summary.recipients


def decide(
    mailbox: MailboxRef,
    role: Role,
    raw: bytes,
    summary: MessageSummary,
    records: tuple[RecordRef, ...],
    *,
    settings: OrgSettings,
    clock: Callable[[], datetime],
) -> MessageOutcome:
    """What a message that is no bounce becomes, given the records of its lookup addresses.

    Only mail exchanged with a record's address becomes an email.
    """
    at = _when(summary, clock)
    org, user = mailbox.org_id, mailbox.user
    if role is Role.INBOX:
        if not summary.from_addr or not records:
            return NOTHING
        email_id = ev.email_id_for(org, user, role, ev.message_key(summary, raw), summary.date_ms)
        received = ev.received(
            org_id=org,
            user=user,
            source=mailbox.source,
            email_id=email_id,
            summary=summary,
            records=records,
            occurred_at=at,
        )
        return MessageOutcome(email_id=email_id, events=(received,), summary=summary)
    crm = ev.crm_email_id(summary.message_id, settings.mail_domain)
    if crm is not None:
        # The CRM sent it through this mailbox: the sender already said so; keep it for deletion.
        return MessageOutcome(email_id=crm, summary=summary)
    if not summary.recipients or not records:
        return NOTHING
    email_id = ev.email_id_for(org, user, role, ev.message_key(summary, raw), summary.date_ms)
    captured, sent = ev.captured(
        org_id=org,
        user=user,
        email_id=email_id,
        summary=summary,
        records=records,
        occurred_at=at,
    )
    return MessageOutcome(
        email_id=email_id,
        events=(captured, sent),
        sent_message_id=summary.message_id,
        summary=summary,
    )


async def outcomes_of(
    mailbox: MailboxRef,
    role: Role,
    raws: Sequence[bytes],
    *,
    settings: OrgSettings,
    records_for: RecordsFor,
    sent_email: SentEmail,
    parse_bounce: Callable[[bytes], list[BounceFact]],
    clock: Callable[[], datetime],
) -> list[MessageOutcome]:
    """Decide a batch of messages: one record lookup per distinct set of addresses."""
    summaries = [summarise(raw) for raw in raws]
    keys = [lookup_key(role, s, settings) for s in summaries]
    wanted = sorted({k for k in keys if k})
    found = dict(
        zip(
            wanted,
            await asyncio.gather(*(records_for(mailbox.org_id, k) for k in wanted)),
            strict=True,
        )
    )
    outcomes: list[MessageOutcome] = []
    for raw, summary, key in zip(raws, summaries, keys, strict=True):
        if role is Role.INBOX and looks_like_bounce(summary):
            facts = parse_bounce(raw)
            if facts:
                # A bounce is a fact about mail this mailbox sent, never an email of its own.
                at = _when(summary, clock)
                events = await bounce_events(mailbox, facts, settings, sent_email, at)
                outcomes.append(MessageOutcome(events=events, summary=summary))
                continue
        records = found.get(key, ()) if key else ()
        outcomes.append(
            decide(mailbox, role, raw, summary, records, settings=settings, clock=clock)
        )
    return outcomes
