"""Identifiers: UUIDv7 (time-ordered) for events and emails, drawn at random or derived from content."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from typing import Final

_MAX_MS: Final = (1 << 48) - 1


def _uuid7(ms: int, rand: int) -> str:
    """RFC 9562 layout: 48-bit millisecond timestamp, version 7, 74 bits from `rand`, variant."""
    value = (ms & _MAX_MS) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a
    value |= 0b10 << 62  # variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b
    # Formatted directly: the same text as str(uuid.UUID(int=value)), at a third of the cost.
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_id(unix_ms: int | None = None) -> str:
    """A UUIDv7 string with 74 random bits."""
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    return _uuid7(ms, int.from_bytes(os.urandom(10), "big"))


def derived_id(*parts: str, unix_ms: int) -> str:
    """A UUIDv7-shaped id whose random bits come from a SHA-256 of `parts`.

    Mail systems deliver the same message again after a timeout or a 4xx reply, and JetStream
    redelivers an email a crashed sender was handling; deriving the ids from what the event says
    means the second copy publishes the same event ids, and JetStream's Nats-Msg-Id window (or the
    projector's event-id check after it) drops it. A time outside UUIDv7's 48 bits becomes 0.
    """
    seed = "\x1f".join(parts).encode("utf-8", "surrogatepass")
    rand = int.from_bytes(hashlib.sha256(seed).digest()[:10], "big")
    return _uuid7(unix_ms if 0 <= unix_ms <= _MAX_MS else 0, rand)


def id_time_ms(value: str) -> int:
    """The millisecond timestamp inside a UUIDv7."""
    return uuid.UUID(value).int >> 80
