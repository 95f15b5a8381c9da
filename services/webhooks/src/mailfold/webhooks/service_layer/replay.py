"""Replay: send events again with their original webhook-id, by event id or by time range."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Protocol

import msgspec

from mailfold.events import AnyEvent, decode
from mailfold.events.ids import id_time_ms
from mailfold.webhooks.adapters.stream import StreamEvent, org_subject
from mailfold.webhooks.domain.deliveries import Job
from mailfold.webhooks.domain.endpoints import Endpoint
from mailfold.webhooks.domain.payload import body, fold_in
from mailfold.webhooks.service_layer.ports import DeliveryStore, FoldStore, Queue

ENQUEUE_TIMEOUT_S: Final = 30.0  # for every job of one replay to be stored

MAX_REPLAY: Final = 10_000  # events per request; the answer says where to continue
# An event's id carries the time it was made; it reaches the stream soon after.
ID_SEARCH_BEFORE: Final = timedelta(minutes=10)


class StreamEvents(Protocol):
    """Reads MAIL_EVENTS."""

    async def read(
        self,
        subject: str,
        *,
        after_seq: int | None = None,
        since: datetime | None = None,
        limit: int,
    ) -> list[StreamEvent]: ...


class ReplayRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`{"event_id": ...}` or `{"since": ..., "until": ...}` (RFC 3339 times, until optional)."""

    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    since: datetime | None = None
    until: datetime | None = None


class Replayed(msgspec.Struct, frozen=True, kw_only=True):
    """What a replay queued."""

    queued: int
    event_ids: list[str]
    complete: bool
    last_stream_seq: int | None = None
    last_time: datetime | None = None  # when incomplete: replay again with this as `since`


class Replayer:
    """Finds events in the stream and queues them again for one endpoint."""

    def __init__(
        self, reader: StreamEvents, folds: FoldStore, deliveries: DeliveryStore, queue: Queue
    ) -> None:
        self._reader = reader
        self._folds = folds
        self._deliveries = deliveries
        self._queue = queue

    async def by_event_id(self, endpoint: Endpoint, event_id: str) -> Replayed | None:
        """Queue one event again (whatever the endpoint's filters); None when not found."""
        found = await self._find(endpoint, event_id)
        if found is None:
            return None
        await self._enqueue(endpoint, [found])
        return Replayed(queued=1, event_ids=[event_id], complete=True, last_stream_seq=found.seq)

    async def by_time(self, endpoint: Endpoint, since: datetime, until: datetime) -> Replayed:
        """Queue every event the endpoint wants that the stream stored in [since, until)."""
        stored = await self._reader.read(
            org_subject(endpoint.org_id), since=since, limit=MAX_REPLAY
        )
        complete = len(stored) < MAX_REPLAY
        in_range = [s for s in stored if s.time < until]
        if len(in_range) < len(stored):
            complete = True
        picked: list[StreamEvent] = []
        # A disabled endpoint's replays wait in its queue until it is enabled again.
        wants = msgspec.structs.replace(endpoint, enabled=True)
        for item in in_range:
            event = decode(item.data)
            fold = await self._folds.get(event.org_id, event.email_id)
            source = None if fold is None or fold.state.source is None else str(fold.state.source)
            if wants.matches(event.event_type, source):
                picked.append(item)
        ids = await self._enqueue(endpoint, picked)
        return Replayed(
            queued=len(ids),
            event_ids=ids,
            complete=complete,
            last_stream_seq=in_range[-1].seq if in_range else None,
            last_time=in_range[-1].time if in_range else None,
        )

    async def _find(self, endpoint: Endpoint, event_id: str) -> StreamEvent | None:
        delivery = await self._deliveries.get(endpoint.org_id, endpoint.endpoint_id, event_id)
        after = None if delivery is None else delivery.stream_seq - 1
        try:
            since = None if after is not None else _id_time(event_id) - ID_SEARCH_BEFORE
        except ValueError:
            return None
        stored = await self._reader.read(
            org_subject(endpoint.org_id),
            after_seq=after,
            since=since,
            limit=1 if after is not None else MAX_REPLAY,
        )
        for item in stored:
            if _event_id(item) == event_id:
                return item
        return None

    async def _enqueue(self, endpoint: Endpoint, items: list[StreamEvent]) -> list[str]:
        nonce = secrets.token_hex(6)
        futures = []
        ids: list[str] = []
        for item in items:
            event = decode(item.data)
            if event.org_id != endpoint.org_id:
                continue
            fold = await self._folds.get(event.org_id, event.email_id)
            state_fold, number = fold_in(fold, event)
            job = Job(
                org_id=event.org_id,
                endpoint_id=endpoint.endpoint_id,
                event_id=event.event_id,
                event_type=event.event_type,
                email_id=event.email_id,
                occurred_at=event.occurred_at,
                stream_seq=item.seq,
                body=body(item.data, event, state_fold.state, number, item.seq),
                replay=True,
            )
            msg_id = f"{endpoint.endpoint_id}.{event.event_id}.replay.{nonce}"
            futures.append(await self._queue.start_enqueue(job, msg_id))
            ids.append(event.event_id)
        try:
            # Bounded: an acknowledgement lost with the connection never comes.
            async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
                for future in futures:
                    await future
        finally:
            for future in futures:
                future.cancel()
        return ids


def _event_id(item: StreamEvent) -> str | None:
    try:
        event: AnyEvent = decode(item.data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return event.event_id


def _id_time(event_id: str) -> datetime:
    return datetime.fromtimestamp(id_time_ms(event_id) / 1000, UTC)
