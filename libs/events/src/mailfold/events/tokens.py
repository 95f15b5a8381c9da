"""Tracking tokens shared by sender and tracker: compact, URL-safe, HMAC-SHA256 signed, rotatable.

Layout: `<kid>.<payload>.<mac>`, each part base64url without padding. The payload is a msgpack
array `[version, kind, org_id, email_id, recipient, url]`; the MAC is HMAC-SHA256 over
`<kid>.<payload>` truncated to 16 bytes (128 bits, as RFC 2104 allows), checked in constant time.
The key id names the secret that signed the token, so old keys keep verifying after a rotation.

VERP tokens (the `<token>` of a `bounce+<token>@domain` return path) must fit a local part of 64
octets (RFC 5321) and survive a change of case, so they carry a reference instead of the claims:
lower-case base32 of `ref (10 bytes) | recipient index (2) | key tag (1) | MAC (10)`, 37
characters. `ref` is a hash of the org and email ids; the sender records `ref -> (org, email,
recipients)` (a VerpRecord) before sending, and the bounce handler looks it up. The MAC (80 bits,
HMAC-SHA256 truncated) binds the full claims (org, email, the recipient at that index) and the
reference, so neither a forged token nor a tampered record verifies. The key tag is the first
byte of the key id's SHA-256: it picks the key without spelling its id. Older long tokens
(`<kid>-<payload>-<mac>`, the claims inside) are still accepted by `verify_verp`.
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


_VERP_REF_BYTES: Final = 10
_VERP_MAC_BYTES: Final = 10
_VERP_BYTES: Final = _VERP_REF_BYTES + 2 + 1 + _VERP_MAC_BYTES
VERP_TOKEN_LENGTH: Final = -(-_VERP_BYTES * 8 // 5)  # 37 base32 characters
_MAX_RECIPIENTS: Final = 0xFFFF


def verp_ref(org_id: str, email_id: str) -> str:
    """The reference a short VERP token carries for one email: 16 lower-case base32 characters."""
    digest = hashlib.sha256(f"{org_id}\x1f{email_id}".encode()).digest()
    return _b32e(digest[:_VERP_REF_BYTES])


class VerpRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What a VERP reference stands for: the email and its recipients, in the sender's order."""

    org_id: str
    email_id: str
    recipients: tuple[str, ...]

    @property
    def ref(self) -> str:
        """The reference tokens for this email carry."""
        return verp_ref(self.org_id, self.email_id)

    def index_of(self, recipient: str) -> int:
        """The position of a recipient (compared case-insensitively); ValueError if absent."""
        wanted = recipient.strip().lower()
        for i, address in enumerate(self.recipients):
            if address.strip().lower() == wanted:
                return i
        raise ValueError(f"{recipient!r} is not a recipient of {self.email_id}")


@dataclass(frozen=True, slots=True)
class VerpTicket:
    """A short VERP token read but not yet verified: the reference to look up, and the rest."""

    ref: str
    index: int
    tag: int
    mac: bytes


def _key_tag(kid: str) -> int:
    return hashlib.sha256(kid.encode()).digest()[0]


def _verp_signed(ref: bytes, index: int, org_id: str, email_id: str, recipient: str) -> bytes:
    claims = _ENCODER.encode((2, "b", org_id, email_id, recipient.strip().lower()))
    return b"verp\x1f" + ref + index.to_bytes(2, "big") + claims


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

    def _verp_mac(self, kid: str, signed: bytes) -> bytes:
        return self._mac(kid, signed)[:_VERP_MAC_BYTES]

    def sign_verp(self, claims: TrackingClaims, index: int) -> str:
        """A short case-insensitive token for a VERP return path (`bounce+<token>@domain`).

        `index` is the recipient's position in the email's VerpRecord. The token is
        VERP_TOKEN_LENGTH characters of lower-case base32 (see the module docstring).
        """
        if claims.kind is not TokenKind.BOUNCE:
            raise ValueError("VERP tokens carry bounce claims")
        if not 0 <= index <= _MAX_RECIPIENTS:
            raise ValueError("recipient index out of range")
        ref = _b32d(verp_ref(claims.org_id, claims.email_id))
        signed = _verp_signed(ref, index, claims.org_id, claims.email_id, claims.recipient)
        mac = self._verp_mac(self.current, signed)
        raw = ref + index.to_bytes(2, "big") + bytes([_key_tag(self.current)]) + mac
        return _b32e(raw)

    def open_verp(self, token: str) -> VerpTicket | None:
        """The reference inside a short VERP token (any case); None for an older long token.

        Raises InvalidToken for anything that is neither.
        """
        if "-" in token:
            return None
        if len(token) != VERP_TOKEN_LENGTH:
            raise InvalidToken("malformed")
        raw = _b32d(token.lower())
        if len(raw) != _VERP_BYTES or _b32e(raw) != token.lower():
            raise InvalidToken("malformed")
        ref = raw[:_VERP_REF_BYTES]
        index = int.from_bytes(raw[_VERP_REF_BYTES : _VERP_REF_BYTES + 2], "big")
        tag = raw[_VERP_REF_BYTES + 2]
        return VerpTicket(_b32e(ref), index, tag, raw[_VERP_REF_BYTES + 3 :])

    def verify_verp_ticket(self, ticket: VerpTicket, record: VerpRecord | None) -> TrackingClaims:
        """The claims of a short token, given the record its reference names; raises
        InvalidToken when there is no such record or the MAC does not bind it."""
        if record is None or record.ref != ticket.ref or ticket.index >= len(record.recipients):
            raise InvalidToken("unknown VERP reference")
        recipient = record.recipients[ticket.index]
        signed = _verp_signed(
            _b32d(ticket.ref), ticket.index, record.org_id, record.email_id, recipient
        )
        for kid in self._keys:
            if _key_tag(kid) == ticket.tag and hmac.compare_digest(
                self._verp_mac(kid, signed), ticket.mac
            ):
                return TrackingClaims(TokenKind.BOUNCE, record.org_id, record.email_id, recipient)
        raise InvalidToken("bad signature")

    def sign_long_verp(self, claims: TrackingClaims) -> str:
        """The older long VERP token, `<kid>-<payload>-<mac>` with the claims inside.

        No longer sent (it overflows a 64-octet local part); kept so that tests can make the
        tokens of mail sent before, which `verify_verp` still accepts for the bounce window.
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
        """The claims of a valid long VERP token, whatever its case; raises InvalidToken otherwise.

        Short tokens need their record: `open_verp`, then `verify_verp_ticket`.
        """
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
