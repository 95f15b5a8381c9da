"""Exim: indented recipients, each followed by its indented error lines."""

from __future__ import annotations

import re

from mailfold.bounces.readers.base import Reader

__all__ = ["EximReader"]


class EximReader(Reader):
    """Exim: indented recipients, each followed by its indented error lines."""

    name = "exim"
    text_markers = re.compile(
        r"This message was created automatically by mail delivery software"
        r"|A message that you sent (?:could not|has not yet|contained one or more)"
    )
