"""Finding a domain's exchangers through a real DNS server (a small one on loopback, over UDP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import dns.asyncresolver
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from mailfold.sender.adapters.dns import DnsUnavailable, DomainNotFound, MxResolver, NullMx
from mailfold.sender.adapters.smtp import DirectMailer
from mailfold.sender.domain.addresses import parse_mailbox
from mailfold.sender.domain.delivery import AttemptVerdict, SmtpAttempt
from mailfold.sender.domain.routes import Routes
from mailfold.sender.service_layer.ports import Envelope

# name -> rdtype -> records (text form); a name absent from the zone does not exist.
ZONE: dict[str, dict[str, list[str]]] = {
    "two-mx.test.": {"MX": ["20 backup.two-mx.test.", "10 primary.two-mx.test."]},
    "no-mx.test.": {"A": ["192.0.2.10"]},
    "v6-only.test.": {"AAAA": ["2001:db8::25"]},
    "null-mx.test.": {"MX": ["0 ."]},
    "empty.test.": {"TXT": ['"v=spf1 -all"']},
}
BROKEN = "servfail.test."


class _Dns(asyncio.DatagramProtocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        if name == BROKEN:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name not in ZONE:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif rdtype in ZONE[name]:
            response.answer.append(
                dns.rrset.from_text_list(name, 60, "IN", rdtype, ZONE[name][rdtype])
            )
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def resolver() -> AsyncIterator[dns.asyncresolver.Resolver]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Dns, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    resolver.lifetime = 2.0
    yield resolver
    transport.close()


async def test_exchangers_come_in_preference_order(resolver: Any) -> None:
    assert await MxResolver(resolver).exchangers("two-mx.test") == [
        "primary.two-mx.test",
        "backup.two-mx.test",
    ]


async def test_a_domain_without_mx_but_with_an_address_is_its_own_exchanger(
    resolver: Any,
) -> None:
    assert await MxResolver(resolver).exchangers("no-mx.test") == ["no-mx.test"]
    assert await MxResolver(resolver).exchangers("v6-only.test") == ["v6-only.test"]


@pytest.mark.parametrize(
    ("domain", "error"),
    [
        ("nowhere.test", DomainNotFound),
        ("empty.test", DomainNotFound),
        ("null-mx.test", NullMx),
        ("servfail.test", DnsUnavailable),
    ],
)
async def test_lookups_that_cannot_give_an_exchanger_say_why(
    resolver: Any, domain: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await MxResolver(resolver, lifetime=2.0).exchangers(domain)


@pytest.mark.parametrize(
    ("domain", "verdict", "status"),
    [
        ("nowhere.test", AttemptVerdict.BOUNCED, "5.1.2"),
        ("null-mx.test", AttemptVerdict.BOUNCED, "5.1.10"),
        ("servfail.test", AttemptVerdict.DEFERRED, "4.4.3"),
    ],
)
async def test_dns_failures_become_bounces_or_deferrals_for_every_recipient(
    resolver: Any, domain: str, verdict: AttemptVerdict, status: str
) -> None:
    mailer = DirectMailer(Routes(), MxResolver(resolver, lifetime=2.0), helo="sender.test")
    envelopes = [
        Envelope("bounce@mail.test", parse_mailbox(f"{user}@{domain}"), b"Subject: x\r\n\r\nx")
        for user in ("ann", "bob")
    ]
    seen: list[SmtpAttempt] = []

    async def before_data(_: Any) -> bool:
        raise AssertionError("nothing is sent")

    async def after(_: Envelope, attempt: SmtpAttempt) -> None:
        seen.append(attempt)

    await mailer.deliver(domain, envelopes, before_data, after)

    assert [a.verdict for a in seen] == [verdict, verdict]
    assert {a.status for a in seen} == {status}
    assert all(a.command == "DNS" and a.code is None for a in seen)
