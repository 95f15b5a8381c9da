"""Identifiers: UUIDv7 (time-ordered) for events and emails."""

from __future__ import annotations

import os
import time
import uuid


def new_id(unix_ms: int | None = None) -> str:
    """A UUIDv7 string (RFC 9562): 48-bit millisecond timestamp, version, 74 random bits."""
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a
    value |= 0b10 << 62  # variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b
    # Formatted directly: the same text as str(uuid.UUID(int=value)), at a third of the cost.
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def id_time_ms(value: str) -> int:
    """The millisecond timestamp inside a UUIDv7."""
    return uuid.UUID(value).int >> 80
