"""Routing overrides (`MAILFOLD_SMTP_ROUTES`): send a domain's mail to a fixed host, not its MX.

Format: `domain=host:port[,domain=host:port...]`; `*` matches every domain without a route of its
own. Domains compare case-insensitively. Dev and tests route everything to local servers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

WILDCARD: Final = "*"
DEFAULT_SMTP_PORT: Final = 25


@dataclass(frozen=True, slots=True)
class Hop:
    """One server to hand mail to."""

    host: str
    port: int = DEFAULT_SMTP_PORT

    @property
    def name(self) -> str:
        """`host` for the standard port, `host:port` otherwise: what events call the remote MTA."""
        return self.host if self.port == DEFAULT_SMTP_PORT else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Routes:
    """Fixed next hops by recipient domain."""

    table: dict[str, Hop] = field(default_factory=dict)

    def lookup(self, domain: str) -> Hop | None:
        """The fixed hop for a domain: its own route first, then `*`; None to use DNS."""
        return self.table.get(domain.lower().rstrip(".")) or self.table.get(WILDCARD)

    @classmethod
    def parse(cls, spec: str) -> Routes:
        """From `domain=host:port,...`; raises ValueError naming the entry at fault."""
        table: dict[str, Hop] = {}
        for raw in spec.split(","):
            entry = raw.strip()
            if not entry:
                continue
            domain, sep, target = entry.partition("=")
            domain, target = domain.strip().lower().rstrip("."), target.strip()
            if not sep or not domain or not target:
                raise ValueError(f"route {entry!r} should look like domain=host:port")
            host, colon, port_text = target.rpartition(":")
            if not colon:
                host, port_text = target, str(DEFAULT_SMTP_PORT)
            host = host.strip("[]")
            try:
                port = int(port_text)
            except ValueError as exc:
                raise ValueError(f"route {entry!r} has a port that is not a number") from exc
            if not host or not 0 < port < 65536:
                raise ValueError(f"route {entry!r} needs a host and a port from 1 to 65535")
            table[domain] = Hop(host, port)
        return cls(table)
