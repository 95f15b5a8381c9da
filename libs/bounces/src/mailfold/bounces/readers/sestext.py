"""Amazon SES bounces by email (RFC 3464 parts from amazonses.com)."""

from __future__ import annotations

import re

from mailfold.bounces.readers.base import Reader

__all__ = ["AmazonSesTextReader"]


class AmazonSesTextReader(Reader):
    """Amazon SES bounces by email (RFC 3464 parts from amazonses.com)."""

    name = "amazonses"
    sender_markers = re.compile(r"amazonses\.com", re.I)
