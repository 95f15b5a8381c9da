"""The recipient marks of one email: who is due now, and "attempting" written before DATA.

A mark follows the event it records; "attempting" is written (all or none) before the message is
handed over, so a sender that stops in between leaves a mark that says so (docs/sender.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from mailfold.events import EmailComposed
from mailfold.sender import metrics
from mailfold.sender.domain.addresses import Mailbox
from mailfold.sender.domain.state import MarkState, RecipientMark, RecipientOutcome
from mailfold.sender.service_layer.ports import Ledger

log = structlog.get_logger("mailfold.sender")


@dataclass(slots=True)
class Slot:
    """One recipient due for an attempt now."""

    mailbox: Mailbox
    attempt: int
    first_at: datetime
    revision: int | None  # the mark's revision; None when it has no mark yet


@dataclass(slots=True)
class AttemptPlan:
    """Which recipients to try now, and how long until the earliest of the others is due."""

    due: list[Slot] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)


async def plan_attempts(
    c: EmailComposed,
    recipients: Sequence[Mailbox],
    *,
    ledger: Ledger,
    now: datetime,
    redelivered: bool,
) -> AttemptPlan:
    """Sort recipients into due now, waiting, or finished (marks from earlier deliveries)."""
    plan = AttemptPlan()
    if not redelivered:
        plan.due = [Slot(m, 1, now, None) for m in recipients]
        return plan
    found = await asyncio.gather(*(ledger.mark(c.org_id, c.email_id, m.key) for m in recipients))
    for m, entry in zip(recipients, found, strict=True):
        if entry is None:
            plan.due.append(Slot(m, 1, now, None))
            continue
        mark, revision = entry
        if mark.state is MarkState.DONE:
            continue
        if mark.state is MarkState.ATTEMPTING:
            await unknown_outcome(c, m, mark, revision, ledger=ledger)
            continue
        retry_at = mark.retry_at or now
        if retry_at <= now:
            plan.due.append(Slot(m, mark.attempt + 1, mark.first_attempt_at, revision))
        else:
            plan.waits.append((retry_at - now).total_seconds())
    return plan


async def unknown_outcome(
    c: EmailComposed, m: Mailbox, mark: RecipientMark, revision: int, *, ledger: Ledger
) -> None:
    """A recipient left "attempting" by a sender that stopped after DATA: done, outcome unknown."""
    metrics.UNKNOWN_OUTCOMES.inc()
    log.warning(
        "delivery outcome unknown: the sender stopped after handing the message over; "
        "not sending it again",
        email_id=c.email_id,
        org_id=c.org_id,
        recipient=m.address,
        attempt=mark.attempt,
    )
    done = RecipientMark(
        state=MarkState.DONE,
        attempt=mark.attempt,
        first_attempt_at=mark.first_attempt_at,
        outcome=RecipientOutcome.UNKNOWN,
    )
    await ledger.put_mark(c.org_id, c.email_id, m.key, done, last=revision)


async def mark_attempting(
    c: EmailComposed, slots: Sequence[Slot], *, ledger: Ledger, now: datetime
) -> bool:
    """Mark recipients "attempting" before DATA; all or none (a lost race undoes the rest)."""

    def attempting(slot: Slot) -> RecipientMark:
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
                ledger.put_mark(c.org_id, c.email_id, s.mailbox.key, attempting(s), last=s.revision)
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
            retry_at=now,
        )
        undo.revision = await ledger.put_mark(
            c.org_id, c.email_id, undo.mailbox.key, back, last=revision
        )
    return False
