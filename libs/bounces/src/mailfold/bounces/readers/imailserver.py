"""Ipswitch IMail Server (SMTP32): "Unknown user: <rcpt>", "undeliverable to <rcpt>" and the reply."""

from __future__ import annotations

import re

from mailfold.bounces.message import Bounce, Entry
from mailfold.bounces.readers.base import Reader
from mailfold.bounces.reasons import Reason

__all__ = ["IMailServerReader"]

# The first line names the recipient and, for directory lookups, the error itself.
_INTRO = re.compile(
    r"^\s*(?:(unknown user|invalid final delivery userid|unknown host|user mailbox exceeds "
    r"allowed size|delivery failed \d+ attempts|undeliverable to)):?\s+<?([^\s<>]+@[^\s<>]+)>?\s*$",
    re.IGNORECASE,
)
_END = re.compile(r"^\s*Original message follows", re.IGNORECASE)
# Errors found in IMail's own directory (the mailbox or the host is not there): RCPT stage.
_LOOKUPS = frozenset({"unknown user", "invalid final delivery userid", "unknown host"})
# What IMail's own headings mean, when the text after them says nothing more specific.
_HEADINGS: dict[str, str] = {
    "unknown user": Reason.USERUNKNOWN,
    "invalid final delivery userid": Reason.USERUNKNOWN,
    "unknown host": Reason.HOSTUNKNOWN,
    "user mailbox exceeds allowed size": Reason.MAILBOXFULL,
}


class IMailServerReader(Reader):
    """One block per recipient; lookups fail at RCPT, relayed errors quote the remote reply."""

    name = "imailserver"
    text_markers = re.compile(r"^\s*Body of message generated response:", re.M)

    def detect(self, bounce: Bounce) -> bool:
        return bounce.head("x-mailer").startswith("<SMTP32 v")

    def read(self, bounce: Bounce) -> list[Entry]:
        entries: list[Entry] = []
        current: Entry | None = None
        for line in bounce.text.split("\n"):
            m = _INTRO.match(line)
            if m:
                kind = m.group(1).lower()
                current = Entry(recipient=m.group(2).lower(), source="notification text")
                if kind in _LOOKUPS:
                    current.command = "RCPT"
                if kind in _HEADINGS:
                    current.reason, current.reason_is_hint = _HEADINGS[kind], True
                elif kind.startswith("delivery failed"):
                    current.reason, current.reason_is_hint = Reason.EXPIRED, True
                if kind != "undeliverable to":
                    current.diagnostic = m.group(1)
                entries.append(current)
                continue
            if _END.match(line):
                break
            if current is not None and line.strip():
                current.diagnostic = f"{current.diagnostic} {line.strip()}".strip()
        return entries or super().read(bounce)
