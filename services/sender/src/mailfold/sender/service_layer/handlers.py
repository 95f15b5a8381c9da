"""Handling one EmailComposed: refuse, admit, build, deliver, and report what happened.

Every write of shared state follows the event it records ("publish, then mark"), so a mark implies
its event is on the stream, and event ids are derived from what they say (`domain.ids`), so doing
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
from dataclasses import dataclass, field
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
    trackable,
)
from mailfold.events.ids import derived_id
from mailfold.runtime.directory import MailboxSettings, OrgSettings
from mailfold.sender import metrics
from mailfold.sender.domain import rules, tracking
from mailfold.sender.domain.addresses import Mailbox, parse_mailbox
from mailfold.sender.domain.delivery import STATUS_EXPIRED, Attempt, RetryPolicy, Verdict
from mailfold.sender.domain.message import (
    Body,
    build,
    decode_text,
    message_id,
    verp_return_path,
)
from mailfold.sender.domain.rules import Reason, Rejection
from mailfold.sender.domain.state import Admission, MarkState, Outcome, RecipientMark
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


@dataclass(slots=True)
class _Slot:
    """One recipient due for an attempt now."""

    mailbox: Mailbox
    attempt: int
    first_at: datetime
    revision: int | None  # the mark's revision; None when it has no mark yet


@dataclass(slots=True)
class _Plan:
    """Which recipients to try now, and how long until the earliest of the others is due."""

    due: list[_Slot] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)


class _Job:
    """The handling of one delivery of one composed email."""

    def __init__(self, composed: EmailComposed, ports: Ports, redelivered: bool) -> None:
        self.c = composed
        self.p = ports
        self.redelivered = redelivered
        self.now = ports.clock()
        self.message_id = ""

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

    async def _reject(self, rejection: Rejection) -> None:
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
            await self._reject(Rejection(Reason.CONTENT_MISSING, str(exc)))
            return DONE
        recipients = rules.recipients(c)
        if rules.counts_toward_limit(c.source) or rules.is_deduplicated(c.source):
            recipients = await self._admit(recipients, settings)
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

    async def _admit(self, recipients: list[Mailbox], settings: OrgSettings) -> list[Mailbox]:
        """The recipients a mass email may go to: not yet mailed in its campaign, within the limit."""
        c, ledger = self.c, self.p.ledger
        pinned = await ledger.admission(c.org_id, c.email_id)
        if pinned is None:
            day = rules.local_day(self.now, settings.time_zone)
            pinned = await ledger.pin_admission(c.org_id, c.email_id, Admission(day=day))
        admission, revision = pinned
        if not admission.decided:
            admission = await self._decide(admission, revision, recipients, settings)
        admitted = {a.lower() for a in admission.recipients}
        return [m for m in recipients if m.key in admitted]

    async def _decide(
        self,
        admission: Admission,
        revision: int,
        recipients: list[Mailbox],
        settings: OrgSettings,
    ) -> Admission:
        c, ledger = self.c, self.p.ledger
        admitted, duplicates = list(recipients), []
        campaign = rules.campaign_key(c, admission.day)
        if rules.is_deduplicated(c.source):
            claims = await asyncio.gather(
                *(ledger.claim_address(c.org_id, campaign, m.key, c.email_id) for m in recipients)
            )
            admitted = [m for m, ok in zip(recipients, claims, strict=True) if ok]
            duplicates = [m for m, ok in zip(recipients, claims, strict=True) if not ok]
        limit_reached = False
        if rules.counts_toward_limit(c.source) and admitted:
            limit = settings.mass_email_daily_limit
            if not await ledger.reserve_slot(c.org_id, admission.day, c.email_id, limit):
                limit_reached = True
                if rules.is_deduplicated(c.source):
                    await asyncio.gather(
                        *(
                            ledger.release_address(c.org_id, campaign, m.key, c.email_id)
                            for m in admitted
                        )
                    )
                admitted = []
        for m in duplicates:
            await self._reject(
                Rejection(
                    Reason.DUPLICATE_RECIPIENT,
                    f"{m.address} already gets this mass email (campaign {campaign}); "
                    "a mass email never goes twice to the same address",
                    recipient=m.address,
                )
            )
        if limit_reached:
            zone = settings.time_zone
            await self._reject(
                Rejection(
                    Reason.DAILY_LIMIT_REACHED,
                    f"the org's daily limit of {settings.mass_email_daily_limit} mass emails "
                    f"for {admission.day.isoformat()} ({zone}) is reached",
                    # One email per recipient: the refused recipient is this email's own.
                    recipient=recipients[0].address if len(recipients) == 1 else None,
                )
            )
        decided = Admission(
            day=admission.day,
            decided=True,
            recipients=tuple(m.key for m in admitted),
            duplicates=tuple(m.key for m in duplicates),
            limit_reached=limit_reached,
        )
        await ledger.decide_admission(c.org_id, c.email_id, decided, last=revision)
        return decided

    async def _plan(self, recipients: Sequence[Mailbox]) -> _Plan:
        """Sort recipients into due now, waiting, or finished (marks from earlier deliveries)."""
        plan = _Plan()
        if not self.redelivered:
            plan.due = [_Slot(m, 1, self.now, None) for m in recipients]
            return plan
        c = self.c
        found = await asyncio.gather(
            *(self.p.ledger.mark(c.org_id, c.email_id, m.key) for m in recipients)
        )
        for m, entry in zip(recipients, found, strict=True):
            if entry is None:
                plan.due.append(_Slot(m, 1, self.now, None))
                continue
            mark, revision = entry
            if mark.state is MarkState.DONE:
                continue
            if mark.state is MarkState.ATTEMPTING:
                await self._unknown_outcome(m, mark, revision)
                continue
            retry_at = mark.retry_at or self.now
            if retry_at <= self.now:
                plan.due.append(_Slot(m, mark.attempt + 1, mark.first_attempt_at, revision))
            else:
                plan.waits.append((retry_at - self.now).total_seconds())
        return plan

    async def _unknown_outcome(self, m: Mailbox, mark: RecipientMark, revision: int) -> None:
        metrics.UNKNOWN_OUTCOMES.inc()
        log.warning(
            "delivery outcome unknown: the sender stopped after handing the message over; "
            "not sending it again",
            email_id=self.c.email_id,
            org_id=self.c.org_id,
            recipient=m.address,
            attempt=mark.attempt,
        )
        done = RecipientMark(
            state=MarkState.DONE,
            attempt=mark.attempt,
            first_attempt_at=mark.first_attempt_at,
            outcome=Outcome.UNKNOWN,
        )
        await self.p.ledger.put_mark(self.c.org_id, self.c.email_id, m.key, done, last=revision)

    async def _mark_attempting(self, slots: Sequence[_Slot]) -> bool:
        """Mark recipients "attempting" before DATA; all or none (a lost race undoes the rest)."""
        c, ledger = self.c, self.p.ledger

        def attempting(slot: _Slot) -> RecipientMark:
            return RecipientMark(
                state=MarkState.ATTEMPTING, attempt=slot.attempt, first_attempt_at=slot.first_at
            )

        if len(slots) == 1:
            slot = slots[0]
            revisions = [
                await ledger.put_mark(
                    c.org_id, c.email_id, slot.mailbox.key, attempting(slot), last=slot.revision
                )
            ]
        else:
            # Written side by side: each is its own key, and all must be durable before DATA.
            revisions = await asyncio.gather(
                *(
                    ledger.put_mark(
                        c.org_id, c.email_id, s.mailbox.key, attempting(s), last=s.revision
                    )
                    for s in slots
                )
            )
        if all(r is not None for r in revisions):
            for slot, revision in zip(slots, revisions, strict=True):
                slot.revision = revision
            return True
        for undo, revision in zip(slots, revisions, strict=True):
            if revision is None:
                continue  # another writer holds this one: leave its mark alone
            # Back to "due now": nothing was sent to it.
            back = RecipientMark(
                state=MarkState.DEFERRED,
                attempt=undo.attempt - 1,
                first_attempt_at=undo.first_at,
                retry_at=self.now,
            )
            undo.revision = await ledger.put_mark(
                c.org_id, c.email_id, undo.mailbox.key, back, last=revision
            )
        return False

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
            if any(s.attempt == 1 for s in plan.due):
                await self._publish_sent([m.address for m in recipients], Transport.CRM_SERVERS)
            tracked = trackable(c.source, c.transport, len(c.recipients))
            shared = None if tracked else self._message(body, settings)
            by_domain: dict[str, list[_Slot]] = defaultdict(list)
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
        slots: list[_Slot],
        body: Body,
        settings: OrgSettings,
        shared: bytes | None,
        plan: _Plan,
    ) -> None:
        by_key = {s.mailbox.key: s for s in slots}
        envelopes = [
            Envelope(
                mail_from=verp_return_path(
                    self.p.keys,
                    org_id=self.c.org_id,
                    email_id=self.c.email_id,
                    recipient=s.mailbox.address,
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
            return await self._mark_attempting([by_key[m.key] for m in mailboxes])

        async def after(envelope: Envelope, attempt: Attempt) -> None:
            # Settled at once, not when the whole domain is done: a crash loses less.
            wait = await self._settle_direct(by_key[envelope.recipient.key], attempt)
            if wait is not None:
                plan.waits.append(wait)

        await self.p.direct.deliver(domain, envelopes, before_data, after)

    async def _settle_direct(self, slot: _Slot, attempt: Attempt) -> float | None:
        """Report one recipient's attempt and record it; the seconds until its retry, if any."""
        m = slot.mailbox
        verdict = attempt.verdict
        if verdict is Verdict.SKIPPED:
            return self.p.retry.base_s
        if verdict is Verdict.DELIVERED:
            await self.p.publish(
                EmailDelivered(
                    **self._envelope("delivered", m.key),
                    recipient=m.address,
                    reply_code=attempt.code,
                    reply=attempt.text,
                    remote_mta=attempt.remote_mta,
                )
            )
            await self._finish(slot, Outcome.DELIVERED)
            return None
        if verdict is Verdict.BOUNCED:
            reason, kind = attempt.classify()
            await self._publish_bounce(slot, attempt, reason=reason, kind=kind)
            await self._finish(slot, Outcome.BOUNCED)
            return None
        now = self.p.clock()
        retry_at = self.p.retry.next_retry(slot.attempt, slot.first_at, now)
        if retry_at is None:
            await self._publish_expired(slot, attempt, reason="expired")
            await self._finish(slot, Outcome.BOUNCED)
            return None
        await self.p.publish(
            EmailDeferred(
                **self._envelope("deferred", m.key, str(slot.attempt)),
                recipient=m.address,
                reply_code=attempt.code,
                status=attempt.status,
                diagnostic=attempt.diagnostic,
                remote_mta=attempt.remote_mta,
                attempt=slot.attempt,
                retry_at=retry_at,
            )
        )
        await self._defer(slot, retry_at)
        return max(0.0, (retry_at - now).total_seconds())

    async def _publish_bounce(
        self, slot: _Slot, attempt: Attempt, *, reason: str | None, kind: BounceKind
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

    async def _publish_expired(self, slot: _Slot, attempt: Attempt, *, reason: str | None) -> None:
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

    async def _finish(self, slot: _Slot, outcome: Outcome) -> None:
        done = RecipientMark(
            state=MarkState.DONE,
            attempt=slot.attempt,
            first_attempt_at=slot.first_at,
            outcome=outcome,
        )
        await self._write_mark(slot, done)

    async def _defer(self, slot: _Slot, retry_at: datetime) -> None:
        deferred = RecipientMark(
            state=MarkState.DEFERRED,
            attempt=slot.attempt,
            first_attempt_at=slot.first_at,
            retry_at=retry_at,
        )
        await self._write_mark(slot, deferred)

    async def _write_mark(self, slot: _Slot, mark: RecipientMark) -> None:
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
            return await self._mark_attempting([by_key[m.key] for m in mailboxes])

        attempts = await self.p.submission.submit(
            mailbox, mail_from, [s.mailbox for s in plan.due], message, before_data
        )
        submitted: list[_Slot] = []
        for slot, attempt in zip(plan.due, attempts, strict=True):
            verdict = attempt.verdict
            if verdict is Verdict.SKIPPED:
                plan.waits.append(self.p.retry.base_s)
            elif verdict is Verdict.DELIVERED:
                submitted.append(slot)
            elif verdict is Verdict.BOUNCED:
                # The mailbox's server saw the failure, not ours: no reason class to claim.
                _, kind = attempt.classify()
                await self._publish_bounce(slot, attempt, reason=None, kind=kind)
                await self._finish(slot, Outcome.BOUNCED)
            else:
                wait = await self._retry_submission(slot, attempt)
                if wait is not None:
                    plan.waits.append(wait)
        if submitted:
            await self._publish_sent(
                [s.mailbox.address for s in submitted], Transport.INTEGRATED_MAILBOX
            )
            for slot in submitted:
                await self._finish(slot, Outcome.SUBMITTED)
        return Retry(min(plan.waits)) if plan.waits else DONE

    async def _retry_submission(self, slot: _Slot, attempt: Attempt) -> float | None:
        # No EmailDeferred here: deferrals are reported only for mail our own servers deliver.
        now = self.p.clock()
        retry_at = self.p.retry.next_retry(slot.attempt, slot.first_at, now)
        if retry_at is None:
            await self._publish_expired(slot, attempt, reason=None)
            await self._finish(slot, Outcome.BOUNCED)
            return None
        log.info(
            "submission deferred",
            email_id=self.c.email_id,
            recipient=slot.mailbox.address,
            attempt=slot.attempt,
            diagnostic=attempt.diagnostic,
            retry_at=retry_at.isoformat(),
        )
        await self._defer(slot, retry_at)
        return max(0.0, (retry_at - now).total_seconds())
