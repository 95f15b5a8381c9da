"""Event builders for the projector's unit tests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mailfold.events import (
    AnyEvent,
    BounceKind,
    EmailBounced,
    EmailCaptured,
    EmailClicked,
    EmailComposed,
    EmailDeleted,
    EmailDelivered,
    EmailOpened,
    EmailReceived,
    EmailSent,
    EmailState,
    Module,
    RecordRef,
    Source,
    Transport,
    Verdict,
    encode,
    event_subject,
)
from mailfold.events.fold import decode_state
from mailfold.projector.domain.messages import ValidEvent
from mailfold.projector.domain.rows import EMAIL_COLUMNS
from mailfold.projector.service_layer.ports import DuplicateEventIds, PositionConflict, WriteSet

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class Events:
    """Builds events of one org with predictable ids (`ev-<email>-<n>`), in any order."""

    def __init__(self, org_id: str = "acme") -> None:
        self.org_id = org_id
        self._n = 0

    def env(self, email_id: str, minutes: float, *, org_id: str | None = None) -> dict[str, Any]:
        self._n += 1
        return {
            "event_id": f"ev-{email_id}-{self._n:04d}",
            "org_id": org_id or self.org_id,
            "email_id": email_id,
            "occurred_at": T0 + timedelta(minutes=minutes),
            "producer": "test",
        }

    def composed(
        self,
        email_id: str,
        *,
        source: Source = Source.INDIVIDUAL,
        transport: Transport = Transport.CRM_SERVERS,
        to: tuple[str, ...] = ("ann@example.org",),
        records: tuple[tuple[Module, str], ...] = ((Module.LEADS, "lead-1"),),
        subject: str = "Quarterly review",
        minutes: float = 0,
    ) -> EmailComposed:
        return EmailComposed(
            **self.env(email_id, minutes),
            source=source,
            transport=transport,
            from_addr="rep@crm.example",
            to=to,
            subject=subject,
            records=tuple(RecordRef(record_id=r, module=m) for m, r in records),
        )

    def captured(self, email_id: str, *, minutes: float = 0) -> EmailCaptured:
        return EmailCaptured(
            **self.env(email_id, minutes),
            source=Source.BCC_DROPBOX,
            from_addr="rep@crm.example",
            to=("ann@example.org",),
            subject="Notes",
            records=(RecordRef(record_id="contact-1", module=Module.CONTACTS),),
        )

    def received(self, email_id: str, *, minutes: float = 0) -> EmailReceived:
        return EmailReceived(
            **self.env(email_id, minutes),
            source=Source.IMAP,
            from_addr="ann@example.org",
            to=("rep@crm.example",),
            subject="Re: review",
            records=(RecordRef(record_id="contact-1", module=Module.CONTACTS),),
        )

    def sent(self, email_id: str, minutes: float = 1) -> EmailSent:
        return EmailSent(**self.env(email_id, minutes), recipients=("ann@example.org",))

    def delivered(self, email_id: str, minutes: float = 2) -> EmailDelivered:
        return EmailDelivered(
            **self.env(email_id, minutes), recipient="ann@example.org", reply_code=250
        )

    def bounced(self, email_id: str, minutes: float = 3) -> EmailBounced:
        return EmailBounced(
            **self.env(email_id, minutes),
            recipient="ann@example.org",
            kind=BounceKind.HARD,
            status="5.1.1",
            reply_code=550,
            reason="user_unknown",
            diagnostic="550 5.1.1 no such user",
        )

    def opened(
        self, email_id: str, minutes: float = 4, verdict: Verdict = Verdict.HUMAN
    ) -> EmailOpened:
        return EmailOpened(
            **self.env(email_id, minutes), recipient="ann@example.org", verdict=verdict
        )

    def clicked(
        self, email_id: str, minutes: float = 5, verdict: Verdict = Verdict.HUMAN
    ) -> EmailClicked:
        return EmailClicked(
            **self.env(email_id, minutes),
            recipient="ann@example.org",
            url="https://example.org/offer",
            verdict=verdict,
        )

    def deleted(self, email_id: str, minutes: float = 9) -> EmailDeleted:
        return EmailDeleted(**self.env(email_id, minutes))

    @staticmethod
    def accepted(events: Sequence[AnyEvent], first_seq: int = 1) -> list[ValidEvent]:
        """Events as the projector accepts them from the stream, numbered from `first_seq`."""
        return [
            ValidEvent(first_seq + i, event_subject(e), encode(e).decode(), e)
            for i, e in enumerate(events)
        ]

    @staticmethod
    def raw(events: Sequence[AnyEvent], first_seq: int = 1) -> list[tuple[int, str, bytes]]:
        """Events as delivered: (stream sequence, subject, data)."""
        return [(first_seq + i, event_subject(e), encode(e)) for i, e in enumerate(events)]


@pytest.fixture
def events() -> Events:
    """An event builder for the org "acme"."""
    return Events()


class FakeStore:
    """The projection in memory: the StateReader and BatchWriter ports, with PostgreSQL's rules
    (unique event ids, links unique per email and record, the position check)."""

    def __init__(self) -> None:
        self.events: dict[str, tuple[Any, ...]] = {}
        self.emails: dict[str, tuple[Any, ...]] = {}
        self.links: set[tuple[str, str, str, str]] = set()
        self.position = 0
        self.writes = 0
        self.loads: list[str] = []

    async def existing_event_ids(self, event_ids: Sequence[str]) -> frozenset[str]:
        return frozenset(e for e in event_ids if e in self.events)

    async def load_states(self, email_ids: Sequence[str]) -> dict[str, EmailState]:
        self.loads.extend(email_ids)
        state_at = EMAIL_COLUMNS.index("state")
        return {e: decode_state(self.emails[e][state_at]) for e in email_ids if e in self.emails}

    async def write(self, batch: WriteSet) -> None:
        if batch.expected_seq != self.position:
            raise PositionConflict(f"position is {self.position}, not {batch.expected_seq}")
        for row in batch.event_rows:
            if row[0] in self.events:
                raise DuplicateEventIds(row[0])
        self.writes += 1
        for row in batch.event_rows:
            self.events[row[0]] = row
        for event_id, decision, reason, detail in batch.decision_rows:
            self.events[event_id] = (*self.events[event_id][:8], decision, reason, detail)
        for row in batch.email_rows:
            # A plain insert (no upsert) fails on a stored email, as PostgreSQL's COPY would.
            assert not (batch.emails_new and row[0] in self.emails), f"email {row[0]} is stored"
            self.emails[row[0]] = row
        self.links = {link for link in self.links if link[0] not in batch.unlinked}
        for link in batch.record_rows:
            assert link not in self.links, f"duplicate link {link}"
            self.links.add(link)
        self.position = batch.last_seq

    def state(self, email_id: str) -> EmailState:
        return decode_state(self.emails[email_id][EMAIL_COLUMNS.index("state")])

    def decision(self, event_id: str) -> tuple[str, str | None, str]:
        row = self.events[event_id]
        return (str(row[8]), None if row[9] is None else str(row[9]), row[10])


@pytest.fixture
def store() -> FakeStore:
    """An empty in-memory projection."""
    return FakeStore()


@pytest.fixture
def new_store() -> type[FakeStore]:
    """Makes empty in-memory projections (one per hypothesis example)."""
    return FakeStore
