"""Mailing list managers (fml and its kin): a post from a sender who is not a member."""

from __future__ import annotations

import re

from mailfold.bounces.message import ADDR, Bounce, Entry
from mailfold.bounces.readers.base import Reader, notification_words
from mailfold.bounces.reasons import Reason

__all__ = ["MailingListReader"]

_NOT_MEMBER = re.compile(
    rf"(?:not a member of|not allowed to post to|only members can post to) "
    rf"(?:this |the )?(?:mailing )?list[^<\n]*<({ADDR})>",
    re.IGNORECASE,
)


class MailingListReader(Reader):
    """The list refuses the post because of who sent it: the sender is rejected, the list
    address (the recipient of the post) is the one the report is about."""

    name = "mailinglist"
    text_markers = _NOT_MEMBER

    def read(self, bounce: Bounce) -> list[Entry]:
        m = _NOT_MEMBER.search(bounce.text)
        if m is None:
            return super().read(bounce)
        return [
            Entry(
                recipient=m.group(1).lower(),
                diagnostic=notification_words(bounce),
                command="MAIL",
                reason=Reason.REJECTED,
                source="the list named in the notice",
            )
        ]
