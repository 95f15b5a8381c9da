"""Google Groups: a post refused by a group (no such group, or no permission to post)."""

from __future__ import annotations

import re

from mailfold.bounces.message import ADDR_RE, Bounce, Entry
from mailfold.bounces.readers.base import Reader
from mailfold.bounces.reasons import Reason

__all__ = ["GoogleGroupsReader"]

_GROUP = re.compile(r"@googlegroups\.com", re.IGNORECASE)


class GoogleGroupsReader(Reader):
    """The refused group is in X-Failed-Recipients; the notice, in the poster's language, says
    the group does not exist or does not accept this sender's posts: a sender rejection."""

    name = "googlegroups"
    text_markers = re.compile(r"groups\.google\.com/support")

    def detect(self, bounce: Bounce) -> bool:
        return bool(_GROUP.search(bounce.head("x-failed-recipients")))

    def read(self, bounce: Bounce) -> list[Entry]:
        failed = bounce.head("x-failed-recipients")
        text = " ".join(bounce.text.split())[:1000]
        return [
            Entry(
                recipient=m.group(0).lower(),
                diagnostic=text,
                reason=Reason.REJECTED,
                source="X-Failed-Recipients",
            )
            for m in ADDR_RE.finditer(failed)
        ]
