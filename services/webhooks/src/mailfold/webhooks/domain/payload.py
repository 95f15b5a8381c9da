"""The JSON body of a webhook: the event as published, the email's status, a per-email sequence."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec

from mailfold.events import AnyEvent, EmailState, apply
from mailfold.events.fold import empty

_ENCODER: Final = msgspec.json.Encoder()


class EmailFold(msgspec.Struct, frozen=True, kw_only=True):
    """The service's own fold of one email, and the sequence number each event got in it.

    The sequence is per email: 1 for the first event this service folded for the email, then 2,
    3, ... A repeated event keeps its number. Delivery order is not guaranteed; receivers order
    an email's events by it.
    """

    state: EmailState
    numbers: dict[str, int] = {}


def fold_in(current: EmailFold | None, event: AnyEvent) -> tuple[EmailFold, int]:
    """The fold with `event` applied, and the event's per-email sequence number."""
    if current is None:
        current = EmailFold(state=empty(event.email_id))
    known = current.numbers.get(event.event_id)
    if known is not None:
        return current, known
    number = len(current.numbers) + 1
    return (
        EmailFold(
            state=apply(current.state, event),
            numbers={**current.numbers, event.event_id: number},
        ),
        number,
    )


class Body(msgspec.Struct, frozen=True, kw_only=True):
    """`type` and `timestamp` as the Standard Webhooks payload shape; `data` is the event."""

    type: str
    timestamp: datetime
    data: dict[str, Any]
    email_status: str | None
    email_sequence: int
    stream_sequence: int


def body(raw_event: bytes, event: AnyEvent, state: EmailState, sequence: int, seq: int) -> bytes:
    """The bytes that are signed and sent (computed once, so every retry sends the same)."""
    return _ENCODER.encode(
        Body(
            type=event.event_type,
            timestamp=event.occurred_at,
            data=msgspec.json.decode(raw_event),
            email_status=None if state.status is None else str(state.status),
            email_sequence=sequence,
            stream_sequence=seq,
        )
    )
