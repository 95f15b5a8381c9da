"""The pure fold from events to one email's state: a merge, indifferent to order and repeats.

`apply(state, event)` keeps every distinct event (by event_id) and derives the view from them with
commutative, idempotent merges (first times are minima, counts count distinct events, the status is
the highest-ranked applied status). Whatever the order of the same events, the state is the same;
an event seen twice changes nothing. Non-origin events that arrive before their email's origin
wait; when the origin arrives, the policy decides for each whether it applies or is a violation.
"""

from __future__ import annotations

import bisect
import enum
import functools
import operator
from datetime import datetime
from typing import Final

import msgspec

from mailfold.events.events import (
    AnyEvent,
    EmailBounced,
    EmailCaptured,
    EmailClicked,
    EmailComplained,
    EmailComposed,
    EmailDeferred,
    EmailDeleted,
    EmailDelivered,
    EmailOpened,
    EmailReceived,
    EmailRejected,
    EmailSent,
    Origin,
)
from mailfold.events.model import (
    SOURCES,
    STATUS_RANK,
    BounceKind,
    Direction,
    Source,
    Status,
    Transport,
    Verdict,
)
from mailfold.events.policy import PolicyRow, can_be_rejected, policy_row

Fact = (
    EmailRejected
    | EmailSent
    | EmailDeferred
    | EmailDelivered
    | EmailBounced
    | EmailComplained
    | EmailOpened
    | EmailClicked
    | EmailDeleted
)

# The status each kind of fact claims; facts absent here claim none (deferrals, complaints, deletions).
CLAIMED_STATUS: Final[dict[type[msgspec.Struct], Status]] = {
    EmailSent: Status.SENT,
    EmailDelivered: Status.DELIVERED,
    EmailBounced: Status.BOUNCED,
    EmailOpened: Status.OPENED,
    EmailClicked: Status.CLICKED,
    EmailRejected: Status.REJECTED,
    EmailReceived: Status.RECEIVED,
}


class Decision(enum.StrEnum):
    """What the fold did with an event."""

    APPLIED = "applied"
    WAITING = "waiting"
    VIOLATION = "violation"


class ViolationReason(enum.StrEnum):
    """Why an event was kept for audit but not applied."""

    UNREACHABLE_STATUS = "unreachable_status"
    NOT_DELIVERED_BY_CRM = "not_delivered_by_crm"
    NOT_REJECTABLE = "not_rejectable"
    ORG_MISMATCH = "org_mismatch"
    DUPLICATE_ORIGIN = "duplicate_origin"


