"""From MAIL_EVENTS to the delivery queue: one job per (event, endpoint that wants it)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import msgspec

from mailfold.events import AnyEvent
from mailfold.runtime.logging import get_logger
from mailfold.webhooks.domain.deliveries import Job
from mailfold.webhooks.domain.payload import body
from mailfold.webhooks.service_layer.ports import EndpointStore, FoldStore, Queue

log = get_logger(__name__)

ENQUEUE_TIMEOUT_S: Final = 10.0


class Stored(msgspec.Struct, frozen=True, kw_only=True):
    """One message of MAIL_EVENTS as the subscriber hands it over, decoded by the broker's codec.

    `event` is None when the bytes are not a valid event; `problem` then says why.
    """

    seq: int
    data: bytes
    event: AnyEvent | None = None
    problem: str = ""


DeadLetter = Callable[[Stored, str], Awaitable[None]]


def job_msg_id(endpoint_id: str, event_id: str) -> str:
    """The first delivery's message id: a redelivered event enqueues no second job."""
    return f"{endpoint_id}.{event_id}"


class Fanout:
    """Folds each event into its email, then enqueues a signed-body job for every endpoint.

    The subscriber acks the batch only after this returns: every job is then stored in
    WEBHOOK_JOBS, so a crash before that redelivers the batch, and the jobs' message ids
    keep the second enqueue from doubling them.
    """

    def __init__(
        self,
        endpoints: EndpointStore,
        folds: FoldStore,
        queue: Queue,
        dead_letter: DeadLetter,
        on_enqueued: Callable[[int], None] = lambda n: None,
    ) -> None:
        self._endpoints = endpoints
        self._folds = folds
        self._queue = queue
        self._dead_letter = dead_letter
        self._on_enqueued = on_enqueued

    async def handle(self, messages: Sequence[Stored]) -> None:
        """Handle one batch; returns when every job is stored (raises to have it redelivered)."""
        by_email: dict[tuple[str, str], list[tuple[Stored, AnyEvent]]] = {}
        for message in messages:
            event = message.event
            if event is None:
                await self._dead_letter(message, message.problem or "not a valid event")
                continue
            if not self._endpoints.of_org(event.org_id):
                continue  # no endpoint: nothing to deliver, nothing to fold
            by_email.setdefault((event.org_id, event.email_id), []).append((message, event))
        # Emails fold concurrently; one email's events fold in stream order.
        results = await asyncio.gather(*(self._email(items) for items in by_email.values()))
        futures = [future for batch in results for future in batch]
        if futures:
            async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
                await asyncio.gather(*futures)
            self._on_enqueued(len(futures))

    async def _email(self, items: list[tuple[Stored, AnyEvent]]) -> list[asyncio.Future[object]]:
        futures: list[asyncio.Future[object]] = []
        for message, event in items:
            fold, number = await self._folds.apply(event)
            source = None if fold.state.source is None else str(fold.state.source)
            wanted = [
                e
                for e in self._endpoints.of_org(event.org_id)
                if e.matches(event.event_type, source)
            ]
            if not wanted:
                continue
            payload = body(message.data, event, fold.state, number, message.seq)
            for endpoint in wanted:
                job = Job(
                    org_id=event.org_id,
                    endpoint_id=endpoint.endpoint_id,
                    event_id=event.event_id,
                    event_type=event.event_type,
                    email_id=event.email_id,
                    occurred_at=event.occurred_at,
                    stream_seq=message.seq,
                    body=payload,
                )
                future = await self._queue.start_enqueue(
                    job, job_msg_id(endpoint.endpoint_id, event.event_id)
                )
                futures.append(future)  # type: ignore[arg-type]
            log.debug(
                "event fanned out",
                event_id=event.event_id,
                email_id=event.email_id,
                endpoints=len(wanted),
            )
        return futures
