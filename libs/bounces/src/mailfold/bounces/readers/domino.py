"""Lotus Notes / Domino: "was not delivered to:" then the recipient and "because:"."""

from __future__ import annotations

import re

from mailfold.bounces.readers.base import Reader

__all__ = ["DominoReader"]


class DominoReader(Reader):
    """Lotus Notes / Domino: "was not delivered to:" then the recipient and "because:"."""

    name = "domino"
    text_markers = re.compile(r"was not delivered to:\s*$", re.M)
