"""Which kind of mail an SMTP recipient address asks for, read from its local part.

Any domain is accepted; the local part decides (see docs/ingest.md):

- `bounce+<token>@...`       bounce and feedback reports, the token being a signed VERP token
- `dropbox+<org>@...`        the org's BCC dropbox
- `in+<org>@...`             inbound mail forwarded from an integrated mailbox
- `in+<org>+<user>@...`      the same, for one user's mailbox
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mailfold.ingest.domain.requests import USER
from mailfold.runtime.orgs import ORG_RE


class RouteKind(enum.StrEnum):
    """What the ingest SMTP server does with a message for this recipient."""

    BOUNCE = "bounce"
    DROPBOX = "dropbox"
    INBOUND = "inbound"


@dataclass(frozen=True, slots=True)
class Route:
    """A recipient address, understood."""

    kind: RouteKind
    address: str
    org_id: str = ""  # "" for bounces: the token names the org
    user: str | None = None
    token: str = ""

    @property
    def destination(self) -> tuple[str, str]:
        """Recipients with the same destination share every decision made about a message."""
        return (self.kind.value, self.org_id)


def route_for(address: str) -> Route | None:
    """The route of a recipient address, or None when no mailbox here answers to it."""
    local, at, _domain = address.strip().rpartition("@")
    if not at:
        return None
    prefix, plus, rest = local.partition("+")
    if not plus:
        return None
    prefix = prefix.lower()
    if prefix == "bounce":
        # The token's case may have been changed in transit; verification ignores case.
        return Route(RouteKind.BOUNCE, address, token=rest)
    if prefix == "dropbox":
        org = rest.lower()
        return Route(RouteKind.DROPBOX, address, org_id=org) if ORG_RE.match(org) else None
    if prefix == "in":
        org, plus, user = rest.partition("+")
        org = org.lower()
        if not ORG_RE.match(org) or (plus and not USER.match(user)):
            return None
        return Route(RouteKind.INBOUND, address, org_id=org, user=user if plus else None)
    return None
