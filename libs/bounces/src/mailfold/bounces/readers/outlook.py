"""Outlook.com / Hotmail: an RFC 3464 report whose diagnostic is the recipient lookup's answer."""

from __future__ import annotations

import re

from mailfold.bounces.message import Bounce
from mailfold.bounces.readers.base import Reader

__all__ = ["OutlookReader"]

_HOTMAIL = re.compile(r"^Reporting-MTA:\s*dns;\s*\S+\.hotmail\.com\b", re.I | re.M)


class OutlookReader(Reader):
    """Outlook.com answers at RCPT ("Requested action not taken: mailbox unavailable")."""

    name = "outlook"
    sender_markers = re.compile(r"@(?:hotmail|live|msn)\.[a-z.]+\b", re.I)
    default_command = "RCPT"

    def detect(self, bounce: Bounce) -> bool:
        return any(_HOTMAIL.search(block) for block in bounce.dsn)
