"""PowerMTA: RFC 3464 reports with X-PowerMTA-BounceCategory, PowerMTA's own classification."""

from __future__ import annotations

import re

from mailfold.bounces.message import Bounce, Entry
from mailfold.bounces.readers.base import Reader
from mailfold.bounces.reasons import Reason

__all__ = ["PowerMtaReader"]

_CATEGORY = re.compile(r"^X-PowerMTA-BounceCategory:\s*([\w-]+)", re.I | re.M)
# PowerMTA's documented bounce categories.
CATEGORIES: dict[str, str] = {
    "bad-configuration": Reason.MAILERERROR,
    "bad-connection": Reason.NETWORKERROR,
    "bad-domain": Reason.HOSTUNKNOWN,
    "bad-mailbox": Reason.USERUNKNOWN,
    "content-related": Reason.CONTENTERROR,
    "inactive-mailbox": Reason.SUSPEND,
    "invalid-sender": Reason.REJECTED,
    "message-expired": Reason.EXPIRED,
    "no-answer-from-host": Reason.NETWORKERROR,
    "policy-related": Reason.POLICYVIOLATION,
    "quota-issues": Reason.MAILBOXFULL,
    "routing-errors": Reason.SYSTEMERROR,
    "spam-related": Reason.SPAMDETECTED,
    "virus-related": Reason.VIRUSDETECTED,
}


class PowerMtaReader(Reader):
    """The category of each recipient block states the reason."""

    name = "powermta"

    def detect(self, bounce: Bounce) -> bool:
        return any("X-PowerMTA-" in block for block in bounce.dsn)

    def read(self, bounce: Bounce) -> list[Entry]:
        entries = super().read(bounce)
        categories = [m.group(1).lower() for b in bounce.dsn for m in _CATEGORY.finditer(b)]
        if len(categories) == len(entries):
            for e, category in zip(entries, categories, strict=True):
                e.reason = CATEGORIES.get(category, "")
        return entries
