"""Oracle (Sun) Communications Messaging Server: "This report relates to a message you sent"."""

from __future__ import annotations

import re

from mailfold.bounces.extract import find_status
from mailfold.bounces.message import Bounce, Entry
from mailfold.bounces.readers.base import Reader

__all__ = ["MessagingServerReader"]

# The reason line says at which step the remote server refused.
_STAGES = (
    (re.compile(r"Reason: Remote SMTP server has rejected address", re.I), "RCPT"),
    (re.compile(r"Reason: Remote SMTP server has rejected the sender", re.I), "MAIL"),
)


class MessagingServerReader(Reader):
    """A report with "Recipient address:", "Reason:" and "Diagnostic code:" lines per recipient."""

    name = "messagingserver"
    text_markers = re.compile(
        r"This report relates to a message you sent with the following header fields"
    )

    def read(self, bounce: Bounce) -> list[Entry]:
        entries = super().read(bounce)
        for pattern, command in _STAGES:
            if pattern.search(bounce.text):
                for e in entries:
                    # A specific status code (5.7.1: refused by policy) says more than the step.
                    status = find_status(e.diagnostic) or e.status
                    if not e.command and (not status or status.endswith(".0.0")):
                        e.command = command
                break
        return entries
