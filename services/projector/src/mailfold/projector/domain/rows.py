"""The rows the projection stores, derived from an email's folded state (pure)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from mailfold.events import SOURCES, Decision, EmailComposed, EmailState, Ruling
from mailfold.projector.domain.messages import Accepted

EVENT_COLUMNS: Final = (
    "event_id",
    "stream_seq",
    "subject",
    "type",
    "org_id",
    "email_id",
    "occurred_at",
    "payload",
    "decision",
    "reason",
    "detail",
)

EMAIL_COLUMNS: Final = (
    "email_id",
    "org_id",
    "subject",
    "direction",
    "source",
    "source_display",
    "transport",
    "crm_originated",
    "status",
    "from_addr",
    "to_addrs",
    "cc_addrs",
    "email_at",
    "composed_at",
    "sent_at",
    "delivered_at",
    "bounced_at",
    "opened_at",
    "clicked_at",
    "received_at",
    "rejected_at",
    "deleted_at",
    "complained_at",
    "first_machine_open_at",
    "opens_human",
    "opens_machine",
    "clicks_human",
    "clicks_machine",
    "deferrals",
    "complaints",
    "bounce_recipient",
    "bounce_kind",
    "bounce_status",
    "bounce_reply_code",
    "bounce_reason",
    "bounce_diagnostic",
    "bounce_reporting_mta",
    "rejection_reason",
    "rejection_detail",
    "waiting_count",
    "violation_count",
    "event_count",
    "state",
    "updated_seq",
    "campaign_id",
)

RECORD_COLUMNS: Final = ("email_id", "module", "record_id", "org_id")

EventRow = tuple[Any, ...]
EmailRow = tuple[Any, ...]
RecordRow = tuple[str, str, str, str]
DecisionRow = tuple[str, str, str | None, str]


def event_row(item: Accepted, ruling: Ruling) -> EventRow:
    """One `events` row, in EVENT_COLUMNS order."""
    event = item.event
    subject = item.subject
    return (
        event.event_id,
        item.seq,
        subject,
        subject[subject.rfind(".") + 1 :],  # checked to be the event's type on arrival
        event.org_id,
        event.email_id,
        event.occurred_at,
        item.payload,
        # The enums are str subclasses: stored as their values without a lookup per event.
        ruling.decision,
        ruling.reason,
        ruling.detail,
    )


def decision_row(event_id: str, ruling: Ruling) -> DecisionRow:
    """A changed decision of an event already stored: (event_id, decision, reason, detail)."""
    return (
        event_id,
        ruling.decision.value,
        None if ruling.reason is None else ruling.reason.value,
        ruling.detail,
    )


def email_org(state: EmailState) -> str:
    """The email's org: its origin's, or while it waits for one, that of its earliest event."""
    if state.origin is not None:
        return state.origin.org_id
    return min(state.facts, key=lambda f: f.event_id).org_id


def email_time(state: EmailState) -> datetime:
    """What the timeline sorts by: sent, else received, else composed (first event while waiting)."""
    if state.sent_at is not None:
        return state.sent_at
    if state.received_at is not None:
        return state.received_at
    if state.origin is not None:
        return state.origin.occurred_at
    return min(f.occurred_at for f in state.facts)


def email_row(state: EmailState, encoded: bytes, seq: int) -> EmailRow:
    """One `emails` row, in EMAIL_COLUMNS order; `encoded` is `encode_state(state)`."""
    origin = state.origin
    bounce = state.bounce
    rejection = state.rejection
    if origin is not None:
        info = SOURCES[origin.source]
        described: tuple[Any, ...] = (
            origin.org_id,
            origin.subject,
            state.direction.value if state.direction else None,
            origin.source.value,
            info.display,
            origin.transport.value,
            info.crm_originated,
            None if state.status is None else state.status.value,
            origin.from_addr,
            list(origin.to),
            list(origin.cc),
            email_time(state),
            origin.occurred_at,
        )
    else:
        described = (
            email_org(state),
            None,
            None,
            None,
            None,
            None,
            False,
            None,
            None,
            [],
            [],
            email_time(state),
            None,
        )
    return (
        state.email_id,
        *described,
        state.sent_at,
        state.delivered_at,
        state.bounced_at,
        state.opened_at,
        state.clicked_at,
        state.received_at,
        state.rejected_at,
        state.deleted_at,
        state.complained_at,
        state.first_machine_open_at,
        state.opens_human,
        state.opens_machine,
        state.clicks_human,
        state.clicks_machine,
        state.deferrals,
        state.complaints,
        None if bounce is None else bounce.recipient,
        None if bounce is None else bounce.kind.value,
        None if bounce is None else bounce.status,
        None if bounce is None else bounce.reply_code,
        None if bounce is None else bounce.reason,
        None if bounce is None else bounce.diagnostic,
        None if bounce is None else bounce.reporting_mta,
        None if rejection is None else rejection.reason,
        None if rejection is None else rejection.detail,
        state.waiting,
        len(state.violations),
        len(state.seen),
        encoded,
        seq,
        origin.campaign_id if isinstance(origin, EmailComposed) else None,
    )


def record_rows(state: EmailState) -> list[RecordRow]:
    """The email's links to CRM records, from its origin, each once."""
    origin = state.origin
    if origin is None:
        return []
    links = {(r.module.value, r.record_id) for r in origin.records}
    return [(state.email_id, module, record, origin.org_id) for module, record in sorted(links)]


WAITING: Final = Ruling(decision=Decision.WAITING)
APPLIED: Final = Ruling(decision=Decision.APPLIED)
