"""From MAIL_EVENTS to delivery jobs: one per (event, endpoint that wants it)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from mailfold.events import AnyEvent
from mailfold.runtime.logging import get_logger
from mailfold.webhooks.domain.deliveries import Job
from mailfold.webhooks.domain.payload import body
from mailfold.webhooks.service_layer.ports import EndpointStore, FoldStore

log = get_logger(__name__)


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
    """Folds each event into its email and builds a signed-body job for every endpoint wanting it.

    What happens to the jobs is the caller's: the first attempts are made straight away, and
    the event is acknowledged once each of its jobs is settled or stored in WEBHOOK_JOBS.
    """

    def __init__(self, endpoints: EndpointStore, folds: FoldStore, dead_letter: DeadLetter) -> None:
        self._endpoints = endpoints
        self._folds = folds
        self._dead_letter = dead_letter

    async def handle(self, messages: Sequence[Stored]) -> list[tuple[Stored, list[Job]]]:
        """Each event of the batch with its jobs (none: nothing to deliver, or dead-lettered)."""
        out: list[tuple[Stored, list[Job]]] = []
        by_email: dict[tuple[str, str], list[tuple[Stored, AnyEvent]]] = {}
        for message in messages:
            event = message.event
            if event is None:
                await self._dead_letter(message, message.problem or "not a valid event")
                continue
            if not self._endpoints.of_org(event.org_id):
                out.append((message, []))  # no endpoint: nothing to deliver, nothing to fold
                continue
            by_email.setdefault((event.org_id, event.email_id), []).append((message, event))
        # Emails fold concurrently; one email's events fold in stream order.
        results = await asyncio.gather(*(self._email(items) for items in by_email.values()))
        out.extend(item for batch in results for item in batch)
        return out

    async def _email(self, items: list[tuple[Stored, AnyEvent]]) -> list[tuple[Stored, list[Job]]]:
        out: list[tuple[Stored, list[Job]]] = []
        for message, event in items:
            fold, number = await self._folds.apply(event)
            source = None if fold.state.source is None else str(fold.state.source)
            wanted = [
                e
                for e in self._endpoints.of_org(event.org_id)
                if e.matches(event.event_type, source)
            ]
            if not wanted:
                out.append((message, []))
                continue
            payload = body(message.data, event, fold.state, number, message.seq)
            jobs = [
                Job(
                    org_id=event.org_id,
                    endpoint_id=endpoint.endpoint_id,
                    event_id=event.event_id,
                    event_type=event.event_type,
                    email_id=event.email_id,
                    occurred_at=event.occurred_at,
                    stream_seq=message.seq,
                    body=payload,
                )
                for endpoint in wanted
            ]
            out.append((message, jobs))
            log.debug(
                "event fanned out",
                event_id=event.event_id,
                email_id=event.email_id,
                endpoints=len(wanted),
            )
        return out
