"""Courier: "running the Courier mail server" and the remote host's reply per recipient."""

from __future__ import annotations

import re

from mailfold.bounces.readers.base import Reader

__all__ = ["CourierReader"]


class CourierReader(Reader):
    """Courier: "running the Courier mail server" and the remote host's reply per recipient."""

    name = "courier"
    text_markers = re.compile(r"running the Courier mail server")
