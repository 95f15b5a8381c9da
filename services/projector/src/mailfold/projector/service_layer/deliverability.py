"""Deliverability metrics: how the mail does, counted from what each committed batch changed.

Every count is the difference between an email's state before a batch and after it, so an event
counts only when it changes the stored state: a redelivery, a repeated event id or a replay into
a scratch schema (which records no metrics) adds nothing. The pipeline calls `record` after the
batch's transaction committed. Label values come from closed vocabularies (sources, statuses,
bounce reasons, rejection codes); anything else is counted as "other", never as itself.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from prometheus_client import Counter, Histogram

from mailfold.events import EmailState
from mailfold.events.bounces import REASONS as BOUNCE_REASONS

# The reason codes of EmailRejected (the sender's rules); others are counted as "other".
REJECTION_REASONS: Final = frozenset(
    {
        "no_recipients",
        "invalid_address",
        "template_attachment_too_large",
        "attachments_too_large",
        "mailbox_not_configured",
        "content_missing",
        "duplicate_recipient",
        "daily_limit_reached",
    }
)
MILESTONES: Final = (
    "sent",
    "delivered",
    "bounced",
    "opened",
    "clicked",
    "received",
    "rejected",
    "complained",
)
NONE: Final = "none"  # the label of a missing value (no status yet, no origin yet)

EMAILS: Final = Counter(
    "mailfold_deliverability_emails_total",
    "Emails whose displayed status changed, by source and transition (from_status none: new).",
    ["source", "from_status", "to_status"],
)
MILESTONES_REACHED: Final = Counter(
    "mailfold_deliverability_milestones_total",
    "Emails that reached a milestone for the first time (sent, delivered, bounced, opened, "
    "clicked, received, rejected, complained), by source.",
    ["source", "milestone"],
)
BOUNCES: Final = Counter(
    "mailfold_deliverability_bounces_total",
    "Emails bounced, by the first bounce's reason and kind (hard, soft, undetermined).",
    ["reason", "kind"],
)
OPENS: Final = Counter(
    "mailfold_deliverability_opens_total",
    "Distinct opens applied, by source and verdict (human or machine).",
    ["source", "verdict"],
)
CLICKS: Final = Counter(
    "mailfold_deliverability_clicks_total",
    "Distinct clicks applied, by source and verdict (human or machine).",
    ["source", "verdict"],
)
COMPLAINTS: Final = Counter(
    "mailfold_deliverability_complaints_total",
    "Complaints (abuse reports) applied, by source.",
    ["source"],
)
REJECTIONS: Final = Counter(
    "mailfold_deliverability_rejections_total",
    "Emails rejected before sending, by reason code.",
    ["reason"],
)
VIOLATIONS: Final = Counter(
    "mailfold_deliverability_violations_total",
    "Events kept as policy violations, by their email's source and the violation's reason.",
    ["source", "reason"],
)
_SECONDS: Final = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400, 259200)
SENT_TO_DELIVERED: Final = Histogram(
    "mailfold_deliverability_sent_to_delivered_seconds",
    "Time from an email's sending to its delivery report.",
    buckets=_SECONDS,
)
SENT_TO_FIRST_OPEN: Final = Histogram(
    "mailfold_deliverability_sent_to_first_open_seconds",
    "Time from an email's sending to its first human open.",
    buckets=_SECONDS,
)


@dataclass(slots=True)
class Changes:
    """What a set of state changes adds to each deliverability metric (pure data)."""

    emails: Tally[tuple[str, str, str]] = field(default_factory=Tally)
    milestones: Tally[tuple[str, str]] = field(default_factory=Tally)
    bounces: Tally[tuple[str, str]] = field(default_factory=Tally)
    opens: Tally[tuple[str, str]] = field(default_factory=Tally)
    clicks: Tally[tuple[str, str]] = field(default_factory=Tally)
    complaints: Tally[str] = field(default_factory=Tally)
    rejections: Tally[str] = field(default_factory=Tally)
    violations: Tally[tuple[str, str]] = field(default_factory=Tally)
    to_delivered: list[float] = field(default_factory=list)
    to_first_open: list[float] = field(default_factory=list)

    def empty(self) -> bool:
        """True when nothing changed."""
        return not any(
            (
                self.emails,
                self.milestones,
                self.bounces,
                self.opens,
                self.clicks,
                self.complaints,
                self.rejections,
                self.violations,
                self.to_delivered,
                self.to_first_open,
            )
        )


def _milestone_at(state: EmailState, milestone: str) -> datetime | None:
    value: datetime | None = getattr(state, f"{milestone}_at")
    return value


def _gained(before: int, after: int) -> int:
    # A replaced origin can re-decide facts and lower a count; counters only go up.
    return max(after - before, 0)


def _became(
    before: EmailState, after: EmailState, start: str, end: str
) -> tuple[datetime, datetime] | None:
    """Both milestones known now, not both before: the pair's times."""
    a, b = _milestone_at(after, start), _milestone_at(after, end)
    if a is None or b is None:
        return None
    if _milestone_at(before, start) is not None and _milestone_at(before, end) is not None:
        return None
    return a, b


