"""The rows the projection stores, derived from an email's folded state (pure)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Any, Final

from mailfold.events import SOURCES, Decision, EmailComposed, EmailState, Ruling
from mailfold.projector.domain.messages import ValidEvent

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

RECORD_COLUMNS: Final = ("email_id", "module", "record_id", "org_id")

EventRow = tuple[Any, ...]
EmailRow = tuple[Any, ...]
RecordRow = tuple[str, str, str, str]
DecisionRow = tuple[str, str, str | None, str]


def event_row(item: ValidEvent, ruling: Ruling) -> EventRow:
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


@dataclass(frozen=True, slots=True)
class Column:
    """One column of `emails`: how the fold's state gives its value (the name of a state
    attribute, or a function of the state), and where the query API shows it (`api`: a key, or
    `group.key` for a nested object; None: not shown)."""

    name: str
    value: str | Callable[[EmailState], Any]
    api: str | None
    detail_only: bool = False  # shown in the email's detail, not in a related-list entry


def _column(name: str, api: str | None = None, *, detail_only: bool = False) -> Column:
    """A column holding the state's attribute of the same name."""
    return Column(name, name, name if api is None else api, detail_only)


def _part_column(
    part: str, key: str, path: str | None = None, *, detail_only: bool = False
) -> Column:
    """`<part>_<key>`: the `path` (default `key`) of a part of the state (`bounce`, `rejection`),
    null while the state has none; the API shows it as `<part>.<key>`."""
    get_part, get = attrgetter(part), attrgetter(path or key)

    def value(state: EmailState) -> Any:
        held = get_part(state)
        return None if held is None else get(held)

    return Column(f"{part}_{key}", value, f"{part}.{key}", detail_only)


# The one definition of an email's projected shape: the `emails` table's columns (each needs a
# migration), the query API's item in this key order, and the export. `state` and `updated_seq`
# follow these, written by `email_row` from the encoded state and the batch's position.
EMAIL_SHAPE: Final = (
    _column("email_id"),
    Column("subject", lambda s: None if s.origin is None else s.origin.subject, "subject"),
    Column(
        "direction",
        lambda s: None if s.origin is None or s.direction is None else s.direction.value,
        "direction",
    ),
    Column(
        "source_display",
        lambda s: None if s.origin is None else SOURCES[s.origin.source].display,
        "source",
    ),
    Column(
        "status",
        lambda s: None if s.origin is None or s.status is None else s.status.value,
        "status",
    ),
    Column("from_addr", lambda s: None if s.origin is None else s.origin.from_addr, "from"),
    Column("to_addrs", lambda s: [] if s.origin is None else list(s.origin.to), "to"),
    Column("email_at", email_time, "email_at"),
    _column("sent_at"),
    _column("delivered_at"),
    _column("bounced_at"),
    _column("opened_at"),
    _column("opens_human", "opens.human"),
    _column("opens_machine", "opens.machine"),
    _column("clicked_at"),
    _column("clicks_human", "clicks.human"),
    _column("clicks_machine", "clicks.machine"),
    _column("received_at"),
    _part_column("bounce", "recipient"),
    _part_column("bounce", "kind", "kind.value"),
    _part_column("bounce", "status"),
    _part_column("bounce", "reply_code"),
    _part_column("bounce", "reason"),
    _part_column("bounce", "diagnostic"),
    _part_column("bounce", "reporting_mta", detail_only=True),
    Column("org_id", email_org, "org_id", True),
    Column(
        "source", lambda s: None if s.origin is None else s.origin.source.value, "source_code", True
    ),
    Column(
        "transport",
        lambda s: None if s.origin is None else s.origin.transport.value,
        "transport",
        True,
    ),
    Column(
        "crm_originated",
        "crm_originated",
        "crm_originated",
        True,
    ),
    Column("cc_addrs", lambda s: [] if s.origin is None else list(s.origin.cc), "cc", True),
    Column(
        "composed_at",
        lambda s: None if s.origin is None else s.origin.occurred_at,
        "composed_at",
        True,
    ),
    _column("rejected_at", detail_only=True),
    _column("deleted_at", detail_only=True),
    _column("complained_at", detail_only=True),
    _column("first_machine_open_at", detail_only=True),
    _column("deferrals", detail_only=True),
    _column("complaints", detail_only=True),
    _part_column("rejection", "reason", detail_only=True),
    _part_column("rejection", "detail", detail_only=True),
    Column("waiting_count", "waiting", "waiting", True),
    Column("violation_count", lambda s: len(s.violations), "violations", True),
    Column("event_count", lambda s: len(s.seen), "events", True),
    Column(
        "campaign_id",
        lambda s: s.origin.campaign_id if isinstance(s.origin, EmailComposed) else None,
        "campaign_id",
        True,
    ),
)
# A nested object of the API item is null while the column it hangs on is.
API_GROUP_PRESENT: Final = {"bounce": "bounced_at", "rejection": "rejected_at"}
# Rows hold the attribute columns first, read by one attrgetter: a row is built per email per
# batch, and one C call is cheaper than a Python call per column.
_READ: Final = [c for c in EMAIL_SHAPE if isinstance(c.value, str)]
_COMPUTED: Final = [c for c in EMAIL_SHAPE if not isinstance(c.value, str)]
EMAIL_COLUMNS: Final = (*(c.name for c in _READ + _COMPUTED), "state", "updated_seq")
_READ_VALUES: Final = attrgetter(*(c.value for c in _READ if isinstance(c.value, str)))
_COMPUTE: Final = tuple(c.value for c in _COMPUTED if not isinstance(c.value, str))


def email_row(state: EmailState, encoded: bytes, seq: int) -> EmailRow:
    """One `emails` row, in EMAIL_COLUMNS order; `encoded` is `encode_state(state)`."""
    return (*_READ_VALUES(state), *[compute(state) for compute in _COMPUTE], encoded, seq)


def record_rows(state: EmailState) -> list[RecordRow]:
    """The email's links to CRM records, from its origin, each once."""
    origin = state.origin
    if origin is None:
        return []
    links = {(r.module.value, r.record_id) for r in origin.records}
    return [(state.email_id, module, record, origin.org_id) for module, record in sorted(links)]


WAITING: Final = Ruling(decision=Decision.WAITING)
APPLIED: Final = Ruling(decision=Decision.APPLIED)
