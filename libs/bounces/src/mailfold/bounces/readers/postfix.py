"""Postfix: "<rcpt>: host said: ... (in reply to RCPT TO command)" and RFC 3464 fields."""

from __future__ import annotations

import re

from mailfold.bounces.readers.base import Reader

__all__ = ["PostfixReader"]


class PostfixReader(Reader):
    """Postfix: "<rcpt>: host said: ... (in reply to RCPT TO command)" and RFC 3464 fields."""

    name = "postfix"
    text_markers = re.compile(
        r"This is the mail system at host|The Postfix program|This is the Postfix program"
        r"|^X-Postfix-Queue-ID:",
        re.M,
    )
    subject_markers = re.compile(r"^Undelivered Mail Returned to Sender|SMTP server: errors")
