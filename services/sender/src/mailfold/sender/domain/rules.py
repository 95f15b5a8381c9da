"""What the sender refuses before sending, and the keys of the limits it keeps.

Every rule here is pure: the handler feeds it the composed email, the org's settings and the time.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mailfold.events import SOURCES, EmailComposed, Source, Transport
from mailfold.sender.domain.addresses import InvalidAddress, Mailbox, parse_mailbox

MB: Final = 1024 * 1024
MAX_ATTACHMENTS_TOTAL: Final = 10 * MB  # per composed email, template attachments included
MAX_TEMPLATE_ATTACHMENT: Final = 3 * MB  # per template attachment

# "A mass email never goes twice to the same address": the sources that are one campaign sent to
# many records at once (Multiple is a mass email from a list view). Autoresponders send one
# template per trigger, so repeats are intended.
DEDUPLICATED_SOURCES: Final = frozenset(
    {Source.MASS_EMAIL, Source.MASS_EMAIL_FOLLOW_UP, Source.MASS_EMAIL_SCHEDULER, Source.MULTIPLE}
)


class RejectReason(enum.StrEnum):
    """RejectReason codes of EmailRejected that the sender produces."""

    NO_RECIPIENTS = "no_recipients"
    INVALID_ADDRESS = "invalid_address"
    TEMPLATE_ATTACHMENT_TOO_LARGE = "template_attachment_too_large"
    ATTACHMENTS_TOO_LARGE = "attachments_too_large"
    MAILBOX_NOT_CONFIGURED = "mailbox_not_configured"
    CONTENT_MISSING = "content_missing"
    DUPLICATE_RECIPIENT = "duplicate_recipient"
    DAILY_LIMIT_REACHED = "daily_limit_reached"
    RECORD_ATTACHMENT_QUOTA = "record_attachment_quota"


@dataclass(frozen=True, slots=True)
class RuleViolation:
    """A refusal before sending: a reason code, a sentence for people, the address at fault."""

    reason: RejectReason
    detail: str
    recipient: str | None = None


def _size(n: int) -> str:
    return f"{n / MB:.2f} MB"


def check(composed: EmailComposed, *, mailbox_configured: bool) -> RuleViolation | None:
    """The first rule the email breaks, or None when it may be sent."""
    if not composed.recipients:
        return RuleViolation(RejectReason.NO_RECIPIENTS, "the email has no To, Cc or Bcc recipient")
    try:
        parse_mailbox(composed.from_addr)
    except InvalidAddress as exc:
        return RuleViolation(
            RejectReason.INVALID_ADDRESS,
            f"the from address {composed.from_addr!r} is invalid: {exc}",
        )
    for address in composed.recipients:
        try:
            parse_mailbox(address)
        except InvalidAddress as exc:
            return RuleViolation(
                RejectReason.INVALID_ADDRESS,
                f"the recipient address {address!r} is invalid: {exc}",
                recipient=address,
            )
    for attachment in composed.attachments:
        if attachment.from_template and attachment.size > MAX_TEMPLATE_ATTACHMENT:
            return RuleViolation(
                RejectReason.TEMPLATE_ATTACHMENT_TOO_LARGE,
                f"the template attachment {attachment.name!r} is {_size(attachment.size)}; "
                f"a template attachment may be at most {_size(MAX_TEMPLATE_ATTACHMENT)}",
            )
    total = sum(a.size for a in composed.attachments)
    if total > MAX_ATTACHMENTS_TOTAL:
        return RuleViolation(
            RejectReason.ATTACHMENTS_TOO_LARGE,
            f"the attachments add up to {_size(total)} (template attachments included); "
            f"an email may carry at most {_size(MAX_ATTACHMENTS_TOTAL)}",
        )
    if composed.over_quota_record is not None:
        return RuleViolation(
            RejectReason.RECORD_ATTACHMENT_QUOTA,
            f"storing the attachments would take record {composed.over_quota_record!r} past "
            "its 100 MB attachment quota",
        )
    if composed.transport is Transport.INTEGRATED_MAILBOX and not mailbox_configured:
        who = composed.mailbox_user or "(no mailbox_user given)"
        return RuleViolation(
            RejectReason.MAILBOX_NOT_CONFIGURED,
            f"the email goes through an integrated mailbox, but user {who} has none configured",
        )
    return None


def recipients(composed: EmailComposed) -> list[Mailbox]:
    """Each recipient once (addresses compare case-insensitively), To then Cc then Bcc.

    Only call after `check` passed: every address parses.
    """
    seen: dict[str, Mailbox] = {}
    for address in composed.recipients:
        mailbox = parse_mailbox(address)
        seen.setdefault(mailbox.key, mailbox)
    return list(seen.values())


def counts_toward_limit(source: Source) -> bool:
    """Mass emails, their follow-ups, scheduled ones and autoresponders count toward the limit."""
    return SOURCES[source].counts_toward_mass_limit


def within_daily_limit(taken: int, limit: int) -> bool:
    """Whether one more mass email fits in a day that already has `taken` of its `limit`."""
    return taken < limit


def is_deduplicated(source: Source) -> bool:
    """True for the mass-email sources that never go twice to one address in a campaign."""
    return source in DEDUPLICATED_SOURCES


def org_zone(time_zone: str) -> ZoneInfo:
    """The org's time zone; UTC when the setting names no zone this machine knows."""
    try:
        return ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def local_day(now: datetime, time_zone: str) -> date:
    """The calendar day `now` falls on in the org's time zone (00:00 to 23:59 there)."""
    return now.astimezone(org_zone(time_zone)).date()


def campaign_key(composed: EmailComposed, day: date) -> str:
    """The mass-email campaign an email belongs to, for "never twice to one address".

    A campaign is one mass-email send: same source, same template (or, without one, the same
    subject), same sender, same day in the org's time zone. The key is a short hash of those.
    """
    what = (
        f"template:{composed.template_id}"
        if composed.template_id
        else f"subject:{composed.subject}"
    )
    text = "\x1f".join(
        (composed.source.value, what, composed.from_addr.strip().lower(), day.isoformat())
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]
