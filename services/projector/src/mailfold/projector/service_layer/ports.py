"""What the service layer talks to, as protocols; the adapters implement them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mailfold.events import EmailState
from mailfold.projector.domain.messages import Unusable
from mailfold.projector.domain.rows import DecisionRow, EmailRow, EventRow, RecordRow


@dataclass(slots=True)
class WriteSet:
    """Everything one batch writes, in one transaction, with the position it moves to."""

    event_rows: list[EventRow] = field(default_factory=list)
    decision_rows: list[DecisionRow] = field(default_factory=list)
    email_rows: list[EmailRow] = field(default_factory=list)
    unlinked: list[str] = field(default_factory=list)  # emails whose old links are deleted first
    record_rows: list[RecordRow] = field(default_factory=list)
    poison: list[Unusable] = field(default_factory=list)
    expected_seq: int = 0  # the position this batch starts from
    last_seq: int = 0  # the position after this batch
    # None of `email_rows` is stored yet (a rebuild's final flush): plain inserts, no upsert.
    emails_new: bool = False


class StateReader(Protocol):
    """Reads committed projection data the fold continues from."""

    async def existing_event_ids(self, event_ids: Sequence[str]) -> frozenset[str]:
        """The ids among `event_ids` already stored."""
        ...

    async def load_states(self, email_ids: Sequence[str]) -> dict[str, EmailState]:
        """The stored states of those emails that exist."""
        ...


class DuplicateEventIds(RuntimeError):
    """A batch held an event id already stored under another email (a producer reused an id).

    Batches are folded without looking event ids up in the store (the fold itself drops repeats
    within an email); the store's unique key catches the rest, and the batch is then folded again
    with the ids looked up.
    """

    until_seq: int = 0  # the last sequence of the batch that raised it


class PositionConflict(RuntimeError):
    """Another writer moved the position: this process must stop writing and re-read."""


class BatchWriter(Protocol):
    """Writes one batch atomically: rows and position together, or nothing."""

    async def write(self, batch: WriteSet) -> None:
        """Commit the batch; raises DuplicateEventIds on a stored event id, and PositionConflict
        if the stored position is not `batch.expected_seq` (then nothing is written)."""
        ...


class DeadLetters(Protocol):
    """Where poison messages go."""

    async def send(self, poison: Unusable) -> None:
        """Publish one poison message with its error; idempotent per stream position."""
        ...
