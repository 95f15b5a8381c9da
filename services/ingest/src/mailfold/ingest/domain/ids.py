"""Deterministic identifiers: the same message always yields the same email and event ids."""

from __future__ import annotations

import hashlib
import uuid
from typing import Final

_MAX_MS: Final = (1 << 48) - 1


def derived_id(*parts: str, unix_ms: int) -> str:
    """A UUIDv7-shaped id whose random bits come from a SHA-256 of `parts`.

    Mail systems deliver the same message again after a timeout or a 4xx reply; deriving the ids
    from the message means the second copy publishes the same event ids, and JetStream's
    Nats-Msg-Id window (or the projector's event-id check after it) drops it.
    """
    seed = "\x1f".join(parts).encode("utf-8", "surrogatepass")
    rand = int.from_bytes(hashlib.sha256(seed).digest()[:10], "big")
    ms = unix_ms if 0 <= unix_ms <= _MAX_MS else 0
    value = ms << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a
    value |= 0b10 << 62  # variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b
    return str(uuid.UUID(int=value))
