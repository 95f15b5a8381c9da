"""Publishing the sender's events to MAIL_EVENTS, counted and logged on the way out."""

from __future__ import annotations

import asyncio
from typing import Final

import nats.errors
import structlog
from nats.js import JetStreamContext

from mailfold.events import (
    EmailBounced,
    EmailDeferred,
    EmailDelivered,
    EmailRejected,
    EmailSent,
    Event,
)
from mailfold.runtime import bus
from mailfold.sender import metrics

# What the sender publishes (declared on its broker for the AsyncAPI document).
PUBLISHES: Final = (EmailSent, EmailDelivered, EmailDeferred, EmailBounced, EmailRejected)
_TRIES: Final = 5
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


class EventPublisher:
    """The Publish port: `bus.publish_event`, retried briefly through a NATS hiccup."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def __call__(self, event: Event) -> None:
        for attempt in range(1, _TRIES + 1):
            try:
                await bus.publish_event(self._js, event)
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                if attempt == _TRIES:
                    raise
                await asyncio.sleep(0.2 * 2**attempt)
        _count(event)
        log.info(
            event.event_type,
            email_id=event.email_id,
            event_id=event.event_id,
            org_id=event.org_id,
            **_summary(event),
        )
