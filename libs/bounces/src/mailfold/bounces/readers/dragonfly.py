"""DragonFly Mail Agent: "There was an error delivering your mail to <rcpt>." then the reply."""

from __future__ import annotations

import re

from mailfold.bounces.message import Bounce, Entry
from mailfold.bounces.readers.base import Reader, entries_after_intro

__all__ = ["DragonFlyReader"]

_INTRO = re.compile(r"error delivering your mail to <([^>\s]+@[^>\s]+)>", re.IGNORECASE)
_END = re.compile(r"^Message headers follow", re.IGNORECASE)


class DragonFlyReader(Reader):
    """One recipient per notice; the lines after the intro are the remote server's words."""

    name = "dragonfly"
    text_markers = re.compile(r"This is the DragonFly Mail Agent")

    def read(self, bounce: Bounce) -> list[Entry]:
        return entries_after_intro(bounce, _INTRO, _END) or super().read(bounce)
