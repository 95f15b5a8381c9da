"""OpenSMTPD: "This is the MAILER-DAEMON, please DO NOT REPLY", then one error line per recipient."""

from __future__ import annotations

import re

from mailfold.bounces.message import Bounce, Entry
from mailfold.bounces.readers.base import Reader

__all__ = ["OpenSmtpdReader"]


class OpenSmtpdReader(Reader):
    """One "rcpt: error" line per recipient, and RFC 3464 fields in newer versions."""

    name = "opensmtpd"
    text_markers = re.compile(r"This is the MAILER-DAEMON, please DO NOT REPLY")

    def read(self, bounce: Bounce) -> list[Entry]:
        entries = super().read(bounce)
        for e in entries:
            # OpenSMTPD's Status field carries no detail of its own (X.0.0, or 4.4.7 when the
            # envelope expired): the error line says what failed.
            if e.status.endswith(".0.0") or e.status == "4.4.7":
                e.status = ""
        return entries
