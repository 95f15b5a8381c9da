"""From a parsed bounce or feedback report and its VERP claims to the events it proves."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from mailfold.bounces import ParsedRecipient, ParsedReport
from mailfold.events import (
    BounceKind,
    ContentRef,
    EmailBounced,
    EmailComplained,
    EmailDeferred,
    EmailDelivered,
    Event,
    TrackingClaims,
)
from mailfold.events.addresses import is_address
from mailfold.events.ids import derived_id, id_time_ms

PRODUCER: Final = "ingest"
MAX_DIAGNOSTIC: Final = 2000
MAX_FIELD: Final = 255

_SUCCESS: Final = frozenset({"delivered", "relayed", "expanded"})


def _opt(text: str, limit: int = MAX_FIELD) -> str | None:
    return text[:limit] or None


def _reply_code(text: str) -> int | None:
    if len(text) == 3 and text.isascii() and text.isdigit() and 200 <= int(text) <= 599:
        return int(text)
    return None


def _id_ms(email_id: str) -> int:
    try:
        return id_time_ms(email_id)
    except ValueError:  # an email id that is not a UUID: the ids still derive, with time 0
        return 0


def recipient_for(entry: ParsedRecipient, claims: TrackingClaims) -> str:
    """Who the entry is about: the recipient the VERP token names, or "" to skip it.

    A VERP address is given to one recipient of one email, so a report sent to it speaks for
    that recipient only: an entry naming another address (another recipient of the email, or
    an address the email never went to) is skipped. Entries without a usable address, and
    feedback reports, which redact the recipient by design (RFC 6590), take the token's.
    A token without a recipient (none are signed so today) leaves the report's own address.
    """
    reported = entry.recipient.strip()
    if not is_address(claims.recipient):
        return reported if is_address(reported) else ""
    if entry.action == "complained" or not is_address(reported):
        return claims.recipient
    return claims.recipient if reported.lower() == claims.recipient.lower() else ""


def report_events(
    report: ParsedReport,
    claims: TrackingClaims,
    *,
    raw: ContentRef,
    occurred_at: datetime,
    date_ms: int | None = None,
) -> list[Event]:
    """One event per recipient entry the report proves something about; the ids are derived.

    A failure is EmailBounced, a delay EmailDeferred, a success EmailDelivered and an ARF entry
    EmailComplained. Entries with no usable recipient are skipped. The ids derive from the raw
    report's SHA-256, the email and the recipient, so a report delivered twice yields the same ids.
    """
    ms = date_ms if date_ms is not None else _id_ms(claims.email_id)
    events: list[Event] = []
    for entry in report.recipients:
        recipient = recipient_for(entry, claims)
        if not recipient:
            continue
        event_id = derived_id(
            "report", raw.sha256, claims.email_id, recipient.lower(), entry.action, unix_ms=ms
        )
        event = _event_for(entry, recipient, raw, event_id, claims, occurred_at)
        if event is not None:
            events.append(event)
    return events


def _event_for(
    entry: ParsedRecipient,
    recipient: str,
    raw: ContentRef,
    event_id: str,
    claims: TrackingClaims,
    occurred_at: datetime,
) -> Event | None:
    envelope: dict[str, Any] = {
        "event_id": event_id,
        "org_id": claims.org_id,
        "email_id": claims.email_id,
        "occurred_at": occurred_at,
        "producer": PRODUCER,
        "recipient": recipient,
    }
    if entry.action == "failed":
        return EmailBounced(
            **envelope,
            kind=BounceKind(entry.kind),
            status=_opt(entry.status),
            reply_code=_reply_code(entry.reply_code),
            reason=_opt(entry.reason),
            diagnostic=_opt(entry.diagnostic, MAX_DIAGNOSTIC),
            reporting_mta=_opt(entry.reporting_mta),
            report=raw,
        )
    if entry.action == "delayed":
        return EmailDeferred(
            **envelope,
            reply_code=_reply_code(entry.reply_code),
            status=_opt(entry.status),
            diagnostic=_opt(entry.diagnostic, MAX_DIAGNOSTIC),
            remote_mta=_opt(entry.reporting_mta),
        )
    if entry.action in _SUCCESS:
        return EmailDelivered(
            **envelope,
            reply_code=_reply_code(entry.reply_code),
            reply=entry.diagnostic[:MAX_DIAGNOSTIC],
            remote_mta=_opt(entry.reporting_mta),
        )
    if entry.action == "complained":
        return EmailComplained(
            **envelope,
            feedback_type=entry.feedback_type[:64] or "abuse",
            reporting_mta=_opt(entry.reporting_mta),
            report=raw,
        )
    return None
