"""Reading MAIL_EVENTS from a position or a time, for replay and the events API."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Final

import msgspec
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from mailfold.events.subjects import STREAM, subject_for

CHUNK: Final = 256


class StreamEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One stored event: its stream sequence, when the stream stored it, its bytes."""

    seq: int
    time: datetime
    subject: str
    data: bytes


def org_subject(org_id: str, event_type: str | None = None) -> str:
    """The org's events (of one type when given)."""
    return subject_for(org_id, event_type or "*")


class StreamReader:
    """Short-lived ordered reads of MAIL_EVENTS through an ephemeral consumer."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def read(
        self,
        subject: str,
        *,
        after_seq: int | None = None,
        since: datetime | None = None,
        limit: int,
    ) -> list[StreamEvent]:
        """Up to `limit` events on `subject`, oldest first, after a sequence or since a time."""
        if since is not None:
            policy = {"deliver_policy": DeliverPolicy.BY_START_TIME, "opt_start_time": since}
        elif after_seq:
            policy = {
                "deliver_policy": DeliverPolicy.BY_START_SEQUENCE,
                "opt_start_seq": after_seq + 1,
            }
        else:
            policy = {"deliver_policy": DeliverPolicy.ALL}
        config = ConsumerConfig(
            filter_subject=subject,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
            mem_storage=True,
            **policy,  # type: ignore[arg-type]
        )
        sub = await self._js.pull_subscribe(subject, stream=STREAM, config=config)
        out: list[StreamEvent] = []
        try:
            info = await sub.consumer_info()
            wanted = min(limit, int(info.num_pending or 0))
            while len(out) < wanted:
                try:
                    batch = await sub.fetch(min(CHUNK, wanted - len(out)), timeout=2.0)
                except TimeoutError:
                    break  # the stream lost messages to its limits meanwhile
                for msg in batch:
                    meta = msg.metadata
                    out.append(
                        StreamEvent(
                            seq=int(meta.sequence.stream),
                            time=meta.timestamp,
                            subject=msg.subject,
                            data=msg.data,
                        )
                    )
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return out[:limit]