class Ruling(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The decision on one event, with the reason and a sentence for people when it is a violation."""

    decision: Decision
    reason: ViolationReason | None = None
    detail: str = ""


class Violation(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An event that claimed what its email cannot be; kept for audit, never changes the status."""

    event_id: str
    event_type: str
    reason: ViolationReason
    detail: str


class BounceInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Details of the earliest applied bounce."""

    event_id: str
    recipient: str
    kind: BounceKind
    status: str | None = None
    reply_code: int | None = None
    reason: str | None = None
    diagnostic: str | None = None
    reporting_mta: str | None = None


class Rejection(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Details of the earliest applied rejection."""

    event_id: str
    reason: str
    detail: str = ""
    recipient: str | None = None


class EmailState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One email as the events say it is. Everything below `seen` is derived from the events."""

    email_id: str
    origin: Origin | None = None
    facts: tuple[Fact, ...] = ()  # every distinct non-origin event, sorted by event_id
    other_origins: tuple[Origin, ...] = ()  # competing origins that lost (larger event_id)
    seen: frozenset[str] = frozenset()

    status: Status | None = None
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    bounced_at: datetime | None = None
    opened_at: datetime | None = None
    clicked_at: datetime | None = None
    received_at: datetime | None = None
    rejected_at: datetime | None = None
    deleted_at: datetime | None = None
    complained_at: datetime | None = None
    first_machine_open_at: datetime | None = None
    opens_human: int = 0
    opens_machine: int = 0
    clicks_human: int = 0
    clicks_machine: int = 0
    deferrals: int = 0
    complaints: int = 0
    bounce: BounceInfo | None = None
    rejection: Rejection | None = None
    waiting: int = 0
    violations: tuple[Violation, ...] = ()

    @property
    def org_id(self) -> str | None:
        """The org the email belongs to, known once its origin arrived."""
        return None if self.origin is None else self.origin.org_id

    @property
    def source(self) -> Source | None:
        """The email's source, known once its origin arrived."""
        return None if self.origin is None else self.origin.source

    @property
    def direction(self) -> Direction | None:
        """Incoming for received mail, outgoing for everything else."""
        if self.origin is None:
            return None
        if isinstance(self.origin, EmailReceived):
            return Direction.INCOMING
        return Direction.OUTGOING

    @property
    def crm_originated(self) -> bool:
        """True for mail sent from within the CRM (the "Sent from CRM" filter)."""
        return self.origin is not None and SOURCES[self.origin.source].crm_originated


def empty(email_id: str) -> EmailState:
    """The state of an email no event has been seen for."""
    return EmailState(email_id=email_id)


@functools.lru_cache(maxsize=1024)
def _row(source: Source, transport: Transport, recipients: int) -> PolicyRow:
    return policy_row(source, transport, recipients)


APPLIED: Final = Ruling(decision=Decision.APPLIED)
WAITING: Final = Ruling(decision=Decision.WAITING)


def decide(origin: Origin, event: AnyEvent) -> Ruling:
    """The policy's decision on one event of an email whose origin is known."""
    if event.org_id != origin.org_id:
        return Ruling(
            decision=Decision.VIOLATION,
            reason=ViolationReason.ORG_MISMATCH,
            detail=f"event of org {event.org_id!r} for an email of org {origin.org_id!r}",
        )
    row = _row(origin.source, origin.transport, len(origin.recipients))
    kind = type(event)
    if kind is EmailRejected:
        if can_be_rejected(origin.source):
            return APPLIED
        return Ruling(
            decision=Decision.VIOLATION,
            reason=ViolationReason.NOT_REJECTABLE,
            detail=f"{SOURCES[origin.source].display} mail is not sent by the CRM, "
            "so it cannot be rejected before sending",
        )
    if kind is EmailDeferred or kind is EmailComplained:
        if Status.DELIVERED in row.reachable:
            return APPLIED
        return Ruling(
            decision=Decision.VIOLATION,
            reason=ViolationReason.NOT_DELIVERED_BY_CRM,
            detail=f"{event.event_type} is only reported for mail the CRM's servers deliver "
            f"({row.description})",
        )
    claimed = CLAIMED_STATUS.get(kind)
    if claimed is not None and claimed not in row.reachable:
        reachable = "/".join(s.value for s in sorted(row.reachable, key=STATUS_RANK.__getitem__))
        display = SOURCES[origin.source].display
        return Ruling(
            decision=Decision.VIOLATION,
            reason=ViolationReason.UNREACHABLE_STATUS,
            detail=f"{claimed} is not reachable for {display} mail ({row.description}: {reachable})",
        )
    return APPLIED


def _min(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b < a else a


def _higher(current: Status | None, candidate: Status) -> Status:
    if current is None or STATUS_RANK[candidate] > STATUS_RANK[current]:
        return candidate
    return current


def _merge(state: EmailState, event: AnyEvent, verdict: Ruling) -> EmailState:
    """Merge one decided event into the derived view; every branch commutes with every other."""
    if verdict.decision is Decision.VIOLATION:
        assert verdict.reason is not None
        violation = Violation(
            event_id=event.event_id,
            event_type=event.event_type,
            reason=verdict.reason,
            detail=verdict.detail,
        )
        ordered = sorted((*state.violations, violation), key=lambda v: v.event_id)
        return msgspec.structs.replace(state, violations=tuple(ordered))
    at = event.occurred_at
    match event:
        case EmailSent():
            return msgspec.structs.replace(
                state, sent_at=_min(state.sent_at, at), status=_higher(state.status, Status.SENT)
            )
        case EmailDelivered():
            return msgspec.structs.replace(
                state,
                delivered_at=_min(state.delivered_at, at),
                status=_higher(state.status, Status.DELIVERED),
            )
        case EmailBounced():
            bounce = state.bounce
            first = state.bounced_at is None or (at, event.event_id) < (
                state.bounced_at,
                bounce.event_id if bounce else "",
            )
            if first:
                bounce = BounceInfo(
                    event_id=event.event_id,
                    recipient=event.recipient,
                    kind=event.kind,
                    status=event.status,
                    reply_code=event.reply_code,
                    reason=event.reason,
                    diagnostic=event.diagnostic,
                    reporting_mta=event.reporting_mta,
                )
            return msgspec.structs.replace(
                state,
                bounced_at=_min(state.bounced_at, at),
                bounce=bounce,
                status=_higher(state.status, Status.BOUNCED),
            )
        case EmailOpened():
            if event.verdict is Verdict.MACHINE:
                return msgspec.structs.replace(
                    state,
                    opens_machine=state.opens_machine + 1,
                    first_machine_open_at=_min(state.first_machine_open_at, at),
                )
            return msgspec.structs.replace(
                state,
                opens_human=state.opens_human + 1,
                opened_at=_min(state.opened_at, at),
                status=_higher(state.status, Status.OPENED),
            )
        case EmailClicked():
            if event.verdict is Verdict.MACHINE:
                return msgspec.structs.replace(state, clicks_machine=state.clicks_machine + 1)
            # A click implies an open: the first open is no later than the first click.
            return msgspec.structs.replace(
                state,
                clicks_human=state.clicks_human + 1,
                clicked_at=_min(state.clicked_at, at),
                opened_at=_min(state.opened_at, at),
                status=_higher(state.status, Status.CLICKED),
            )
        case EmailRejected():
            rejection = state.rejection
            if state.rejected_at is None or (at, event.event_id) < (
                state.rejected_at,
                rejection.event_id if rejection else "",
            ):
                rejection = Rejection(
                    event_id=event.event_id,
                    reason=event.reason,
                    detail=event.detail,
                    recipient=event.recipient,
                )
            return msgspec.structs.replace(
                state,
                rejected_at=_min(state.rejected_at, at),
                rejection=rejection,
                status=_higher(state.status, Status.REJECTED),
            )
        case EmailDeferred():
            return msgspec.structs.replace(state, deferrals=state.deferrals + 1)
        case EmailComplained():
            return msgspec.structs.replace(
                state,
                complaints=state.complaints + 1,
                complained_at=_min(state.complained_at, at),
            )
        case EmailDeleted():
            return msgspec.structs.replace(state, deleted_at=_min(state.deleted_at, at))
        case EmailReceived():
            return msgspec.structs.replace(
                state,
                received_at=_min(state.received_at, at),
                status=_higher(state.status, Status.RECEIVED),
            )
        case EmailComposed() | EmailCaptured():
            return state
    raise TypeError(f"unknown event {type(event).__name__}")  # pragma: no cover


def _derive(
    email_id: str,
    origin: Origin | None,
    facts: tuple[Fact, ...],
    other_origins: tuple[Origin, ...],
    seen: frozenset[str],
) -> EmailState:
    """The derived view from scratch: used when the origin appears or changes."""
    state = EmailState(
        email_id=email_id, origin=origin, facts=facts, other_origins=other_origins, seen=seen
    )
    if origin is None:
        return msgspec.structs.replace(state, waiting=len(facts))
    state = _merge(state, origin, decide(origin, origin))
    for loser in other_origins:
        state = _merge(state, loser, _duplicate_origin(origin, loser))
    for fact in facts:
        state = _merge(state, fact, decide(origin, fact))
    return state


def _duplicate_origin(winner: Origin, loser: Origin) -> Ruling:
    return Ruling(
        decision=Decision.VIOLATION,
        reason=ViolationReason.DUPLICATE_ORIGIN,
        detail=f"the email already has its origin {winner.event_id} ({winner.event_type})",
    )


_EVENT_ID: Final = operator.attrgetter("event_id")


def apply(state: EmailState, event: AnyEvent) -> EmailState:
    """Fold one event into an email's state. Pure; order-independent; idempotent."""
    if event.email_id != state.email_id:
        raise ValueError(
            f"event {event.event_id} is for email {event.email_id}, not {state.email_id}"
        )
    if event.event_id in state.seen:
        return state
    seen = state.seen | {event.event_id}
    if isinstance(event, EmailComposed | EmailCaptured | EmailReceived):
        current = state.origin
        if current is None or event.event_id < current.event_id:
            losers = state.other_origins if current is None else (*state.other_origins, current)
            ordered = tuple(sorted(losers, key=lambda o: o.event_id))
            return _derive(state.email_id, event, state.facts, ordered, seen)
        ordered = tuple(sorted((*state.other_origins, event), key=lambda o: o.event_id))
        state = msgspec.structs.replace(state, other_origins=ordered, seen=seen)
        return _merge(state, event, _duplicate_origin(current, event))
    facts = list(state.facts)
    bisect.insort(facts, event, key=_EVENT_ID)
    state = msgspec.structs.replace(state, facts=tuple(facts), seen=seen)
    if state.origin is None:
        return msgspec.structs.replace(state, waiting=state.waiting + 1)
    return _merge(state, event, decide(state.origin, event))


def fold(events: list[AnyEvent] | tuple[AnyEvent, ...], email_id: str) -> EmailState:
    """Fold a whole history for one email."""
    state = empty(email_id)
    for event in events:
        state = apply(state, event)
    return state


def decisions(state: EmailState) -> dict[str, Ruling]:
    """The decision on every event the state holds, by event id (what the history shows)."""
    out: dict[str, Ruling] = {}
    origin = state.origin
    if origin is None:
        for fact in state.facts:
            out[fact.event_id] = WAITING
        return out
    out[origin.event_id] = decide(origin, origin)
    for loser in state.other_origins:
        out[loser.event_id] = _duplicate_origin(origin, loser)
    for fact in state.facts:
        out[fact.event_id] = decide(origin, fact)
    return out


STATE_ENCODER: Final = msgspec.msgpack.Encoder()
STATE_DECODER: Final = msgspec.msgpack.Decoder(EmailState)


def encode_state(state: EmailState) -> bytes:
    """A compact binary form of a state, for storage."""
    return STATE_ENCODER.encode(state)


def decode_state(data: bytes) -> EmailState:
    """The inverse of `encode_state`."""
    return STATE_DECODER.decode(data)
