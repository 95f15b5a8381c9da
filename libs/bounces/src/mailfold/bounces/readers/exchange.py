"""Microsoft Exchange 2003 and 2007+: "did not reach the following recipient" and NDR codes."""

from __future__ import annotations

import re

from mailfold.bounces.readers.base import Reader

__all__ = ["ExchangeReader"]


class ExchangeReader(Reader):
    """Microsoft Exchange 2003 and 2007+: "did not reach the following recipient" and NDR codes."""

    name = "exchange"
    default_command = "RCPT"
    text_markers = re.compile(
        r"Your message to .* couldn't be delivered|Delivery has failed to these recipients"
        r"|Diagnostic information for administrators|did not reach the following recipient"
    )
