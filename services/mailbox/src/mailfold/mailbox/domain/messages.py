"""Which mailbox messages are worth reading as bounces."""

from __future__ import annotations

import re
from typing import Final

from mailfold.events.headers import MessageSummary

_BOUNCE_SENDERS: Final = ("mailer-daemon", "postmaster", "mail-daemon")
_BOUNCE_SUBJECT: Final = re.compile(
    r"undeliver|delivery (?:status|failure|has failed)|returned mail|failure notice|"
    r"mail delivery failed|non.?delivery",
    re.IGNORECASE,
)


def looks_like_bounce(summary: MessageSummary) -> bool:
    """A delivery report, or a non-standard bounce from a mailer daemon: worth parsing."""
    if summary.content_type.startswith("multipart/report"):
        return True
    local = summary.from_addr.partition("@")[0].lower()
    return local in _BOUNCE_SENDERS or bool(_BOUNCE_SUBJECT.search(summary.subject))
