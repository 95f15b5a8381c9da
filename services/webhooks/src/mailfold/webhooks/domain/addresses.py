"""Which addresses an endpoint may reach: no private, loopback or link-local targets (SSRF)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def refusal(address: Address, *, allow_loopback: bool) -> str | None:
    """Why a delivery must not go to this address, or None when it may.

    Everything that is not globally routable is refused: private ranges, loopback, link-local
    (cloud metadata services live at 169.254.169.254), shared, reserved, multicast, unspecified.
    IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None if allow_loopback else "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_private:
        return "private"
    if address.is_multicast or address.is_reserved or address.is_unspecified:
        return "reserved"
    if not address.is_global:
        return "not globally routable"
    return None


def is_loopback(text: str) -> bool:
    """Whether an address (text) is a loopback address, IPv4-mapped forms included."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def first_refusal(addresses: Iterable[str], *, allow_loopback: bool) -> str | None:
    """The refusal of the first address that may not be reached (all must be reachable)."""
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            return f"unusable address {text!r}"
        reason = refusal(address, allow_loopback=allow_loopback)
        if reason is not None:
            return f"{text} is {reason}"
    return None
