"""What the sender publishes, and how each acknowledged event is counted and logged."""

from __future__ import annotations

from typing import Final

import structlog

from mailfold.events import (
    EmailBounced,
    EmailDeferred,
    EmailDelivered,
    EmailRejected,
    EmailSent,
    Event,
)
from mailfold.sender import metrics

# What the sender publishes (declared on its broker for the AsyncAPI document).
PUBLISHES: Final = (EmailSent, EmailDelivered, EmailDeferred, EmailBounced, EmailRejected)
log = structlog.get_logger("mailfold.sender")


def _count(event: Event) -> None:
    match event:
        case EmailSent():
            metrics.SENT.labels(event.transport.value).inc()
        case EmailDelivered():
            metrics.DELIVERED.inc()
        case EmailDeferred():
            metrics.DEFERRED.inc()
        case EmailBounced():
            metrics.BOUNCED.labels(event.reason or "none", event.kind.value).inc()
        case EmailRejected():
            metrics.REJECTED.labels(event.reason).inc()


def _summary(event: Event) -> dict[str, object]:
    match event:
        case EmailSent():
            return {"recipients": len(event.recipients), "transport": event.transport.value}
        case EmailDelivered():
            return {"recipient": event.recipient, "reply_code": event.reply_code}
        case EmailDeferred():
            return {
                "recipient": event.recipient,
                "reply_code": event.reply_code,
                "status": event.status,
                "attempt": event.attempt,
            }
        case EmailBounced():
            return {
                "recipient": event.recipient,
                "reply_code": event.reply_code,
                "status": event.status,
                "reason": event.reason,
            }
        case EmailRejected():
            return {"reason": event.reason, "recipient": event.recipient}
    return {}


def record(event: Event) -> None:
    """The sender's count and log line for an event JetStream acknowledged."""
    _count(event)
    log.info(
        event.event_type,
        email_id=event.email_id,
        event_id=event.event_id,
        org_id=event.org_id,
        **_summary(event),
    )
