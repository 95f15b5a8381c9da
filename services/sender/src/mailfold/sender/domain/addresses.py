"""Mailbox address syntax (RFC 5321 paths, RFC 5322 addr-spec) and the forms the sender uses.

An address is accepted when it is an addr-spec a mail server can take in `RCPT TO`: a dot-atom or
quoted-string local part of at most 64 octets, then a domain (host name labels, or an address
literal such as `[192.0.2.1]`), at most 254 octets in all. Internationalised domain names are
accepted and carried in their ASCII (IDNA) form; non-ASCII local parts would need SMTPUTF8, which
the sender does not use, so they are refused.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Final

MAX_LOCAL: Final = 64
MAX_DOMAIN: Final = 253
MAX_ADDRESS: Final = 254

_ATEXT: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM: Final = re.compile(rf"^{_ATEXT}+(?:\.{_ATEXT}+)*$")
_QUOTED: Final = re.compile(r'^"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"$')
_LABEL: Final = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class InvalidAddress(ValueError):
    """The text is not an address a mail server can deliver to; the message says why."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A checked address: its local part and its domain in ASCII form."""

    local: str
    domain: str

    @property
    def address(self) -> str:
        """`local@domain`, the form used in envelopes and headers."""
        return f"{self.local}@{self.domain}"

    @property
    def key(self) -> str:
        """The form two addresses compare by: case-insensitive, as the CRM compares them."""
        return self.address.lower()


def _ascii_domain(domain: str) -> str:
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise InvalidAddress(
            f"the domain {domain!r} is not a valid internationalised name"
        ) from exc


def _check_literal(literal: str) -> None:
    inner = literal[1:-1]
    try:
        if inner.lower().startswith("ipv6:"):
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError as exc:
        raise InvalidAddress(f"{literal} is not an IPv4 or IPv6 address literal") from exc


def _check_domain(domain: str) -> str:
    if not domain:
        raise InvalidAddress("the domain is missing")
    if domain.startswith("[") and domain.endswith("]"):
        _check_literal(domain)
        return domain
    ascii_domain = _ascii_domain(domain.rstrip(".") if domain.endswith(".") else domain)
    if len(ascii_domain) > MAX_DOMAIN:
        raise InvalidAddress(f"the domain is longer than {MAX_DOMAIN} characters")
    labels = ascii_domain.split(".")
    for label in labels:
        if not _LABEL.match(label):
            raise InvalidAddress(f"the domain {domain!r} has an invalid label {label!r}")
    if labels[-1].isdigit():
        raise InvalidAddress(f"the domain {domain!r} looks like an IP address without brackets")
    return ascii_domain


@functools.lru_cache(maxsize=4096)
def parse_mailbox(text: str) -> Mailbox:
    """Check one address and return it in envelope form; raises InvalidAddress with the reason.

    Cached: an email's addresses are checked, deduplicated and written into headers in turn.
    """
    address = text.strip()
    if not address:
        raise InvalidAddress("the address is empty")
    local, sep, domain = address.rpartition("@")
    if not sep:
        raise InvalidAddress("the address has no @")
    if not local:
        raise InvalidAddress("the local part before @ is empty")
    if not local.isascii():
        raise InvalidAddress("the local part has non-ASCII characters")
    if len(local) > MAX_LOCAL:
        raise InvalidAddress(f"the local part is longer than {MAX_LOCAL} characters")
    if not (_DOT_ATOM.match(local) or _QUOTED.match(local)):
        raise InvalidAddress(f"the local part {local!r} is not a dot-atom or a quoted string")
    ascii_domain = _check_domain(domain)
    mailbox = Mailbox(local, ascii_domain)
    if len(mailbox.address) > MAX_ADDRESS:
        raise InvalidAddress(f"the address is longer than {MAX_ADDRESS} characters")
    return mailbox


def is_valid(text: str) -> bool:
    """True if `parse_mailbox` accepts the text."""
    try:
        parse_mailbox(text)
    except InvalidAddress:
        return False
    return True
