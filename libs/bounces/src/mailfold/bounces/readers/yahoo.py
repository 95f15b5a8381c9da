"""Yahoo: "Sorry, we were unable to deliver your message to the following address" notice."""

from __future__ import annotations

import re

from mailfold.bounces.readers.base import Reader

__all__ = ["YahooReader"]


class YahooReader(Reader):
    """Yahoo: "Sorry, we were unable to deliver your message to the following address" notice."""

    name = "yahoo"
    default_command = "RCPT"
    text_markers = re.compile(r"Sorry, we were unable to deliver your message to the following")
    sender_markers = re.compile(r"yahoo", re.I)
