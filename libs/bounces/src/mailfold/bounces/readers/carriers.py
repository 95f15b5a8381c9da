"""Mobile carriers' notices: au (EZweb/KDDI) and Verizon's MMS gateway.

Carriers write a short notice in prose, with the recipient on a line of its own; the notice
itself is the error, and its sentences are the carrier's fixed wording.
"""

from __future__ import annotations

import re

from mailfold.bounces.message import ADDR, ADDR_RE, Bounce, Entry
from mailfold.bounces.readers.base import Reader, notification_words
from mailfold.bounces.reasons import Reason

__all__ = ["EzwebReader", "VerizonReader"]

_RECIPIENT = re.compile(
    rf"^\s*(?:Recipient:\s*|Could not be delivered to:\s*)?<({ADDR})>\s*$", re.I
)
_SENT = re.compile(r"^\s*>>>\s*(.+)$")
_REPLY = re.compile(r"^\s*<<<\s*(.+)$")
# au's fixed sentences and what they mean, when the remote server's reply says nothing more.
_EZWEB_NOTICES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"account is temporarily over quota|mailbox is full", re.I), Reason.MAILBOXFULL),
    (re.compile(r"account is (?:disabled|temporarily limited)", re.I), Reason.SUSPEND),
    (re.compile(r"was not delivered within", re.I), Reason.EXPIRED),
    (re.compile(r"rejected by a remote mail server", re.I), Reason.FILTERED),
)


class EzwebReader(Reader):
    """au by KDDI (ezweb.ne.jp, au.com, dion.ne.jp): "Mail System Error - Returned Mail"."""

    name = "ezweb"
    sender_markers = re.compile(r"@(?:\S+\.)?(?:ezweb\.ne\.jp|au\.com|dion\.ne\.jp)\b", re.I)

    def read(self, bounce: Bounce) -> list[Entry]:
        recipients: list[str] = []
        command, replies = "", []
        for line in bounce.text.split("\n"):
            m = _RECIPIENT.match(line)
            if m and m.group(1).lower() not in recipients:
                recipients.append(m.group(1).lower())
            if sent := _SENT.match(line):
                command = sent.group(1).split(":", 1)[0].split(" ", 1)[0].upper()
            if reply := _REPLY.match(line):
                replies.append(reply.group(1).strip())
        if not recipients:
            return super().read(bounce)
        words = notification_words(bounce)
        hint = next((r for p, r in _EZWEB_NOTICES if p.search(words)), "")
        diagnostic = " ".join(replies) or words
        return [
            Entry(
                recipient=r,
                diagnostic=diagnostic,
                command=command,
                reason=hint,
                reason_is_hint=bool(replies),
                source="notification text",
            )
            for r in recipients
        ]


_MMS_ERRORS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"No valid recipients|invalid recipient|unknown user", re.I), Reason.USERUNKNOWN),
    (re.compile(r"mailbox (?:is )?full|quota", re.I), Reason.MAILBOXFULL),
)
_ORIGINAL = re.compile(r"^\s*Original Message:?\s*$", re.I | re.M)
_ORIGINAL_TO = re.compile(rf"^\s*To:\s*.*?<?({ADDR})>?", re.I | re.M)


class VerizonReader(Reader):
    """Verizon Wireless' MMS gateway: "Message could not be delivered to mobile." and the
    returned message's headers inline, whose To: is the recipient."""

    name = "verizon"
    sender_markers = re.compile(r"@(?:\S+\.)?(?:vzwpix|vtext)\.com\b", re.I)

    def read(self, bounce: Bounce) -> list[Entry]:
        parts = _ORIGINAL.split(bounce.text, 1)
        head = parts[0]
        original = parts[1] if len(parts) > 1 else ""
        to = _ORIGINAL_TO.search(original)
        if to is None:
            return super().read(bounce)
        diagnostic = " ".join(ADDR_RE.sub(" ", head).split())[:1000]
        hint = next((r for p, r in _MMS_ERRORS if p.search(diagnostic)), "")
        return [
            Entry(
                recipient=to.group(1).lower(),
                diagnostic=diagnostic,
                reason=hint,
                reason_is_hint=True,
                source="returned message's To:",
            )
        ]
