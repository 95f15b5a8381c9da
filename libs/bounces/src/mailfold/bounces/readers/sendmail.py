"""Sendmail (and sendmail v5): "<rcpt>... error" lines and the SMTP session transcript."""

from __future__ import annotations

import re

from mailfold.bounces.readers.base import Reader

__all__ = ["SendmailReader"]


class SendmailReader(Reader):
    """Sendmail (and sendmail v5): "<rcpt>... error" lines and the SMTP session transcript."""

    name = "sendmail"
    text_markers = re.compile(
        r"-{5} Transcript of session follows -{5}"
        r"|-{5} The following addresses had (?:permanent fatal|transient non-fatal) errors"
    )
    subject_markers = re.compile(r"see transcript for details$")
