"""Email address and domain syntax, and matching sender domains against a blacklist."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

MAX_ADDRESS: Final = 254  # RFC 5321 path limit less the angle brackets
MAX_LOCAL: Final = 64
MAX_DOMAIN: Final = 253

# A dot-atom local part (RFC 5322 atext, plus UTF-8 as RFC 6531 allows); quoted local parts are
# legal but never used by real mailboxes, and refusing them keeps addresses safe in headers.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
_LOCAL = re.compile(rf"^{_ATEXT}(?:\.{_ATEXT})*$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9\-\u0080-\U0010ffff]{1,63}(?<!-)$")


def is_domain(text: str) -> bool:
    """True for a host name of at least two labels (`example.com`), each label 1-63 characters."""
    if not text or len(text) > MAX_DOMAIN:
        return False
    labels = text.split(".")
    return len(labels) >= 2 and all(_LABEL.match(label) for label in labels)


def is_address(text: str) -> bool:
    """True for a plain `local@domain` address a mail server would accept (no display name)."""
    if not text or len(text) > MAX_ADDRESS:
        return False
    local, at, domain = text.rpartition("@")
    if not at or not local or len(local) > MAX_LOCAL:
        return False
    return bool(_LOCAL.match(local)) and is_domain(domain)


def domain_of(address: str) -> str:
    """The lower-cased domain of an address ("" when there is none)."""
    _, at, domain = address.strip().rpartition("@")
    return domain.lower().rstrip(".") if at else ""


def normalise_domain(text: str) -> str:
    """A domain as settings keep it: lower-case, without a leading `@`, `*.` or `.`."""
    domain = text.strip().lower().rstrip(".")
    for prefix in ("@", "*.", "."):
        domain = domain.removeprefix(prefix)
    return domain


def domain_listed(domain: str, listed: Iterable[str]) -> bool:
    """True when `domain` is one of `listed` or a subdomain of one of them."""
    domain = domain.lower().rstrip(".")
    if not domain:
        return False
    for entry in listed:
        entry = normalise_domain(entry)
        if entry and (domain == entry or domain.endswith("." + entry)):
            return True
    return False
