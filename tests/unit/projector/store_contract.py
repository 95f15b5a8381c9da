"""The projection store's contract: one suite, run against the in-memory store (unit) and the
PostgreSQL reader and writer (integration), each subclass giving its `store` fixture."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import pytest
from tests.unit.projector.conftest import Events

from mailfold.events import AnyEvent, EmailState, fold
from mailfold.events.fold import encode_state
from mailfold.projector.domain.rows import (
    APPLIED,
    WAITING,
    decision_row,
    email_row,
    event_row,
    record_rows,
)
from mailfold.projector.service_layer import views
from mailfold.projector.service_layer.ports import (
    BatchWriter,
    DuplicateEventIds,
    PositionConflict,
    StateReader,
    WriteSet,
)


class Store(StateReader, BatchWriter, Protocol):
    """A store under test: the ports, and what the query API reads back."""

    async def stored_email(self, email_id: str) -> Any | None:
        """The stored `emails` row by column name, or None."""
        ...

    async def stored_links(self, email_id: str) -> list[Any]:
        """The email's record links (module, record_id), ordered."""
        ...

    async def stored_decisions(self, email_id: str) -> list[tuple[str, str, str | None, str]]:
        """(event_id, decision, reason, detail) of the email's stored events, in stream order."""
        ...

    async def committed_position(self) -> int:
        """The committed position."""
        ...


def _at(minutes: int) -> datetime:
    return datetime(2026, 3, 2, 9, minutes, tzinfo=UTC)


def batch(
    events: Sequence[AnyEvent],
    *,
    first_seq: int,
    history: Sequence[AnyEvent] = (),
    waiting: bool = False,
    expected_seq: int | None = None,
    emails_new: bool = False,
) -> tuple[WriteSet, dict[str, EmailState]]:
    """The WriteSet of `events` (stream order, from `first_seq`), folded after `history`."""
    accepted = Events.accepted(events, first_seq)
    last_seq = first_seq + len(events) - 1
    writes = WriteSet(
        event_rows=[event_row(a, WAITING if waiting else APPLIED) for a in accepted],
        expected_seq=first_seq - 1 if expected_seq is None else expected_seq,
        last_seq=last_seq,
        emails_new=emails_new,
    )
    states = {}
    for email_id in dict.fromkeys(e.email_id for e in events):
        state = fold([e for e in [*history, *events] if e.email_id == email_id], email_id)
        states[email_id] = state
        writes.email_rows.append(email_row(state, encode_state(state), last_seq))
        writes.unlinked.append(email_id)
        writes.record_rows.extend(record_rows(state))
    return writes, states


