"""Admitting a mass email: the recipients it may go to (campaign dedup) within the daily limit.

The decision is pinned in the ledger before it is made and recorded once made, so a redelivered
email is admitted the same way however often it comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

from mailfold.events import EmailComposed
from mailfold.runtime.directory import OrgSettings
from mailfold.sender.domain import rules
from mailfold.sender.domain.addresses import Mailbox
from mailfold.sender.domain.rules import RejectReason, RuleViolation
from mailfold.sender.domain.state import Admission
from mailfold.sender.service_layer.ports import Ledger

Reject = Callable[[RuleViolation], Awaitable[None]]


async def admit(
    c: EmailComposed,
    recipients: list[Mailbox],
    settings: OrgSettings,
    *,
    ledger: Ledger,
    now: datetime,
    reject: Reject,
) -> list[Mailbox]:
    """The recipients a mass email may go to: not yet mailed in its campaign, within the limit."""
    pinned = await ledger.admission(c.org_id, c.email_id)
    if pinned is None:
        day = rules.local_day(now, settings.time_zone)
        pinned = await ledger.pin_admission(c.org_id, c.email_id, Admission(day=day))
    admission, revision = pinned
    if not admission.decided:
        admission = await _decide(
            c, admission, revision, recipients, settings, ledger=ledger, reject=reject
        )
    admitted = {a.lower() for a in admission.recipients}
    return [m for m in recipients if m.key in admitted]


async def _decide(
    c: EmailComposed,
    admission: Admission,
    revision: int,
    recipients: list[Mailbox],
    settings: OrgSettings,
    *,
    ledger: Ledger,
    reject: Reject,
) -> Admission:
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
        await reject(
            RuleViolation(
                RejectReason.DUPLICATE_RECIPIENT,
                f"{m.address} already gets this mass email (campaign {campaign}); "
                "a mass email never goes twice to the same address",
                recipient=m.address,
            )
        )
    if limit_reached:
        zone = settings.time_zone
        await reject(
            RuleViolation(
                RejectReason.DAILY_LIMIT_REACHED,
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
