"""The attachments inside a kept raw message (received and captured mail keep only the message)."""

from __future__ import annotations

import email.policy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Final

_PARSER: Final = BytesParser(policy=email.policy.default)
_MULTIPART: Final = re.compile(rb"^content-type:[ \t]*multipart/", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class MimeAttachment:
    """One attachment: its file name (as the message gives it), media type and decoded bytes."""

    name: str
    content_type: str
    data: bytes


def may_have_attachments(raw: bytes) -> bool:
    """A cheap test: only a multipart message can carry attachments next to its body."""
    return _MULTIPART.search(raw) is not None


def mime_attachments(raw: bytes) -> Iterator[MimeAttachment]:
    """Every attachment of a raw message, nested ones included; never raises on bad MIME."""
    if not may_have_attachments(raw):
        return
    try:
        message = _PARSER.parsebytes(raw)
    except Exception:  # the stdlib parser is lenient; this only guards against its bugs
        return
    for n, part in enumerate(message.walk(), start=1):
        if part.is_multipart() or not isinstance(part, EmailMessage):
            continue
        name = _filename(part)
        if not (part.is_attachment() or name):
            continue
        try:
            data = part.get_payload(decode=True)
        except Exception:  # an undecodable part: keep what the message says, undecoded
            data = None
        if not isinstance(data, bytes):
            payload = part.get_payload()
            data = payload.encode("utf-8", "replace") if isinstance(payload, str) else b""
        yield MimeAttachment(
            name=name or f"attachment-{n}", content_type=part.get_content_type(), data=data
        )


def attachments_size(raw: bytes) -> int:
    """The decoded bytes of every attachment of a raw message."""
    return sum(len(a.data) for a in mime_attachments(raw))


def _filename(part: EmailMessage) -> str:
    try:
        return part.get_filename() or ""
    except Exception:  # a header no decoder reads
        return ""
