"""What a mailbox sync remembers between runs: per folder a cursor and the messages it tracks."""

from __future__ import annotations

import msgspec


class FolderState(msgspec.Struct, kw_only=True):
    """One folder's cursor (IMAP: UIDVALIDITY, last UID, HIGHESTMODSEQ) and tracked messages.

    `messages` maps a UID (IMAP) or a UIDL (POP3) to the email it became; POP3 also keeps the
    UIDLs it saw and left alone (mapped to ""), since POP3 has no cursor.
    """

    uidvalidity: int = 0
    last_uid: int = 0
    highestmodseq: int = 0
    resets_in_a_row: int = 0
    messages: dict[str, str] = msgspec.field(default_factory=dict)


class Cursor(msgspec.Struct, kw_only=True):
    """The part of FolderState kept under one key (the messages go in chunks beside it)."""

    uidvalidity: int = 0
    last_uid: int = 0
    highestmodseq: int = 0
    resets_in_a_row: int = 0


class Locator(msgspec.Struct, kw_only=True):
    """Where a synced email lives: what deleting it in the mailbox needs."""

    user: str
    folder: str
    uid: str  # IMAP UID or POP3 UIDL
    uidvalidity: int = 0


class Lease(msgspec.Struct, kw_only=True):
    """Which copy of the service holds a mailbox, until when (Unix milliseconds)."""

    owner: str
    expires_ms: int
