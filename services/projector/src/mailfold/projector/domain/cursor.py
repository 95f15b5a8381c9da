"""Opaque page cursors for the newest-first email lists: the last item's (time, email id)."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Final

import msgspec

# Email ids are printable text (no control characters: PostgreSQL text cannot hold NUL).
_Key = tuple[
    Annotated[datetime, msgspec.Meta(tz=True)],
    Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")],
]
_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(_Key)


class InvalidCursor(ValueError):
    """The cursor was not made by this API (or was altered)."""


def encode_cursor(email_at: datetime, email_id: str) -> str:
    """The cursor that continues after the email at (email_at, email_id)."""
    return base64.urlsafe_b64encode(_ENCODER.encode((email_at, email_id))).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (email_at, email_id) a cursor continues after."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, email_id = _DECODER.decode(raw)
        # A time whose offset carries it outside the years 1-9999 in UTC is no email's time.
        at = at.astimezone(UTC)
    except (binascii.Error, ValueError, OverflowError, msgspec.DecodeError) as exc:
        raise InvalidCursor("not a cursor this API returned") from exc
    return at, email_id
