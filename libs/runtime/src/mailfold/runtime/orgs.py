"""Orgs and their API tokens: a token is shown once; only its SHA-256 is kept, in a KV bucket."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Final

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

ORG_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class OrgExists(ValueError):
    """The org already has a token."""


def valid_org_id(org_id: str) -> bool:
    """Org ids are lower-case subject tokens: letters, digits, '-' and '_'."""
    return bool(ORG_RE.match(org_id))


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).hexdigest().encode()


async def create_org(bucket: KeyValue, org_id: str, *, rotate: bool = False) -> str:
    """Create an org and return its new API token; `rotate` replaces an existing token."""
    if not valid_org_id(org_id):
        raise ValueError("org id must be 1-63 characters of a-z, 0-9, '-' and '_'")
    token = f"mf_{org_id}_{secrets.token_urlsafe(24)}"
    key = f"{org_id}.token"
    if rotate:
        await bucket.put(key, _digest(token))
    else:
        try:
            await bucket.create(key, _digest(token))
        except Exception as exc:  # nats-py raises a generic API error when the key exists
            raise OrgExists(f"org {org_id!r} already exists") from exc
    return token


class TokenVerifier:
    """Checks bearer tokens against the stored digests, with a short cache to spare the bucket."""

    def __init__(self, bucket: KeyValue, *, ttl_s: float = 5.0) -> None:
        self._bucket = bucket
        self._ttl = ttl_s
        self._cache: dict[str, tuple[float, bytes | None]] = {}

    async def _stored(self, org_id: str) -> bytes | None:
        now = time.monotonic()
        hit = self._cache.get(org_id)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        try:
            entry = await self._bucket.get(f"{org_id}.token")
            stored = entry.value
        except KeyNotFoundError:
            stored = None
        self._cache[org_id] = (now, stored)
        return stored

    async def verify(self, org_id: str, token: str | None) -> bool:
        """True only for the org's own current token; compared in constant time."""
        if not token or not valid_org_id(org_id):
            return False
        stored = await self._stored(org_id)
        return stored is not None and hmac.compare_digest(stored, _digest(token))


def bearer(header: str | None) -> str | None:
    """The token from an `Authorization: Bearer <token>` header."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def token_orgs(token: str) -> list[str]:
    """The orgs a token could belong to (tokens read `mf_<org>_<random>`; both may hold '_')."""
    if not token.startswith("mf_"):
        return []
    rest = token[3:]
    return [rest[:i] for i, c in enumerate(rest) if c == "_" and valid_org_id(rest[:i])]


async def check_bearer(verifier: TokenVerifier, org_id: str, header: str | None) -> int | None:
    """None when the Authorization header holds the org's token, else the HTTP status to answer.

    401 without a token or with an invalid one; 404 when it is another org's valid token, so
    that one org cannot learn which other orgs exist.
    """
    token = bearer(header)
    if token is None:
        return 401
    if await verifier.verify(org_id, token):
        return None
    for other in token_orgs(token):
        if other != org_id and await verifier.verify(other, token):
            return 404
    return 401
