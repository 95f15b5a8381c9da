"""RFC 3834 automatic replies (vacation notices): the recipient is away, not gone.

Their action is "autoreplied": neither a failure nor a delivery report (no event follows).
"""

from __future__ import annotations

import re

from mailfold.bounces.message import ADDR_RE, Bounce, Entry
from mailfold.bounces.readers.base import Reader
from mailfold.bounces.reasons import Reason

__all__ = ["AutoReplyReader"]

_DAEMON = re.compile(r"mailer-daemon|postmaster|mail delivery", re.IGNORECASE)
_AUTO = re.compile(r"^auto-replied", re.IGNORECASE)
_SUBJECT = re.compile(
    r"^(?:auto(?:matic)?[ -]?reply|out of (?:the )?office|away|vacation|abwesenheit|absence)",
    re.IGNORECASE,
)


class AutoReplyReader(Reader):
    """`Auto-Submitted: auto-replied` (RFC 3834), or an auto-reply subject with no report part."""

    name = "rfc3834"

    def detect(self, bounce: Bounce) -> bool:
        if _DAEMON.search(bounce.head("from")):
            return False
        if _AUTO.match(bounce.head("auto-submitted")):
            return True
        if bounce.dsn or bounce.feedback:
            return False
        return bool(_SUBJECT.match(bounce.head("subject")))

    def read(self, bounce: Bounce) -> list[Entry]:
        a = ADDR_RE.search(bounce.head("from"))
        if a is None:
            return []
        return [
            Entry(
                recipient=a.group(0).lower(),
                diagnostic=" ".join(bounce.text.split())[:1000],
                reason=Reason.VACATION,
                action="autoreplied",
                source="From: of the automatic reply",
            )
        ]
