"""What a message from the stream is: an event on its right subject, or poison for the DLQ."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgspec

from mailfold.events import AnyEvent, decode, event_subject

RawMessage = tuple[int, str, bytes]  # (stream sequence, subject, data) as delivered

_NUL_ESCAPE: Final = b"\\u0000"
_ANY_JSON: Final = msgspec.json.Decoder()


class ValidEvent(msgspec.Struct, frozen=True, gc=False):
    """A valid event, with where it sits in the stream and its wire form (kept for audit).

    A Struct rather than a frozen dataclass: one is built per event, at a tenth of the cost, and
    (holding only strings and an event) it needs no tracking by the cyclic collector.
    """

    seq: int
    subject: str
    payload: str
    event: AnyEvent


@dataclass(frozen=True, slots=True)
class Unusable:
    """A message the projector cannot use: it goes to the dead-letter stream with the error."""

    seq: int
    subject: str
    data: bytes
    error: str


def _holds_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def classify(seq: int, subject: str, data: bytes) -> ValidEvent | Unusable:
    """Decode and check one message; never raises."""
    try:
        event = decode(data)
    except msgspec.ValidationError as exc:
        return Unusable(seq, subject, data, f"invalid event: {exc}")
    except msgspec.DecodeError as exc:
        return Unusable(seq, subject, data, f"undecodable: {exc}")
    expected = event_subject(event)
    if subject != expected:
        return Unusable(
            seq,
            subject,
            data,
            f"subject mismatch: {event.event_type} of org {event.org_id} belongs on {expected}",
        )
    # PostgreSQL text and jsonb cannot hold NUL; such an event would fail every batch it is in.
    if _NUL_ESCAPE in data and _holds_nul(_ANY_JSON.decode(data)):
        return Unusable(seq, subject, data, "invalid event: a string holds a NUL character")
    return ValidEvent(seq, subject, data.decode(), event)
