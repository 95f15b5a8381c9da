"""Bodies, attachments and raw messages in the JetStream object store, addressed by SHA-256."""

from __future__ import annotations

import hashlib

from nats.js.errors import ObjectNotFoundError
from nats.js.object_store import ObjectStore

from mailfold.events import ContentRef


def sha256_hex(data: bytes) -> str:
    """The content address of some bytes."""
    return hashlib.sha256(data).hexdigest()


async def put_content(
    store: ObjectStore, data: bytes, content_type: str = "application/octet-stream"
) -> ContentRef:
    """Store bytes once under their SHA-256 (a second put of the same bytes stores nothing)."""
    digest = sha256_hex(data)
    try:
        await store.get_info(digest)
    except ObjectNotFoundError:
        await store.put(digest, data)
    return ContentRef(sha256=digest, size=len(data), content_type=content_type)


async def get_content(store: ObjectStore, sha256: str) -> bytes:
    """The bytes stored under a SHA-256; raises ObjectNotFoundError when absent."""
    result = await store.get(sha256)
    data = result.data or b""
    if sha256_hex(data) != sha256:
        raise ValueError(f"object {sha256} does not match its address")
    return data


async def has_content(store: ObjectStore, sha256: str) -> bool:
    """True if the object store holds this SHA-256."""
    try:
        await store.get_info(sha256)
    except ObjectNotFoundError:
        return False
    return True
