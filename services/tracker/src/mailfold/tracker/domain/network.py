"""Client addresses: which hop is the client, how it is truncated, and fast network membership."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# What is kept of an address: enough for a coarse location, not enough to single out a household.
IPV4_KEPT_BITS: Final = 24
IPV6_KEPT_BITS: Final = 48


# Parsing and masking cost microseconds on the pixel path; the same clients come back often.
_CACHE_SIZE: Final = 65536


@functools.lru_cache(maxsize=_CACHE_SIZE)
def parse_address(text: str) -> IPAddress | None:
    """An address from a socket peer or a forwarded-for entry, or None when it is not one.

    Accepts a port after IPv4 (`1.2.3.4:80`) and bracketed IPv6 (`[::1]:80`), as some proxies
    write them; an IPv4-mapped IPv6 address is taken as the IPv4 address it carries.
    """
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_networks(spec: str | Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs from a comma or space separated list; raises ValueError naming a bad entry."""
    parts = spec.replace(",", " ").split() if isinstance(spec, str) else spec
    networks: list[IPNetwork] = []
    for part in parts:
        try:
            networks.append(ipaddress.ip_network(part.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{part.strip()!r} is not an IP network (CIDR)") from exc
    return tuple(networks)


class NetworkSet:
    """Membership of an address in many networks, in one set lookup per distinct prefix length."""

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        # {address bits (32 or 128): {prefix length: {network bits shifted down}}}
        by_width: dict[int, dict[int, set[int]]] = {32: {}, 128: {}}
        for network in networks:
            shift = network.max_prefixlen - network.prefixlen
            by_width[network.max_prefixlen].setdefault(shift, set()).add(
                int(network.network_address) >> shift
            )
        self._lookups: dict[int, tuple[tuple[int, set[int]], ...]] = {
            width: tuple(sorted(shifts.items())) for width, shifts in by_width.items()
        }
        self.empty = not any(self._lookups.values())

    def __contains__(self, address: object) -> bool:
        if self.empty or not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        value = int(address)
        for shift, networks in self._lookups[address.max_prefixlen]:
            if value >> shift in networks:
                return True
        return False

    def __bool__(self) -> bool:
        return not self.empty


@functools.lru_cache(maxsize=_CACHE_SIZE)
def truncate(address: IPAddress | None) -> str:
    """The address with its host part zeroed (/24 for IPv4, /48 for IPv6); "" when unknown."""
    if address is None:
        return ""
    bits = address.max_prefixlen
    kept = IPV4_KEPT_BITS if bits == 32 else IPV6_KEPT_BITS
    mask = ((1 << kept) - 1) << (bits - kept)
    return str(type(address)(int(address) & mask))


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: NetworkSet
) -> IPAddress | None:
    """The client: the direct peer, unless that peer is a trusted proxy.

    Behind a trusted proxy, X-Forwarded-For is read from the right (the entry the nearest proxy
    wrote) to the left, skipping trusted proxies; the first untrusted address is the client.
    Entries left of it were written by the client itself and prove nothing. An entry that is not
    an address ends the walk: the last hop that was read is the best that can be said.
    """
    address = parse_address(peer) if peer else None
    if trusted.empty or address is None or not forwarded_for or address not in trusted:
        return address
    for entry in reversed(forwarded_for.split(",")):
        hop = parse_address(entry)
        if hop is None:
            return address
        address = hop
        if hop not in trusted:
            return hop
    return address
