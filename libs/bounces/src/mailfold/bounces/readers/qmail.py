"""qmail and its clones: "<rcpt>:" blocks, then the remote host's words."""

from __future__ import annotations

import re

from mailfold.bounces.message import Bounce
from mailfold.bounces.readers.base import Reader

__all__ = ["QmailReader"]


class QmailReader(Reader):
    """qmail and its clones: "<rcpt>:" blocks, then the remote host's words."""

    name = "qmail"
    text_markers = re.compile(r"This is the qmail-send program|\(#[45]\.\d\.\d+\)\s*$", re.M)

    def detect(self, bounce: Bounce) -> bool:
        received = " ".join(str(h) for h in bounce.headers.get_all("received", []))
        return "(qmail " in received
