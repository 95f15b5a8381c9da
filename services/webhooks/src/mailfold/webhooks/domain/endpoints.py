"""A webhook endpoint: where an org's events go, which ones, and the secrets that sign them."""

from __future__ import annotations

import base64
import functools
import secrets
from datetime import datetime
from typing import Annotated, Final
from urllib.parse import urlsplit

import msgspec

from mailfold.events import EVENT_TYPES, SOURCES

SECRET_PREFIX: Final = "whsec_"
MAX_SECRETS: Final = 2  # the current one and, during a rotation, the one before it
MAX_URL_LENGTH: Final = 2048
MAX_ENDPOINTS_PER_ORG: Final = 20  # each endpoint is a durable consumer and a delivery loop


class Secret(msgspec.Struct, frozen=True, kw_only=True):
    """One signing secret, `whsec_<base64 key>` as the Standard Webhooks specification writes it."""

    value: str
    created_at: datetime


class Endpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A configured endpoint. Empty `event_types`/`sources` mean every type/source."""

    endpoint_id: str
    org_id: str
    url: str
    event_types: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    description: str = ""
    secrets: tuple[Secret, ...] = ()  # newest first; every one signs while it is listed
    enabled: bool = True
    disabled_reason: str = ""
    created_at: datetime
    updated_at: datetime

    def matches(self, event_type: str, source: str | None) -> bool:
        """Whether this endpoint wants an event of this type about an email of this source.

        Only origin events carry the source; for the others it is the email's, from the fold.
        An email whose origin has not been seen has no known source and matches no source filter.
        """
        if not self.enabled:
            return False
        if self.event_types and event_type not in self.event_types:
            return False
        return not self.sources or (source is not None and source in self.sources)

    def keys(self) -> list[bytes]:
        """The raw HMAC keys of every listed secret, newest first."""
        return [secret_key(s.value) for s in self.secrets]


class InvalidField(ValueError):
    """A request field that cannot be used; `field` names it for the problem document."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class TooManyEndpoints(ValueError):
    """The org has as many endpoints as it may have."""


class EndpointInput(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of `POST /v1/orgs/{org}/webhooks`."""

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_URL_LENGTH)]
    event_types: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    description: Annotated[str, msgspec.Meta(max_length=500)] = ""
    secret: str | None = None
    enabled: bool = True


class EndpointPatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of `PATCH .../webhooks/{id}`: every field optional.

    `rotate_secret: true` adds a new secret and keeps the previous one signing too, until
    `drop_old_secrets: true` (or the next rotation) removes it.
    """

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_URL_LENGTH)] | None = None
    event_types: tuple[str, ...] | None = None
    sources: tuple[str, ...] | None = None
    description: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    enabled: bool | None = None
    rotate_secret: bool = False
    secret: str | None = None
    drop_old_secrets: bool = False


def new_secret() -> str:
    """A fresh `whsec_` secret of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


@functools.lru_cache(maxsize=4096)
def secret_key(value: str) -> bytes:
    """The HMAC key inside a `whsec_` secret (kept: every attempt signs with it)."""
    return base64.b64decode(value.removeprefix(SECRET_PREFIX), validate=True)


def check_secret(value: str) -> str:
    """A caller-chosen secret: `whsec_` and base64 of 24 to 64 bytes."""
    if not value.startswith(SECRET_PREFIX):
        raise InvalidField("secret", "must start with whsec_")
    try:
        key = secret_key(value)
    except ValueError as exc:
        raise InvalidField("secret", "must be whsec_ followed by base64") from exc
    if not 24 <= len(key) <= 64:
        raise InvalidField("secret", "must hold 24 to 64 bytes of key")
    return value


def check_event_types(values: tuple[str, ...]) -> tuple[str, ...]:
    """Known event wire names, without repeats."""
    for value in values:
        if value not in EVENT_TYPES:
            raise InvalidField("event_types", f"unknown event type {value!r}")
    return tuple(dict.fromkeys(values))


def check_sources(values: tuple[str, ...]) -> tuple[str, ...]:
    """Known email sources, without repeats."""
    known = {str(s) for s in SOURCES}
    for value in values:
        if value not in known:
            raise InvalidField("sources", f"unknown source {value!r}")
    return tuple(dict.fromkeys(values))


def check_url_shape(url: str, *, allow_http: bool) -> str:
    """An absolute https URL (http only where development allows it), no credentials in it."""
    if any(c <= " " or c == "\x7f" for c in url):
        raise InvalidField("url", "must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise InvalidField("url", "is not a valid URL") from exc
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        raise InvalidField("url", "must be an https URL" if not allow_http else "must be http(s)")
    if not parts.hostname:
        raise InvalidField("url", "must name a host")
    if parts.username or parts.password:
        raise InvalidField("url", "must not carry credentials")
    if parts.fragment:
        raise InvalidField("url", "must not carry a fragment")
    return url
