"""The one way a service publishes an event: Nats-Msg-Id = event_id, brief retries, counted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from nats.aio.client import Client
from prometheus_client import Counter

from mailfold.events import Event
from mailfold.runtime import bus

# No answer, no stream, or a stream without a leader yet: worth another try.
_RETRYABLE = (*bus.LEADERLESS, ConnectionError)

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
    acknowledged". Up to `tries` attempts, backing off 0.4 s, 0.8 s, ...; with `within_s`,
    attempts go on (backing off up to 1 s, each waiting at most what is left) until that many
    seconds have passed since the first, which carries a caller through a stream leader
    election on a cluster (the stream answers nothing for a few seconds, then takes publishes
    again). A retried publish carries the same Nats-Msg-Id, so JetStream stores the event once
    even when only an acknowledgement was lost. Every outcome is counted here; `on_published`
    and `on_failure` are the service's own hooks (its metrics and log lines).
    """

    def __init__(
        self,
        nc: Client,
        *,
        timeout: float = 5.0,
        tries: int = 1,
        within_s: float | None = None,
        on_published: Callable[[Event], None] = _nothing,
        on_failure: Callable[[Event], None] = _nothing,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._timeout = timeout
        self._tries = tries
        self._within_s = within_s
        self._on_published = on_published
        self._on_failure = on_failure
        self._monotonic = monotonic

    async def __call__(self, event: Event) -> None:
        """Publish `event`; raises the last error when no attempt was acknowledged."""
        started = self._monotonic()
        attempt = 0
        while True:
            attempt += 1
            left = self._left(started)
            try:
                if not self._nc.is_connected:
                    raise ConnectionError("not connected to NATS")
                await bus.publish_event(self._js, event, timeout=min(self._timeout, left))
                break
            except _RETRYABLE:
                PUBLISH_FAILURES.labels(event.producer).inc()
                self._on_failure(event)
                pause = min(0.2 * 2**attempt, 1.0) if self._within_s else 0.2 * 2**attempt
                if self._within_s is None and attempt >= self._tries:
                    raise
                if self._within_s is not None and self._left(started) <= pause:
                    raise
                await asyncio.sleep(pause)
        PUBLISHED.labels(event.producer, event.event_type).inc()
        self._on_published(event)

    def _left(self, started: float) -> float:
        if self._within_s is None:
            return self._timeout
        return max(self._within_s - (self._monotonic() - started), 0.05)

    publish = __call__
