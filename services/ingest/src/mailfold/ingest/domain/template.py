"""A template as the directory keeps it: content references only, never bytes."""

from __future__ import annotations

import msgspec

from mailfold.events import AttachmentRef, ContentRef


class Template(msgspec.Struct, frozen=True, kw_only=True):
    """Subject, bodies and attachments an email composed from this template starts with."""

    template_id: str
    subject: str = ""
    html: ContentRef | None = None
    text: ContentRef | None = None
    attachments: tuple[AttachmentRef, ...] = ()

    @property
    def attachments_size(self) -> int:
        """The bytes its attachments add to every email composed from it."""
        return sum(a.size for a in self.attachments)
