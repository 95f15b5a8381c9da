"""Standard Webhooks v1 signatures: HMAC-SHA256 over `id.timestamp.body`, one per secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.digest(key, signed, hashlib.sha256)  # one-shot, in OpenSSL
    return "v1," + base64.b64encode(digest).decode()


def signature_header(keys: Iterable[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one signature per key, space-separated (rotation)."""
    return " ".join(signature(key, msg_id, timestamp, body) for key in keys)


def headers(keys: Iterable[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers, and the content type."""
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(keys, msg_id, timestamp, body),
    }
