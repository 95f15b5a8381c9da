"""McAfee Email Gateway: "--- The following addresses had delivery problems ---" per recipient."""

from __future__ import annotations

from mailfold.bounces.message import Bounce
from mailfold.bounces.readers.base import Reader

__all__ = ["McAfeeReader"]


class McAfeeReader(Reader):
    """The gateway relays the recipient server's answer to the recipient (RCPT) command."""

    name = "mcafee"
    default_command = "RCPT"

    def detect(self, bounce: Bounce) -> bool:
        # Its parts are named deliveryproblems.txt and deliverystatus.txt.
        return "deliveryproblems.txt" in bounce.names
