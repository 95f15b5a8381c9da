"""Lotus Notes / Domino: "was not delivered to:" then the recipient and "because:"; the older
Notes SMTP MTA: "------- Failure Reasons --------", the reason, then the recipients."""

from __future__ import annotations

import re

from mailfold.bounces.readers.base import Reader

__all__ = ["DominoReader"]


class DominoReader(Reader):
    """Lotus Notes / Domino: "was not delivered to:" then the recipient and "because:"."""

    name = "domino"
    text_markers = re.compile(r"was not delivered to:\s*$|^-+ Failure Reasons +-+\s*$", re.M)
    # The Notes MTA prints its reason before the recipients, for all of them.
    words_as_diagnostic = True
