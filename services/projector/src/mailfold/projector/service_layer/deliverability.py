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

from mailfold.bounces import REASONS as BOUNCE_REASONS
from mailfold.events import EmailState

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
        "record_attachment_quota",
    }
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


_NEW: Final = EmailState(email_id="")  # what an email is before its first event


def _seconds(start: datetime, end: datetime) -> float:
    return max((end - start).total_seconds(), 0.0)


def diff(before: EmailState | None, after: EmailState, into: Changes) -> None:
    """Add what moving one email from `before` (None: new) to `after` changed.

    Runs once per touched email per batch on the projector's hot path: plain attribute reads,
    no reflection.
    """
    old = _NEW if before is None else before
    origin = after.origin
    source: str = NONE if origin is None else origin.source  # a StrEnum: its value
    status = after.status
    if status is not None and status != old.status:
        previous = old.status
        into.emails[(source, NONE if previous is None else previous, status)] += 1
    milestones = into.milestones
    sent = after.sent_at
    if sent is not None and old.sent_at is None:
        milestones[(source, "sent")] += 1
    delivered = after.delivered_at
    if delivered is not None and old.delivered_at is None:
        milestones[(source, "delivered")] += 1
    opened = after.opened_at
    if opened is not None and old.opened_at is None:
        milestones[(source, "opened")] += 1
    if after.clicked_at is not None and old.clicked_at is None:
        milestones[(source, "clicked")] += 1
    if after.received_at is not None and old.received_at is None:
        milestones[(source, "received")] += 1
    if after.complained_at is not None and old.complained_at is None:
        milestones[(source, "complained")] += 1
    bounce = after.bounce
    if after.bounced_at is not None and old.bounced_at is None:
        milestones[(source, "bounced")] += 1
        if bounce is not None:
            reason = bounce.reason
            label = NONE if reason is None else reason if reason in BOUNCE_REASONS else "other"
            into.bounces[(label, bounce.kind)] += 1
    rejection = after.rejection
    if after.rejected_at is not None and old.rejected_at is None:
        milestones[(source, "rejected")] += 1
        if rejection is not None:
            reason = rejection.reason
            into.rejections[reason if reason in REJECTION_REASONS else "other"] += 1
    # A replaced origin can re-decide facts and lower a count; counters only go up.
    if after.opens_human > old.opens_human:
        into.opens[(source, "human")] += after.opens_human - old.opens_human
    if after.opens_machine > old.opens_machine:
        into.opens[(source, "machine")] += after.opens_machine - old.opens_machine
    if after.clicks_human > old.clicks_human:
        into.clicks[(source, "human")] += after.clicks_human - old.clicks_human
    if after.clicks_machine > old.clicks_machine:
        into.clicks[(source, "machine")] += after.clicks_machine - old.clicks_machine
    if after.complaints > old.complaints:
        into.complaints[source] += after.complaints - old.complaints
    if after.violations is not old.violations and after.violations != old.violations:
        known = {v.event_id for v in old.violations}
        for violation in after.violations:
            if violation.event_id not in known:
                into.violations[(source, violation.reason)] += 1
    # A pair of times is observed when both are known for the first time.
    if sent is not None:
        if delivered is not None and (old.sent_at is None or old.delivered_at is None):
            into.to_delivered.append(_seconds(sent, delivered))
        if opened is not None and (old.sent_at is None or old.opened_at is None):
            into.to_first_open.append(_seconds(sent, opened))


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
