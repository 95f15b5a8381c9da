"""Tracking tokens shared by sender and tracker: compact, URL-safe, HMAC-SHA256 signed, rotatable.

Layout: `<kid>.<payload>.<mac>`, each part base64url without padding. The payload is a msgpack
array `[version, kind, org_id, email_id, recipient, url]`; the MAC is HMAC-SHA256 over
`<kid>.<payload>` truncated to 16 bytes (128 bits, as RFC 2104 allows), checked in constant time.
The key id names the secret that signed the token, so old keys keep verifying after a rotation.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Final

import msgspec

_VERSION: Final = 1
_MAC_BYTES: Final = 16
_KID_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
_MAX_TOKEN: Final = 4096
_DECODER: Final = msgspec.msgpack.Decoder(tuple[int, str, str, str, str, str])
_ENCODER: Final = msgspec.msgpack.Encoder()


class TokenKind(enum.StrEnum):
    """An open pixel or a click redirect."""

    OPEN = "o"
    CLICK = "c"
    BOUNCE = "b"


class InvalidToken(ValueError):
    """The token is malformed, forged, tampered with, or signed by an unknown key."""


@dataclass(frozen=True, slots=True)
class TrackingClaims:
    """What a valid token binds: the email, the recipient and, for clicks, the target URL."""

    kind: TokenKind
    org_id: str
    email_id: str
    recipient: str
    url: str = ""


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("not base64url") from exc


def _b32e(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def _b32d(text: str) -> bytes:
    try:
        return base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("not base32") from exc


class Keyring:
    """Signing keys by key id; the current one signs, every one verifies."""

    def __init__(self, keys: dict[str, bytes], current: str) -> None:
        if current not in keys:
            raise ValueError(f"current key id {current!r} is not in the keyring")
        for kid, secret in keys.items():
            if not _KID_RE.match(kid):
                raise ValueError(f"key id {kid!r} must be 1-16 characters of [A-Za-z0-9_-]")
            if len(secret) < 16:
                raise ValueError(f"key {kid!r} is shorter than 16 bytes")
        self._keys = dict(keys)
        # Keyed HMAC states built once; each MAC copies one instead of re-deriving the pads.
        self._hmacs = {
            kid: hmac.new(secret, digestmod=hashlib.sha256) for kid, secret in keys.items()
        }
        self.current = current

    @classmethod
    def parse(cls, spec: str) -> Keyring:
        """From `kid:secret[,kid:secret...]`; the first key signs. Secrets are taken as UTF-8."""
        keys: dict[str, bytes] = {}
        for part in spec.split(","):
            kid, sep, secret = part.strip().partition(":")
            if not sep or not kid or not secret:
                raise ValueError("tracking keys look like 'kid:secret[,kid:secret...]'")
            keys[kid] = secret.encode()
        first = spec.split(",")[0].split(":")[0].strip()
        return cls(keys, first)

    def _mac(self, kid: str, signed: bytes) -> bytes:
        base = self._hmacs.get(kid)
        if base is None:
            raise InvalidToken("unknown key id")
        mac = base.copy()
        mac.update(signed)
        return mac.digest()[:_MAC_BYTES]

    def sign(self, claims: TrackingClaims) -> str:
        """A token binding the claims, signed with the current key."""
        payload = _b64e(
            _ENCODER.encode(
                (
                    _VERSION,
                    claims.kind.value,
                    claims.org_id,
                    claims.email_id,
                    claims.recipient,
                    claims.url,
                )
            )
        )
        signed = f"{self.current}.{payload}"
        return f"{signed}.{_b64e(self._mac(self.current, signed.encode()))}"

    def verify(self, token: str) -> TrackingClaims:
        """The claims of a valid token; raises InvalidToken for anything else."""
        if len(token) > _MAX_TOKEN:
            raise InvalidToken("too long")
        parts = token.split(".")
        if len(parts) != 3:
            raise InvalidToken("malformed")
        kid, payload, mac_text = parts
        if not _KID_RE.match(kid):
            raise InvalidToken("malformed key id")
        expected = self._mac(kid, f"{kid}.{payload}".encode("ascii", "replace"))
        given = _b64d(mac_text)
        # Canonical encoding only: a MAC that decodes the same from other text is still refused.
        if _b64e(given) != mac_text or not hmac.compare_digest(expected, given):
            raise InvalidToken("bad signature")
        try:
            version, kind, org_id, email_id, recipient, url = _DECODER.decode(_b64d(payload))
        except msgspec.DecodeError as exc:  # pragma: no cover - only reachable with a valid MAC
            raise InvalidToken("bad payload") from exc
        if version != _VERSION:
            raise InvalidToken("unsupported version")
        try:
            token_kind = TokenKind(kind)
        except ValueError as exc:  # pragma: no cover - only reachable with a valid MAC
            raise InvalidToken("unknown kind") from exc
        return TrackingClaims(token_kind, org_id, email_id, recipient, url)

    def sign_verp(self, claims: TrackingClaims) -> str:
        """A case-insensitive token for a VERP return path (`bounce+<token>@domain`).

        Mail systems may change the case of a local part, so this form is lower-case base32:
        `<kid>-<payload>-<mac>`, the MAC over `<kid>-<payload>` as for tracking tokens.
        """
        if claims.kind is not TokenKind.BOUNCE:
            raise ValueError("VERP tokens carry bounce claims")
        kid = self.current.lower()
        if kid not in self._keys:
            raise ValueError("VERP signing needs a lower-case current key id")
        payload = _b32e(
            _ENCODER.encode(
                (_VERSION, claims.kind.value, claims.org_id, claims.email_id, claims.recipient, "")
            )
        )
        signed = f"{kid}-{payload}"
        return f"{signed}-{_b32e(self._mac(kid, signed.encode()))}"

    def verify_verp(self, token: str) -> TrackingClaims:
        """The claims of a valid VERP token, whatever its case; raises InvalidToken otherwise."""
        if len(token) > _MAX_TOKEN:
            raise InvalidToken("too long")
        parts = token.lower().split("-")
        if len(parts) != 3:
            raise InvalidToken("malformed")
        kid, payload, mac_text = parts
        if not _KID_RE.match(kid):
            raise InvalidToken("malformed key id")
        expected = self._mac(kid, f"{kid}-{payload}".encode("ascii", "replace"))
        given = _b32d(mac_text)
        if _b32e(given) != mac_text or not hmac.compare_digest(expected, given):
            raise InvalidToken("bad signature")
        try:
            version, kind, org_id, email_id, recipient, _ = _DECODER.decode(_b32d(payload))
        except msgspec.DecodeError as exc:  # pragma: no cover - only reachable with a valid MAC
            raise InvalidToken("bad payload") from exc
        if version != _VERSION or kind != TokenKind.BOUNCE.value:
            raise InvalidToken("not a VERP token")
        return TrackingClaims(TokenKind.BOUNCE, org_id, email_id, recipient)
