"""Handlers behind the SMTP server: which recipients to take, and what an arriving message means."""

from __future__ import annotations

import asyncio
import enum
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Final

from mailfold.bounces import ParsedReport, ParseFailed, parse
from mailfold.events import ContentRef, Event, InvalidToken, Keyring, RecordRef, TrackingClaims
from mailfold.events.headers import MessageSummary, summarise
from mailfold.ingest.domain.captures import (
    blacklisted,
    dropbox_events,
    dropbox_recipients,
    dropbox_refusal,
    envelope_sender,
    received_event,
    sender_of,
)
from mailfold.ingest.domain.replies import (
    ACCEPTED,
    NO_SUCH_MAILBOX,
    ONE_DESTINATION,
    RECIPIENT_OK,
    Reply,
)
from mailfold.ingest.domain.reports import report_events
from mailfold.ingest.domain.routes import Route, RouteKind, route_for
from mailfold.ingest.service_layer import quota
from mailfold.ingest.service_layer.ports import Ports, VerpRecords
from mailfold.runtime.attachments import attachments_size, may_have_attachments

RFC822: Final = "message/rfc822"
# Parsing is CPU work: a big report is parsed in a worker thread so other sessions keep moving.
_THREAD_PARSE_BYTES: Final = 64 * 1024


class BounceOutcome(enum.StrEnum):
    """What became of a message sent to one `bounce+<token>` address."""

    PUBLISHED = "published"
    INVALID_TOKEN = "invalid_token"
    UNPARSED = "unparsed"


@dataclass(frozen=True, slots=True)
class SmtpAnswer:
    """The answer to a message: the SMTP reply, and what was kept and published."""

    reply: Reply
    kind: RouteKind | None
    events: tuple[Event, ...] = ()
    raw: ContentRef | None = None
    bounces: tuple[BounceOutcome, ...] = ()


def raw_content(raw: bytes) -> ContentRef:
    """The reference of a raw message, as the content store will keep it (by SHA-256)."""
    return ContentRef(sha256=hashlib.sha256(raw).hexdigest(), size=len(raw), content_type=RFC822)