class StoreContract:
    """The cases every projection store passes."""

    @pytest.fixture
    def events(self) -> Events:
        return Events()

    async def test_a_batch_reads_back_as_the_fold_and_as_the_api_item(
        self, store: Store, events: Events
    ) -> None:
        life: list[AnyEvent] = [events.composed("e1"), events.sent("e1"), events.bounced("e1")]
        writes, states = batch(life, first_seq=1)
        await store.write(writes)
        assert await store.committed_position() == 3
        assert await store.load_states(["e1", "e2"]) == {"e1": states["e1"]}
        ids = [e.event_id for e in life]
        assert await store.existing_event_ids([*ids, "ev-none"]) == frozenset(ids)
        row = await store.stored_email("e1")
        assert row is not None
        detail = views.email_detail(row, await store.stored_links("e1"))
        assert detail == {
            "email_id": "e1",
            "subject": "Quarterly review",
            "direction": "outgoing",
            "source": "Individual",
            "status": "Bounced",
            "from": "rep@crm.example",
            "to": ["ann@example.org"],
            "email_at": _at(1),
            "sent_at": _at(1),
            "delivered_at": None,
            "bounced_at": _at(3),
            "opened_at": None,
            "opens": {"human": 0, "machine": 0},
            "clicked_at": None,
            "clicks": {"human": 0, "machine": 0},
            "received_at": None,
            "bounce": {
                "recipient": "ann@example.org",
                "kind": "hard",
                "status": "5.1.1",
                "reply_code": 550,
                "reason": "user_unknown",
                "diagnostic": "550 5.1.1 no such user",
                "reporting_mta": None,
            },
            "org_id": "acme",
            "source_code": "individual",
            "transport": "crm_servers",
            "crm_originated": True,
            "cc": [],
            "composed_at": _at(0),
            "rejected_at": None,
            "deleted_at": None,
            "complained_at": None,
            "first_machine_open_at": None,
            "deferrals": 0,
            "complaints": 0,
            "rejection": None,
            "waiting": 0,
            "violations": 0,
            "events": 3,
            "campaign_id": None,
            "records": [{"module": "Leads", "record_id": "lead-1"}],
        }
        item = views.list_item(row)
        assert list(item) == list(detail)[: len(item)]
        assert "reporting_mta" not in item["bounce"]

    async def test_an_email_waiting_for_its_origin_is_stored_under_its_first_event(
        self, store: Store, events: Events
    ) -> None:
        writes, _ = batch([events.sent("e1", 5), events.opened("e1", 7)], first_seq=1, waiting=True)
        await store.write(writes)
        row = await store.stored_email("e1")
        assert row is not None
        item = views.email_detail(row, await store.stored_links("e1"))
        assert (item["org_id"], item["status"], item["subject"], item["email_at"]) == (
            "acme",
            None,
            None,
            _at(5),
        )
        assert (item["to"], item["cc"], item["crm_originated"], item["records"]) == (
            [],
            [],
            False,
            [],
        )
        # Facts wait for the origin: counted, not applied.
        assert (item["waiting"], item["events"], item["sent_at"], item["opened_at"]) == (
            2,
            2,
            None,
            None,
        )

    async def test_a_later_batch_rewrites_the_email_its_links_and_decisions(
        self, store: Store, events: Events
    ) -> None:
        early: list[AnyEvent] = [events.sent("e1"), events.delivered("e1")]
        writes, _ = batch(early, first_seq=1, waiting=True)
        await store.write(writes)
        origin = events.composed("e1")
        writes, states = batch([origin], first_seq=3, history=early)
        writes.decision_rows = [decision_row(e.event_id, APPLIED) for e in early]
        await store.write(writes)
        assert await store.committed_position() == 3
        assert await store.load_states(["e1"]) == states
        row = await store.stored_email("e1")
        assert row is not None
        assert views.list_item(row)["status"] == "Delivered"
        assert [(r["module"], r["record_id"]) for r in await store.stored_links("e1")] == [
            ("Leads", "lead-1")
        ]
        stored = await store.stored_decisions("e1")
        assert [(d[0], d[1]) for d in stored] == [(e.event_id, "applied") for e in [*early, origin]]

    async def test_a_stored_event_id_fails_the_whole_batch(
        self, store: Store, events: Events
    ) -> None:
        first = events.composed("e1")
        writes, _ = batch([first], first_seq=1)
        await store.write(writes)
        again, _ = batch([events.composed("e2"), first], first_seq=2)
        with pytest.raises(DuplicateEventIds):
            await store.write(again)
        assert await store.committed_position() == 1
        assert await store.stored_email("e2") is None

    async def test_a_moved_position_fails_the_whole_batch(
        self, store: Store, events: Events
    ) -> None:
        writes, _ = batch([events.composed("e1")], first_seq=1)
        await store.write(writes)
        stale, _ = batch([events.composed("e2")], first_seq=2, expected_seq=0)
        with pytest.raises(PositionConflict):
            await store.write(stale)
        assert await store.committed_position() == 1
        assert await store.stored_email("e2") is None
        assert await store.existing_event_ids([e[0] for e in stale.event_rows]) == frozenset()

    async def test_new_emails_are_inserted_without_an_upsert(
        self, store: Store, events: Events
    ) -> None:
        life: list[AnyEvent] = [events.received("e1"), events.composed("e2"), events.deleted("e1")]
        writes, states = batch(life, first_seq=1, emails_new=True)
        await store.write(writes)
        assert await store.load_states(["e1", "e2"]) == states
        row = await store.stored_email("e1")
        assert row is not None
        item = views.email_detail(row, await store.stored_links("e1"))
        assert (item["direction"], item["deleted_at"], item["records"]) == (
            "incoming",
            _at(9),
            [{"module": "Contacts", "record_id": "contact-1"}],
        )
