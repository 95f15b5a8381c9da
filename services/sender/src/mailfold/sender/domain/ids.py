"""Event ids the sender derives instead of drawing, so a redelivered email republishes, not repeats.

An id is a UUIDv7 whose time is the composed email's time and whose random bits are a hash of the
email id and what the event says (its kind, recipient, attempt). Handling the same email twice
yields the same ids: JetStream drops the second publish (Nats-Msg-Id) and the fold ignores an id
it has seen, so a retry after a crash never counts a delivery, bounce or deferral twice.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime


def derived_id(email_id: str, at: datetime, *parts: str) -> str:
    """A UUIDv7 string, stable for the same email, time and parts."""
    ms = int(at.timestamp() * 1000)
    digest = hashlib.sha256("\x1f".join((email_id, *parts)).encode()).digest()
    rand = int.from_bytes(digest[:10], "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF
    return str(uuid.UUID(int=value))