class MailIngress:
    """Recipients are checked at RCPT time, messages handled at the end of DATA."""

    def __init__(
        self,
        ports: Ports,
        keyring: Keyring,
        verp_records: VerpRecords,
        *,
        parse_report: Callable[[bytes], ParsedReport] | None = None,
        on_parse_error: Callable[[ParseFailed], None] | None = None,
    ) -> None:
        self._ports = ports
        self._keyring = keyring
        self._verp_records = verp_records
        self._parse = parse_report or partial(parse, on_error=on_parse_error)

    async def _claims(self, token: str) -> TrackingClaims:
        """The claims of a VERP token: a short one through its record, an older long one alone."""
        ticket = self._keyring.open_verp(token)
        if ticket is None:
            return self._keyring.verify_verp(token)
        record = await self._verp_records.load(ticket.ref)
        return self._keyring.verify_verp_ticket(ticket, record)

    async def check_recipient(
        self, address: str, mail_from: str | None, accepted: Sequence[str]
    ) -> Reply:
        """The RCPT reply for `address`, given the recipients this transaction already took.

        One transaction carries mail for one destination (a kind and an org), so that the one
        reply to DATA is right for every recipient; a second destination gets a 452 and the
        sending server sends it again in a transaction of its own.
        """
        route = route_for(address)
        if route is None:
            return NO_SUCH_MAILBOX
        first = route_for(accepted[0]) if accepted else None
        if first is not None and first.destination != route.destination:
            return ONE_DESTINATION
        if route.kind is RouteKind.BOUNCE:
            # Even a bad token is taken: the report is kept and counted, never bounced back.
            return RECIPIENT_OK
        directory = self._ports.directory
        if not await directory.org_exists(route.org_id):
            return NO_SUCH_MAILBOX
        if route.kind is RouteKind.INBOUND:
            settings = await directory.load_settings(route.org_id)
            refusal = blacklisted(settings, envelope_sender(mail_from))
            if refusal is not None:
                return refusal
        return RECIPIENT_OK

    async def deliver(
        self, mail_from: str | None, recipients: Sequence[str], raw: bytes
    ) -> SmtpAnswer:
        """Keep the message, publish what it proves, and say what to answer to DATA."""
        routes = [r for r in map(route_for, recipients) if r is not None]
        if not routes:
            return SmtpAnswer(NO_SUCH_MAILBOX, None)
        summary = summarise(raw)
        kind = routes[0].kind
        if kind is RouteKind.BOUNCE:
            return await self._reports(routes, raw, summary)
        if kind is RouteKind.DROPBOX:
            return await self._dropbox(routes, raw, summary)
        return await self._inbound(routes, mail_from, raw, summary)

    async def _publish(self, events: Sequence[Event]) -> None:
        # In order: the origin before the facts about it. A failure part-way leaves the rest to
        # the sending server's retry, whose events carry the same ids.
        for event in events:
            await self._ports.publisher.publish(event)

    async def _keep_and_publish(
        self, raw: bytes, raw_ref: ContentRef, events: Sequence[Event]
    ) -> None:
        """Store the raw message and publish its events at the same time; both must succeed.

        The events only need the raw message's reference, known before it is stored, so the
        writes are in flight together (one round trip instead of two). The reply waits for both
        acks; when either fails the sender is told to retry (451) and its retry stores and
        publishes the same bytes and event ids again.
        """
        stored, published = await asyncio.gather(
            self._ports.content.put(raw, RFC822, fresh=True, sha256=raw_ref.sha256),
            self._publish(events),
            return_exceptions=True,
        )
        for outcome in (stored, published):
            if isinstance(outcome, BaseException):
                raise outcome

    async def _count_attachments(
        self, org_id: str, raw: bytes, raw_ref: ContentRef, records: Sequence[RecordRef]
    ) -> None:
        """Count the message's attachments on its records' quota: never refused, always counted.

        Keyed by the raw message, so a copy that arrives again (a retry after 451, the same
        message for two users) counts once per record.
        """
        if not records or not may_have_attachments(raw):
            return
        size = (
            await asyncio.to_thread(attachments_size, raw)
            if len(raw) > _THREAD_PARSE_BYTES
            else attachments_size(raw)
        )
        await quota.count(self._ports.usage, org_id, f"raw:{raw_ref.sha256}", size, records)

    async def _dropbox(
        self, routes: list[Route], raw: bytes, summary: MessageSummary
    ) -> SmtpAnswer:
        org_id = routes[0].org_id
        settings = await self._ports.directory.load_settings(org_id)
        refusal = dropbox_refusal(settings, summary)
        if refusal is not None:
            return SmtpAnswer(refusal, RouteKind.DROPBOX)
        own = [r.address for r in routes]
        raw_ref = raw_content(raw)
        records = await self._ports.directory.records_for_addresses(
            org_id, dropbox_recipients(summary, own)
        )
        events = dropbox_events(
            org_id=org_id,
            summary=summary,
            raw=raw_ref,
            records=records,
            own=own,
            occurred_at=self._ports.clock(),
        )
        await self._keep_and_publish(raw, raw_ref, events)
        await self._count_attachments(org_id, raw, raw_ref, records)
        return SmtpAnswer(ACCEPTED, RouteKind.DROPBOX, events, raw_ref)

    async def _inbound(
        self, routes: list[Route], mail_from: str | None, raw: bytes, summary: MessageSummary
    ) -> SmtpAnswer:
        org_id = routes[0].org_id
        settings = await self._ports.directory.load_settings(org_id)
        refusal = blacklisted(settings, envelope_sender(mail_from), summary.from_addr)
        if refusal is not None:
            return SmtpAnswer(refusal, RouteKind.INBOUND)
        sender = sender_of(summary, mail_from)
        raw_ref = raw_content(raw)
        records = await self._ports.directory.records_for_addresses(
            org_id, [sender] if sender else []
        )
        now = self._ports.clock()
        events = [
            received_event(
                org_id=org_id,
                user=user,
                summary=summary,
                sender=sender,
                raw=raw_ref,
                records=records,
                occurred_at=now,
            )
            for user in dict.fromkeys(r.user for r in routes)
        ]
        await self._keep_and_publish(raw, raw_ref, events)
        await self._count_attachments(org_id, raw, raw_ref, records)
        return SmtpAnswer(ACCEPTED, RouteKind.INBOUND, tuple(events), raw_ref)

    async def _reports(
        self, routes: list[Route], raw: bytes, summary: MessageSummary
    ) -> SmtpAnswer:
        raw_ref = raw_content(raw)
        report: ParsedReport | None = None
        events: list[Event] = []
        outcomes: list[BounceOutcome] = []
        for token in dict.fromkeys(r.token.lower() for r in routes):
            try:
                claims = await self._claims(token)
            except InvalidToken:
                outcomes.append(BounceOutcome.INVALID_TOKEN)
                continue
            if report is None:
                report = (
                    await asyncio.to_thread(self._parse, raw)
                    if len(raw) > _THREAD_PARSE_BYTES
                    else self._parse(raw)
                )
            found = report_events(
                report,
                claims,
                raw=raw_ref,
                occurred_at=self._ports.clock(),
                date_ms=summary.date_ms,
            )
            outcomes.append(BounceOutcome.PUBLISHED if found else BounceOutcome.UNPARSED)
            events.extend(found)
        await self._keep_and_publish(raw, raw_ref, events)
        return SmtpAnswer(ACCEPTED, RouteKind.BOUNCE, tuple(events), raw_ref, tuple(outcomes))