def diff(before: EmailState | None, after: EmailState, into: Changes) -> None:
    """Add what moving one email from `before` (None: new) to `after` changed."""
    old = before if before is not None else EmailState(email_id=after.email_id)
    source = after.source.value if after.source is not None else NONE
    if old.status != after.status and after.status is not None:
        from_status = NONE if old.status is None else old.status.value
        into.emails[(source, from_status, after.status.value)] += 1
    for milestone in MILESTONES:
        if _milestone_at(old, milestone) is None and _milestone_at(after, milestone) is not None:
            into.milestones[(source, milestone)] += 1
    if old.bounced_at is None and after.bounce is not None:
        reason = after.bounce.reason
        label = NONE if reason is None else reason if reason in BOUNCE_REASONS else "other"
        into.bounces[(label, after.bounce.kind.value)] += 1
    if old.rejected_at is None and after.rejection is not None:
        reason = after.rejection.reason
        into.rejections[reason if reason in REJECTION_REASONS else "other"] += 1
    for verdict, gained in (
        ("human", _gained(old.opens_human, after.opens_human)),
        ("machine", _gained(old.opens_machine, after.opens_machine)),
    ):
        if gained:
            into.opens[(source, verdict)] += gained
    for verdict, gained in (
        ("human", _gained(old.clicks_human, after.clicks_human)),
        ("machine", _gained(old.clicks_machine, after.clicks_machine)),
    ):
        if gained:
            into.clicks[(source, verdict)] += gained
    if gained := _gained(old.complaints, after.complaints):
        into.complaints[source] += gained
    if len(after.violations) != len(old.violations) or after.violations != old.violations:
        known = {v.event_id for v in old.violations}
        for violation in after.violations:
            if violation.event_id not in known:
                into.violations[(source, violation.reason.value)] += 1
    if (pair := _became(old, after, "sent", "delivered")) is not None:
        into.to_delivered.append(max((pair[1] - pair[0]).total_seconds(), 0.0))
    if (pair := _became(old, after, "sent", "opened")) is not None:
        into.to_first_open.append(max((pair[1] - pair[0]).total_seconds(), 0.0))


def changes(pairs: Iterable[tuple[EmailState | None, EmailState]]) -> Changes:
    """What a batch's (before, after) states add to the metrics."""
    out = Changes()
    for before, after in pairs:
        diff(before, after, out)
    return out


def record(pairs: Iterable[tuple[EmailState | None, EmailState]]) -> Changes:
    """Count a committed batch's state changes into the metrics; returns what was counted."""
    found = changes(pairs)
    for (source, from_status, to_status), n in found.emails.items():
        EMAILS.labels(source, from_status, to_status).inc(n)
    for (source, milestone), n in found.milestones.items():
        MILESTONES_REACHED.labels(source, milestone).inc(n)
    for (reason, kind), n in found.bounces.items():
        BOUNCES.labels(reason, kind).inc(n)
    for (source, verdict), n in found.opens.items():
        OPENS.labels(source, verdict).inc(n)
    for (source, verdict), n in found.clicks.items():
        CLICKS.labels(source, verdict).inc(n)
    for source, n in found.complaints.items():
        COMPLAINTS.labels(source).inc(n)
    for reason, n in found.rejections.items():
        REJECTIONS.labels(reason).inc(n)
    for (source, reason), n in found.violations.items():
        VIOLATIONS.labels(source, reason).inc(n)
    for seconds in found.to_delivered:
        SENT_TO_DELIVERED.observe(seconds)
    for seconds in found.to_first_open:
        SENT_TO_FIRST_OPEN.observe(seconds)
    return found
