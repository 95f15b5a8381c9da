"""The JSON body of a webhook: the event as published, the email's status, a per-email sequence."""

from __future__ import annotations

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


def body(raw_event: bytes, event: AnyEvent, state: EmailState, sequence: int, seq: int) -> bytes:
    """The bytes that are signed and sent (computed once, so every retry sends the same).

    The event exactly as published (its `type` is the wire name, as the Standard Webhooks
    payload shape has it), plus `email_status`, `email_sequence` and `stream_sequence`.
    """
    fields: dict[str, Any] = msgspec.json.decode(raw_event)
    fields["email_status"] = None if state.status is None else str(state.status)
    fields["email_sequence"] = sequence
    fields["stream_sequence"] = seq
    return _ENCODER.encode(fields)
