"""Handling one EmailComposed: refuse, admit, build, deliver, and report what happened.

Every write of shared state follows the event it records ("publish, then mark"), so a mark implies
its event is on the stream, and event ids are derived from what they say (`events.ids`), so doing
a step twice after a crash publishes the same event again, which JetStream and the fold drop.

The one window that cannot be closed is between handing the message over (DATA) and learning the
reply: a sender killed there leaves the recipient marked "attempting". A later delivery of the
email treats that recipient as done with an unknown outcome and never sends to it again: at most
once, rather than at least once. See docs/sender.md.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import structlog

from mailfold.events import (
    BounceKind,
    EmailBounced,
    EmailComposed,
    EmailDeferred,
    EmailDelivered,
    EmailRejected,
    EmailSent,
    Keyring,
    Transport,
    VerpRecord,
    trackable,
)
from mailfold.events.ids import derived_id
from mailfold.events.policy import reports_delivery
from mailfold.runtime.directory import MailboxSettings, OrgSettings
from mailfold.sender.domain import rules, tracking
from mailfold.sender.domain.addresses import Mailbox, parse_mailbox
from mailfold.sender.domain.delivery import STATUS_EXPIRED, AttemptVerdict, RetryPolicy, SmtpAttempt
from mailfold.sender.domain.message import (
    Body,
    build,
    decode_text,
    message_id,
    verp_return_path,
)
from mailfold.sender.domain.rules import RejectReason, RuleViolation
from mailfold.sender.domain.state import MarkState, RecipientMark, RecipientOutcome
from mailfold.sender.service_layer.admission import admit
from mailfold.sender.service_layer.marks import AttemptPlan, Slot, mark_attempting, plan_attempts
from mailfold.sender.service_layer.ports import (
    Clock,
    ContentMissing,
    DirectTransport,
    Envelope,
    Ledger,
    LoadContent,
    LoadMailbox,
    LoadSettings,
    Publish,
    SubmissionTransport,
)

PRODUCER: Final = "sender"
log = structlog.get_logger("mailfold.sender")


@dataclass(frozen=True, slots=True)
class Done:
    """Finished with this email for good: acknowledge it."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Some recipients wait for a retry: deliver the email again in `delay_s` seconds."""

    delay_s: float


Disposition = Done | Retry
DONE: Final = Done()


@dataclass(frozen=True, slots=True)
class Ports:
    """Everything the handler talks to."""

    publish: Publish
    ledger: Ledger
    content: LoadContent
    settings: LoadSettings
    mailbox: LoadMailbox
    direct: DirectTransport
    submission: SubmissionTransport
    keys: Keyring
    tracker_url: str
    retry: RetryPolicy
    clock: Clock


async def handle_composed(
    composed: EmailComposed, ports: Ports, *, redelivered: bool
) -> Disposition:
    """Send one composed email, or the part of it still due; says whether to come back later.

    `redelivered` is False on the email's first delivery, when no recipient can have a mark yet.
    """
    return await _Job(composed, ports, redelivered).run()


