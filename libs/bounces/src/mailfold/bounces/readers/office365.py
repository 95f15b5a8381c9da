"""Office 365 and Outlook.com: Exchange Online's NDR with its diagnostic for administrators."""

from __future__ import annotations

import re

from mailfold.bounces.readers.base import Reader

__all__ = ["Office365Reader"]


class Office365Reader(Reader):
    """Office 365 and Outlook.com: Exchange Online's NDR with its diagnostic for administrators."""

    name = "office365"
    default_command = "RCPT"
    sender_markers = re.compile(r"@outlook\.com|\.onmicrosoft\.com|@microsoft\.com", re.I)
