"""The one way a service publishes an event: Nats-Msg-Id = event_id, brief retries, counted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client
from prometheus_client import Counter

from mailfold.events import Event
from mailfold.runtime import bus

_RETRYABLE = (nats.errors.TimeoutError, nats.errors.NoRespondersError, ConnectionError)

PUBLISHED = Counter(
    "mailfold_events_published",
    "Events acknowledged by MAIL_EVENTS, by producer and type.",
    ["producer", "type"],
)
PUBLISH_FAILURES = Counter(
    "mailfold_event_publish_failures",
    "Publish attempts not acknowledged, by producer.",
    ["producer"],
)


def _nothing(*_: object) -> None:
    return None


class EventPublisher:
    """Publish one event to MAIL_EVENTS and wait for the stream's acknowledgement.

    A publish while the connection is down is refused at once (the client would buffer it and
    send it after reconnecting, after the caller was told it failed), so "failed" means "not
    published". Up to `tries` attempts, backing off 0.4 s, 0.8 s, ...; a retried publish carries
    the same Nats-Msg-Id, so JetStream stores the event once. Every outcome is counted here;
    `on_published` and `on_failure` are the service's own hooks (its metrics and log lines).
    """

    def __init__(
        self,
        nc: Client,
        *,
        timeout: float = 5.0,
        tries: int = 1,
        on_published: Callable[[Event], None] = _nothing,
        on_failure: Callable[[Event], None] = _nothing,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._timeout = timeout
        self._tries = tries
        self._on_published = on_published
        self._on_failure = on_failure

    async def __call__(self, event: Event) -> None:
        """Publish `event`; raises the last error when no attempt was acknowledged."""
        for attempt in range(1, self._tries + 1):
            try:
                if not self._nc.is_connected:
                    raise ConnectionError("not connected to NATS")
                await bus.publish_event(self._js, event, timeout=self._timeout)
                break
            except _RETRYABLE:
                PUBLISH_FAILURES.labels(event.producer).inc()
                self._on_failure(event)
                if attempt == self._tries:
                    raise
                await asyncio.sleep(0.2 * 2**attempt)
        PUBLISHED.labels(event.producer, event.event_type).inc()
        self._on_published(event)

    publish = __call__
