"""Mail exchangers of a domain (RFC 5321 section 5.1) with dnspython's asynchronous resolver.

MX records by preference (equal preferences in random order, to spread load); no MX record but
an address record means the domain is its own exchanger; a single MX of "." is a null MX
(RFC 7505): the domain takes no mail.
"""

from __future__ import annotations

import random
from typing import Final

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

DEFAULT_LIFETIME: Final = 10.0


class DomainNotFound(LookupError):
    """The domain does not exist, or has neither MX nor address records: a permanent failure."""


class NullMx(LookupError):
    """The domain publishes a null MX: it accepts no mail, for good."""


class DnsUnavailable(RuntimeError):
    """The resolver could not answer right now (timeout, SERVFAIL): worth retrying later."""


class MxResolver:
    """Looks up where a domain's mail goes."""

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver | None = None,
        *,
        lifetime: float = DEFAULT_LIFETIME,
    ) -> None:
        self._resolver = resolver
        self._lifetime = lifetime

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        # Created on first use: reading /etc/resolv.conf is I/O, and dev and tests route every
        # domain to fixed hosts and never get here.
        if self._resolver is None:
            try:
                self._resolver = dns.asyncresolver.Resolver()
            except dns.exception.DNSException as exc:
                raise DnsUnavailable(f"no DNS resolver configuration: {exc}") from exc
        return self._resolver

    async def exchangers(self, domain: str) -> list[str]:
        """Host names to try, best first; raises DomainNotFound, NullMx or DnsUnavailable."""
        resolver = self._get_resolver()
        try:
            answer = await resolver.resolve(domain, "MX", lifetime=self._lifetime)
        except dns.resolver.NXDOMAIN as exc:
            raise DomainNotFound(f"the domain {domain} does not exist") from exc
        except dns.resolver.NoAnswer:
            return await self._implicit_mx(domain)
        except dns.exception.DNSException as exc:
            raise DnsUnavailable(f"MX lookup for {domain} failed: {exc}") from exc
        records: list[tuple[int, str]] = []
        null = False
        for rdata in answer:
            exchange: dns.name.Name = rdata.exchange
            if exchange == dns.name.root:
                null = True
                continue
            records.append((int(rdata.preference), exchange.to_text(omit_final_dot=True)))
        if null and not records:
            raise NullMx(f"the domain {domain} accepts no mail (null MX)")
        random.shuffle(records)
        records.sort(key=lambda r: r[0])
        return [host for _, host in records]

    async def _implicit_mx(self, domain: str) -> list[str]:
        resolver = self._get_resolver()
        for rdtype in ("A", "AAAA"):
            try:
                await resolver.resolve(domain, rdtype, lifetime=self._lifetime)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            except dns.exception.DNSException as exc:
                raise DnsUnavailable(f"{rdtype} lookup for {domain} failed: {exc}") from exc
            return [domain]
        raise DomainNotFound(f"the domain {domain} has no MX and no address records")
