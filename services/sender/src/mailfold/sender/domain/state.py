"""What the sender remembers between deliveries of one email: per-recipient marks, admissions.

Both live in the KV bucket `mailfold_sender` (see docs/sender.md for the keys) so that any sender
copy, after any crash, picks up where another left off.
"""

from __future__ import annotations

import enum
from datetime import date, datetime

import msgspec


class MarkState(enum.StrEnum):
    """Where one recipient of one email stands."""

    ATTEMPTING = "attempting"  # DATA was (about to be) sent; the server may hold the message
    DEFERRED = "deferred"  # a temporary failure; retry at `retry_at`
    DONE = "done"  # final: delivered, bounced, handed to the mailbox, or outcome unknown


class RecipientOutcome(enum.StrEnum):
    """How a recipient's delivery ended."""

    DELIVERED = "delivered"
    BOUNCED = "bounced"
    SUBMITTED = "submitted"  # accepted by the user's own submission server
    UNKNOWN = "unknown"  # the sender died between DATA and the reply; never sent again


class RecipientMark(msgspec.Struct, frozen=True, kw_only=True):
    """One recipient's delivery state."""

    state: MarkState
    attempt: int  # attempts started so far (the one in progress included)
    first_attempt_at: datetime
    retry_at: datetime | None = None
    outcome: RecipientOutcome | None = None


class Admission(msgspec.Struct, frozen=True, kw_only=True):
    """A mass email's day (pinned on first sight) and, once decided, who it may go to."""

    day: date
    decided: bool = False
    recipients: tuple[str, ...] = ()  # admitted addresses, compared case-insensitively
    duplicates: tuple[str, ...] = ()  # addresses the campaign already mailed
    limit_reached: bool = False
