"""Client addresses: truncation before they leave the process, and whom X-Forwarded-For may name."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailfold.tracker.domain.network import (
    NetworkSet,
    client_address,
    parse_address,
    parse_networks,
    truncate,
)

NOBODY = NetworkSet(())
EDGE = NetworkSet(parse_networks("10.0.0.0/8, 192.168.1.1/32 fd00::/8"))


def test_ipv4_keeps_its_first_three_octets() -> None:
    assert truncate(ipaddress.ip_address("203.0.113.77")) == "203.0.113.0"


def test_ipv6_keeps_its_first_48_bits() -> None:
    assert truncate(ipaddress.ip_address("2001:db8:abcd:12:3456::1")) == "2001:db8:abcd::"


def test_an_unknown_client_is_recorded_as_empty() -> None:
    assert truncate(None) == ""


@given(st.ip_addresses())
def test_a_truncated_address_is_the_network_of_the_original(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    kept = 24 if address.version == 4 else 48
    truncated = ipaddress.ip_address(truncate(address))
    assert truncated in ipaddress.ip_network(f"{address}/{kept}", strict=False)
    assert int(truncated) & ((1 << (address.max_prefixlen - kept)) - 1) == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("198.51.100.7", "198.51.100.7"),
        (" 198.51.100.7 ", "198.51.100.7"),
        ("198.51.100.7:443", "198.51.100.7"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
    ],
)
def test_addresses_are_read_in_the_forms_proxies_write(text: str, expected: str) -> None:
    assert parse_address(text) == ipaddress.ip_address(expected)


@pytest.mark.parametrize("text", ["", "unknown", "300.1.1.1", "[2001:db8::1", "host.example"])
def test_what_is_not_an_address_is_none(text: str) -> None:
    assert parse_address(text) is None


def test_forwarded_for_is_ignored_when_the_peer_is_not_a_trusted_proxy() -> None:
    client = client_address("198.51.100.7", "203.0.113.9", EDGE)
    assert client == ipaddress.ip_address("198.51.100.7")
    assert client_address("10.0.0.1", "203.0.113.9", NOBODY) == ipaddress.ip_address("10.0.0.1")


def test_behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client() -> None:
    # The client wrote the first entry itself; our edge proxies appended the rest.
    chain = "1.2.3.4, 203.0.113.9, 10.1.1.1"
    assert client_address("10.0.0.1", chain, EDGE) == ipaddress.ip_address("203.0.113.9")


def test_a_chain_of_only_trusted_proxies_yields_its_leftmost_hop() -> None:
    assert client_address("10.0.0.1", "10.2.2.2, 10.1.1.1", EDGE) == ipaddress.ip_address(
        "10.2.2.2"
    )


def test_a_garbled_hop_ends_the_walk_at_the_last_hop_read() -> None:
    assert client_address("10.0.0.1", "203.0.113.9, garbage, 10.1.1.1", EDGE) == (
        ipaddress.ip_address("10.1.1.1")
    )


def test_ipv6_proxies_and_clients_are_handled_alike() -> None:
    client = client_address("fd00::1", "2001:db8:1:2::99", EDGE)
    assert client == ipaddress.ip_address("2001:db8:1:2::99")


def test_a_missing_peer_is_an_unknown_client() -> None:
    assert client_address(None, "203.0.113.9", EDGE) is None


def test_network_sets_match_by_prefix() -> None:
    networks = NetworkSet(parse_networks(["17.0.0.0/8", "2620:149::/32", "192.0.2.1/32"]))
    assert ipaddress.ip_address("17.58.1.2") in networks
    assert ipaddress.ip_address("2620:149:a:b::1") in networks
    assert ipaddress.ip_address("192.0.2.1") in networks
    assert ipaddress.ip_address("192.0.2.2") not in networks
    assert ipaddress.ip_address("18.0.0.1") not in networks
    assert "17.0.0.1" not in networks
    assert networks
    assert not NOBODY


def test_a_bad_network_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33'"):
        parse_networks("10.0.0.0/8,10.0.0.0/33")
