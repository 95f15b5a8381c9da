"""Opaque page cursors for the newest-first email lists: the last item's (time, email id)."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Final

import msgspec

_Key = tuple[Annotated[datetime, msgspec.Meta(tz=True)], Annotated[str, msgspec.Meta(min_length=1)]]
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
        key: tuple[datetime, str] = _DECODER.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        raise InvalidCursor("not a cursor this API returned") from exc
    return key
