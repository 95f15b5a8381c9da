"""Gmail: "Delivery to the following recipient failed" and the relayed error with its state."""

from __future__ import annotations

import re

from mailfold.bounces.readers.base import Reader

__all__ = ["GmailReader"]


class GmailReader(Reader):
    """Gmail: "Delivery to the following recipient failed" and the relayed error with its state."""

    name = "gmail"
    text_markers = re.compile(r"Delivery to the following recipients? (?:failed|has been delayed)")
    sender_markers = re.compile(r"@googlemail\.com|@google\.com", re.I)
