"""Office 365 (Exchange Online): the Exchange NDR, told apart by its reporting MTAs."""

from __future__ import annotations

import re

from mailfold.bounces.message import Bounce
from mailfold.bounces.readers.base import Reader

__all__ = ["Office365Reader"]

_EXCHANGE_ONLINE = re.compile(r"^Reporting-MTA:\s*dns;\s*\S+\.prod\.outlook\.com\b", re.I | re.M)
_TENANT = re.compile(r"\.onmicrosoft\.com\b|@microsoft\.com\b", re.I)


class Office365Reader(Reader):
    """Recipient lookups fail at RCPT ("RESOLVER.ADR.RecipientNotFound")."""

    name = "office365"
    default_command = "RCPT"

    def detect(self, bounce: Bounce) -> bool:
        # Exchange Online's reporting MTAs are named *.prod.outlook.com; its NDR text is the
        # same as on-premises Exchange's, so this is what tells the two apart.
        return any(_EXCHANGE_ONLINE.search(block) for block in bounce.dsn) or bool(
            _TENANT.search(bounce.head("from"))
        )