class _Job:
    """The handling of one delivery of one composed email."""

    def __init__(self, composed: EmailComposed, ports: Ports, redelivered: bool) -> None:
        self.c = composed
        self.p = ports
        self.redelivered = redelivered
        self.now = ports.clock()
        self.message_id = ""
        self._verp = VerpRecord(org_id=composed.org_id, email_id=composed.email_id, recipients=())
        # What the policy lets this email report: Delivered and Deferred only where our own
        # servers deliver it (an integrated mailbox's server keeps that to itself).
        self.reports_delivery = reports_delivery(
            composed.source, composed.transport, len(composed.recipients)
        )

    # --- events -----------------------------------------------------------------------------

    def _envelope(self, *parts: str) -> dict[str, Any]:
        return {
            "event_id": derived_id(
                self.c.email_id, *parts, unix_ms=int(self.c.occurred_at.timestamp() * 1000)
            ),
            "org_id": self.c.org_id,
            "email_id": self.c.email_id,
            "occurred_at": self.p.clock(),
            "producer": PRODUCER,
        }

    async def _reject(self, rejection: RuleViolation) -> None:
        who = (rejection.recipient or "").lower()
        await self.p.publish(
            EmailRejected(
                **self._envelope("rejected", rejection.reason.value, who),
                reason=rejection.reason.value,
                detail=rejection.detail,
                recipient=rejection.recipient,
            )
        )

    # --- the steps --------------------------------------------------------------------------

    async def run(self) -> Disposition:
        c = self.c
        settings = await self.p.settings(c.org_id)
        mailbox: MailboxSettings | None = None
        if c.transport is Transport.INTEGRATED_MAILBOX and c.mailbox_user:
            mailbox = await self.p.mailbox(c.org_id, c.mailbox_user)
        rejection = rules.check(c, mailbox_configured=mailbox is not None)
        if rejection is not None:
            await self._reject(rejection)
            return DONE
        try:
            body = await self._load_body()
        except ContentMissing as exc:
            await self._reject(RuleViolation(RejectReason.CONTENT_MISSING, str(exc)))
            return DONE
        recipients = rules.recipients(c)
        # Indexes in the VERP record follow every recipient of the email, admitted or not, so
        # that they are the same on every delivery of it.
        self._verp = VerpRecord(
            org_id=c.org_id, email_id=c.email_id, recipients=tuple(m.address for m in recipients)
        )
        if rules.counts_toward_limit(c.source) or rules.is_deduplicated(c.source):
            recipients = await admit(
                c, recipients, settings, ledger=self.p.ledger, now=self.now, reject=self._reject
            )
            if not recipients:
                return DONE
        self.message_id = message_id(c.email_id, settings.mail_domain)
        if c.transport is Transport.CRM_SERVERS:
            return await self._direct(recipients, body, settings)
        assert mailbox is not None
        return await self._submit(recipients, body, settings, mailbox)

    async def _load_body(self) -> Body:
        c = self.c

        async def load(sha256: str, what: str) -> bytes:
            try:
                return await self.p.content(sha256)
            except ContentMissing as exc:
                raise ContentMissing(f"the {what} ({sha256}) is not in the object store") from exc

        # One after the other: the object store is cached, so most loads return at once, and
        # gathering would cost a task per part for nothing.
        html = None if c.html is None else await load(c.html.sha256, "HTML body")
        text = None if c.text is None else await load(c.text.sha256, "text body")
        attachments = [await load(a.sha256, f"attachment {a.name!r}") for a in c.attachments]
        return Body(
            html=None if c.html is None or html is None else decode_text(html, c.html.content_type),
            text=None if c.text is None or text is None else decode_text(text, c.text.content_type),
            attachments=tuple(zip(c.attachments, attachments, strict=True)),
        )

    async def _plan(self, recipients: Sequence[Mailbox]) -> AttemptPlan:
        return await plan_attempts(
            self.c, recipients, ledger=self.p.ledger, now=self.now, redelivered=self.redelivered
        )

    async def _publish_sent(self, recipients: Sequence[str], transport: Transport) -> None:
        await self.p.publish(
            EmailSent(
                **self._envelope("sent"),
                recipients=tuple(recipients),
                message_id=self.message_id,
                transport=transport,
            )
        )

    # --- delivery through the CRM's servers ------------------------------------------------

    async def _direct(
        self, recipients: list[Mailbox], body: Body, settings: OrgSettings
    ) -> Disposition:
        c = self.c
        plan = await self._plan(recipients)
        if plan.due:
            # The VERP record before any return path names it (a bounce may come back within
            # seconds), side by side with EmailSent: two round trips in the time of one.
            remembered = self.p.ledger.remember_verp(self._verp)
            if any(s.attempt == 1 for s in plan.due):
                sent = self._publish_sent([m.address for m in recipients], Transport.CRM_SERVERS)
                await asyncio.gather(remembered, sent)
            else:
                await remembered
            tracked = trackable(c.source, c.transport, len(c.recipients))
            shared = None if tracked else self._message(body, settings)
            by_domain: dict[str, list[Slot]] = defaultdict(list)
            for slot in plan.due:
                by_domain[slot.mailbox.domain.lower()].append(slot)
            deliveries = [
                self._deliver_domain(domain, slots, body, settings, shared, plan)
                for domain, slots in by_domain.items()
            ]
            if len(deliveries) == 1:
                await deliveries[0]
            else:
                await asyncio.gather(*deliveries)
        return Retry(min(plan.waits)) if plan.waits else DONE

    def _message(self, body: Body, settings: OrgSettings, recipient: str | None = None) -> bytes:
        if recipient is not None and body.html is not None:
            html = tracking.track(
                body.html,
                keys=self.p.keys,
                tracker_url=self.p.tracker_url,
                org_id=self.c.org_id,
                email_id=self.c.email_id,
                recipient=recipient,
            )
            body = Body(html=html, text=body.text, attachments=body.attachments)
        return build(self.c, body, mail_domain=settings.mail_domain, date=self.now)

    async def _deliver_domain(
        self,
        domain: str,
        slots: list[Slot],
        body: Body,
        settings: OrgSettings,
        shared: bytes | None,
        plan: AttemptPlan,
    ) -> None:
        by_key = {s.mailbox.key: s for s in slots}
        envelopes = [
            Envelope(
                mail_from=verp_return_path(
                    self.p.keys,
                    org_id=self.c.org_id,
                    email_id=self.c.email_id,
                    recipient=s.mailbox.address,
                    index=self._verp.index_of(s.mailbox.address),
                    mail_domain=settings.mail_domain,
                ),
                recipient=s.mailbox,
                message=shared
                if shared is not None
                else self._message(body, settings, s.mailbox.address),
            )
            for s in slots
        ]

        async def before_data(mailboxes: Sequence[Mailbox]) -> bool:
            return await mark_attempting(
                self.c, [by_key[m.key] for m in mailboxes], ledger=self.p.ledger, now=self.now
            )

        async def after(envelope: Envelope, attempt: SmtpAttempt) -> None:
            # Settled at once, not when the whole domain is done: a crash loses less.
            wait = await self._settle_direct(by_key[envelope.recipient.key], attempt)
            if wait is not None:
                plan.waits.append(wait)

        await self.p.direct.deliver(domain, envelopes, before_data, after)

    async def _settle_direct(self, slot: Slot, attempt: SmtpAttempt) -> float | None:
        """Report one recipient's attempt and record it; the seconds until its retry, if any."""
        m = slot.mailbox
        verdict = attempt.verdict
        if verdict is AttemptVerdict.SKIPPED:
            return self.p.retry.base_s
        if verdict is AttemptVerdict.DELIVERED:
            if self.reports_delivery:
                await self.p.publish(
                    EmailDelivered(
                        **self._envelope("delivered", m.key),
                        recipient=m.address,
                        reply_code=attempt.code,
                        reply=attempt.text,
                        remote_mta=attempt.remote_mta,
                    )
                )
            await self._finish(slot, RecipientOutcome.DELIVERED)
            return None
        if verdict is AttemptVerdict.BOUNCED:
            reason, kind = attempt.classify()
            await self._publish_bounce(slot, attempt, reason=reason, kind=kind)
            await self._finish(slot, RecipientOutcome.BOUNCED)
            return None
        now = self.p.clock()
        retry_at = self.p.retry.next_retry(slot.attempt, slot.first_at, now)
        if retry_at is None:
            await self._publish_expired(slot, attempt, reason="expired")
            await self._finish(slot, RecipientOutcome.BOUNCED)
            return None
        await self._publish_deferred(slot, attempt, retry_at)
        await self._defer(slot, retry_at)
        return max(0.0, (retry_at - now).total_seconds())

    async def _publish_deferred(self, slot: Slot, attempt: SmtpAttempt, retry_at: datetime) -> None:
        """EmailDeferred, where the policy says the email's delivery is reported at all."""
        if not self.reports_delivery:
            return
        await self.p.publish(
            EmailDeferred(
                **self._envelope("deferred", slot.mailbox.key, str(slot.attempt)),
                recipient=slot.mailbox.address,
                reply_code=attempt.code,
                status=attempt.status,
                diagnostic=attempt.diagnostic,
                remote_mta=attempt.remote_mta,
                attempt=slot.attempt,
                retry_at=retry_at,
            )
        )

    async def _publish_bounce(
        self, slot: Slot, attempt: SmtpAttempt, *, reason: str | None, kind: BounceKind
    ) -> None:
        await self.p.publish(
            EmailBounced(
                **self._envelope("bounced", slot.mailbox.key),
                recipient=slot.mailbox.address,
                kind=kind,
                status=attempt.status,
                reply_code=attempt.code,
                reason=reason,
                diagnostic=attempt.diagnostic,
                reporting_mta=attempt.remote_mta,
            )
        )

    async def _publish_expired(
        self, slot: Slot, attempt: SmtpAttempt, *, reason: str | None
    ) -> None:
        age = (self.p.clock() - slot.first_at).total_seconds()
        await self.p.publish(
            EmailBounced(
                **self._envelope("bounced", slot.mailbox.key),
                recipient=slot.mailbox.address,
                kind=BounceKind.SOFT,
                status=STATUS_EXPIRED,
                reply_code=attempt.code,
                reason=reason,
                diagnostic=f"gave up after {slot.attempt} attempts in {age:.0f}s; "
                f"last: {attempt.diagnostic}",
                reporting_mta=attempt.remote_mta,
            )
        )

    async def _finish(self, slot: Slot, outcome: RecipientOutcome) -> None:
        done = RecipientMark(
            state=MarkState.DONE,
            attempt=slot.attempt,
            first_attempt_at=slot.first_at,
            outcome=outcome,
        )
        await self._write_mark(slot, done)

    async def _defer(self, slot: Slot, retry_at: datetime) -> None:
        deferred = RecipientMark(
            state=MarkState.DEFERRED,
            attempt=slot.attempt,
            first_attempt_at=slot.first_at,
            retry_at=retry_at,
        )
        await self._write_mark(slot, deferred)

    async def _write_mark(self, slot: Slot, mark: RecipientMark) -> None:
        c = self.c
        revision = await self.p.ledger.put_mark(
            c.org_id, c.email_id, slot.mailbox.key, mark, last=slot.revision
        )
        if revision is None:
            log.warning(
                "recipient mark changed under us; keeping the other writer's",
                email_id=c.email_id,
                recipient=slot.mailbox.address,
                state=mark.state.value,
            )
        slot.revision = revision

    # --- submission through the user's integrated mailbox ----------------------------------

    async def _submit(
        self,
        recipients: list[Mailbox],
        body: Body,
        settings: OrgSettings,
        mailbox: MailboxSettings,
    ) -> Disposition:
        plan = await self._plan(recipients)
        if not plan.due:
            return Retry(min(plan.waits)) if plan.waits else DONE
        message = self._message(body, settings)
        mail_from = parse_mailbox(mailbox.email or self.c.from_addr).address
        by_key = {s.mailbox.key: s for s in plan.due}

        async def before_data(mailboxes: Sequence[Mailbox]) -> bool:
            return await mark_attempting(
                self.c, [by_key[m.key] for m in mailboxes], ledger=self.p.ledger, now=self.now
            )

        attempts = await self.p.submission.submit(
            mailbox, mail_from, [s.mailbox for s in plan.due], message, before_data
        )
        submitted: list[Slot] = []
        for slot, attempt in zip(plan.due, attempts, strict=True):
            verdict = attempt.verdict
            if verdict is AttemptVerdict.SKIPPED:
                plan.waits.append(self.p.retry.base_s)
            elif verdict is AttemptVerdict.DELIVERED:
                submitted.append(slot)
            elif verdict is AttemptVerdict.BOUNCED:
                # The mailbox's server saw the failure, not ours: no reason class to claim.
                _, kind = attempt.classify()
                await self._publish_bounce(slot, attempt, reason=None, kind=kind)
                await self._finish(slot, RecipientOutcome.BOUNCED)
            else:
                wait = await self._retry_submission(slot, attempt)
                if wait is not None:
                    plan.waits.append(wait)
        if submitted:
            await self._publish_sent(
                [s.mailbox.address for s in submitted], Transport.INTEGRATED_MAILBOX
            )
            for slot in submitted:
                await self._finish(slot, RecipientOutcome.SUBMITTED)
        return Retry(min(plan.waits)) if plan.waits else DONE

    async def _retry_submission(self, slot: Slot, attempt: SmtpAttempt) -> float | None:
        now = self.p.clock()
        retry_at = self.p.retry.next_retry(slot.attempt, slot.first_at, now)
        if retry_at is None:
            await self._publish_expired(slot, attempt, reason=None)
            await self._finish(slot, RecipientOutcome.BOUNCED)
            return None
        log.info(
            "submission deferred",
            email_id=self.c.email_id,
            recipient=slot.mailbox.address,
            attempt=slot.attempt,
            diagnostic=attempt.diagnostic,
            retry_at=retry_at.isoformat(),
        )
        await self._publish_deferred(slot, attempt, retry_at)
        await self._defer(slot, retry_at)
        return max(0.0, (retry_at - now).total_seconds())
