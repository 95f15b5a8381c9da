"""OpenSMTPD: "This is the MAILER-DAEMON, please DO NOT REPLY", then one error line per recipient."""

from __future__ import annotations

import re

from mailfold.bounces.readers.base import Reader

__all__ = ["OpenSmtpdReader"]


class OpenSmtpdReader(Reader):
    """OpenSMTPD: "This is the MAILER-DAEMON, please DO NOT REPLY", then one error line per recipient."""

    name = "opensmtpd"
    text_markers = re.compile(r"This is the MAILER-DAEMON, please DO NOT REPLY")
