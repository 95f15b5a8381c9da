"""The reader interface, and the standard reading every format builds on.

A reader says whether a message looks like its format (`detect`) and reads its entries (`read`).
The standard reading takes the RFC 3464 fields where there are any, scans the notification text
for recipients and errors, and merges the two; a format reader adjusts the message first
(`prepare`: bring its own layout into a shape the scanner reads) or reads it its own way.
"""

from __future__ import annotations

import re

from mailfold.bounces.extract import find_command
from mailfold.bounces.message import (
    ADDR,
    DSN_FIELD_INLINE,
    Bounce,
    Entry,
    original_recipient,
)
from mailfold.bounces.readers.fields import dsn_entries
from mailfold.bounces.readers.scan import fallback_recipients, merge, scan_text

__all__ = ["Reader", "entries_after_intro", "notification_words", "standard_entries"]


def standard_entries(
    bounce: Bounce, *, words_as_diagnostic: bool = False, original_to: bool = True
) -> list[Entry]:
    """RFC 3464 fields (in their part or printed inline) merged with what the text says.

    With `original_to`, a report that names no recipient is taken to be about the returned
    message's To: (its error still comes from the text).
    """
    entries = dsn_entries(bounce.dsn) if bounce.dsn else []
    if not bounce.dsn and DSN_FIELD_INLINE.search(bounce.text):
        # Some MTAs print the RFC 3464 fields inline in a plain-text body.
        entries = dsn_entries([bounce.text])
    scanned = scan_text(bounce, frozenset(e.recipient for e in entries if e.recipient))
    entries = merge(entries, scanned)
    if not entries:
        entries = fallback_recipients(bounce, scanned)
    if not entries and original_to:
        entries = merge(original_recipient(bounce), scanned)
    if (
        words_as_diagnostic
        and len(entries) == 1
        and not entries[0].diagnostic.strip()
        and not entries[0].status
    ):
        # One recipient and no error tied to it: the notification's own words are the error.
        entries[0].diagnostic = notification_words(bounce)
    return entries


_BRACKETED_ADDR = re.compile(rf"<?{ADDR}>?")


def notification_words(bounce: Bounce, limit: int = 1000) -> str:
    """The notification text as one line, without addresses and the original's headers."""
    text = _BRACKETED_ADDR.sub(" ", bounce.text[: limit * 4])
    return " ".join(text.split())[:limit]


def entries_after_intro(
    bounce: Bounce, intro: re.Pattern[str], end: re.Pattern[str] | None = None
) -> list[Entry]:
    """Entries of a layout where a line names the recipient and the next lines say why.

    `intro` captures the address in group 1; the diagnostic runs to the next intro, a line
    matching `end`, or the end of the notification.
    """
    entries: list[Entry] = []
    current: Entry | None = None
    for line in bounce.text.split("\n"):
        m = intro.search(line)
        if m:
            current = Entry(recipient=m.group(1).lower(), source="notification text")
            entries.append(current)
            continue
        if current is None:
            continue
        if end is not None and end.search(line):
            current = None
            continue
        if line.strip():
            current.diagnostic = f"{current.diagnostic} {line.strip()}".strip()
    return entries


class Reader:
    """One bounce format: how to recognise it and read it.

        Subclasses set `name` and the markers: `text_markers` (in the notification text),
        `sender_markers` (in From: or Message-ID:), `subject_markers` (in Subject:). A message
        matches when any marker does (text markers are tried for every format before sender markers,
    then subject markers); `detect` is for anything else, tried last.
    """

    name = "text"
    text_markers: re.Pattern[str] | None = None
    sender_markers: re.Pattern[str] | None = None
    subject_markers: re.Pattern[str] | None = None
    # The SMTP command a failure answered when the format does not say: formats that report
    # directory lookups (Exchange's "recipient not recognized") fail at RCPT.
    default_command = ""
    # Whether the notification's own words stand for the error of a lone recipient with none:
    # for formats that state the failure in prose (carriers, appliances), not for MTAs whose
    # notices are boilerplate around the remote server's reply.
    words_as_diagnostic = False
    # Whether a report naming no recipient is about the returned message's To: (not for the
    # generic reader: a message of no known format that names nobody is not taken as a bounce).
    original_to = True

    def detect(self, bounce: Bounce) -> bool:
        """Whether the message looks like this format by anything but its markers."""
        return False

    def marked(self, bounce: Bounce, where: str) -> bool:
        """Whether the markers of one kind ("text", "sender", "subject") are in the message."""
        if where == "text":
            return self.text_markers is not None and bool(self.text_markers.search(bounce.text))
        if where == "sender":
            sender = f"{bounce.head('from')} {bounce.head('message-id')}"
            return self.sender_markers is not None and bool(self.sender_markers.search(sender))
        subject = bounce.head("subject")
        return self.subject_markers is not None and bool(self.subject_markers.search(subject))

    def prepare(self, bounce: Bounce) -> None:
        """Bring the format's layout into shapes the standard reading understands."""

    def read(self, bounce: Bounce) -> list[Entry]:
        """The recipients the message reports, unclassified."""
        self.prepare(bounce)
        entries = standard_entries(
            bounce, words_as_diagnostic=self.words_as_diagnostic, original_to=self.original_to
        )
        if self.default_command:
            for e in entries:
                if not e.command and not find_command(e.diagnostic):
                    e.command = self.default_command
        return entries
