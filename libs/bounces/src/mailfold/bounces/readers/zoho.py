"""Zoho Mail: "rcpt Invalid Address, ERROR_CODE :550, ERROR_CODE :<text>" per recipient."""

from __future__ import annotations

import re

from mailfold.bounces.message import Bounce, Entry
from mailfold.bounces.readers.base import Reader
from mailfold.bounces.reasons import Reason

__all__ = ["ZohoReader"]

# Zoho's own labels before the error codes, and what they mean.
_LABELS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bInvalid Address\b", re.I), Reason.USERUNKNOWN),
    (re.compile(r"\bHost not reachable\b", re.I), Reason.EXPIRED),
    (re.compile(r"\bMailbox (?:is )?full\b", re.I), Reason.MAILBOXFULL),
)


class ZohoReader(Reader):
    """The label and codes follow the address on one line; Zoho retried a host until it gave up."""

    name = "zoho"
    sender_markers = re.compile(r"@(?:\S+\.)?zoho\.com\b", re.I)

    def detect(self, bounce: Bounce) -> bool:
        return bounce.head("x-mailer").startswith("Zoho Mail")

    def read(self, bounce: Bounce) -> list[Entry]:
        entries = super().read(bounce)
        for e in entries:
            hint = next((r for p, r in _LABELS if p.search(e.diagnostic)), "")
            if hint:
                e.reason, e.reason_is_hint = hint, True
        return entries
