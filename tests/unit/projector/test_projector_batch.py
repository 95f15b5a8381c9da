"""Folding a batch: every new event gets its decision, waiting events are decided later."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from mailfold.events import (
    AnyEvent,
    Decision,
    EmailSent,
    Module,
    Source,
    Transport,
    Verdict,
    ViolationReason,
    decisions,
    fold,
)
from mailfold.events.fold import encode_state
from mailfold.projector.domain.batch import fold_batch
from mailfold.projector.domain.rows import EMAIL_COLUMNS, email_row, record_rows

if TYPE_CHECKING:
    from tests.unit.projector.conftest import Events


def column(row: tuple[object, ...], name: str) -> object:
    return row[EMAIL_COLUMNS.index(name)]


def test_a_batch_folds_each_email_and_decides_each_event(events: Events) -> None:
    history: list[AnyEvent] = [
        events.composed("e1"),
        events.sent("e1"),
        events.delivered("e1"),
        events.opened("e1"),
    ]

    folded = fold_batch({}, events.accepted(history))

    assert folded.states["e1"] == fold(history, "e1")
    assert [(row[0], row[8]) for row in folded.event_rows] == [
        (e.event_id, Decision.APPLIED) for e in history
    ]
    assert folded.linked == {"e1"}
    assert folded.unlinked == set()
    assert folded.decision_rows == []


def test_events_before_their_origin_wait_then_are_decided_when_it_arrives(events: Events) -> None:
    sent, opened = events.sent("e1"), events.opened("e1")
    origin = events.composed("e1", to=("a@example.org", "b@example.org"))

    first = fold_batch({}, events.accepted([sent, opened]))
    assert [row[8] for row in first.event_rows] == [Decision.WAITING, Decision.WAITING]
    assert first.linked == set()

    second = fold_batch(first.states, events.accepted([origin], first_seq=3))
    # Multi-recipient mail cannot be opened: the waiting open becomes a violation.
    assert sorted(second.decision_rows) == sorted(
        [
            (sent.event_id, "applied", None, ""),
            (
                opened.event_id,
                "violation",
                "unreachable_status",
                decisions(second.states["e1"])[opened.event_id].detail,
            ),
        ]
    )
    assert second.linked == {"e1"}
    assert second.states["e1"] == fold([sent, opened, origin], "e1")


def test_a_fact_folded_before_its_origin_in_the_same_batch_is_decided_against_it(
    events: Events,
) -> None:
    opened = events.opened("e1")
    origin = events.composed("e1", source=Source.BCC_DROPBOX)

    folded = fold_batch({}, events.accepted([opened, origin]))

    rows = {row[0]: row for row in folded.event_rows}
    assert rows[opened.event_id][8] == Decision.VIOLATION
    assert rows[opened.event_id][9] == ViolationReason.UNREACHABLE_STATUS
    assert rows[origin.event_id][8] == Decision.APPLIED


def test_a_late_earlier_origin_replaces_the_links_and_loses_nothing(events: Events) -> None:
    late = events.composed("e1", records=((Module.LEADS, "lead-9"),))
    sent = events.sent("e1")
    # A smaller event id: this origin wins over the one that arrived first.
    winner = msgspec.structs.replace(
        events.composed("e1", records=((Module.LEADS, "lead-1"),)), event_id="ev-e1-0000"
    )

    first = fold_batch({}, events.accepted([late, sent]))
    second = fold_batch(first.states, events.accepted([winner], first_seq=3))

    assert second.unlinked == {"e1"}
    assert record_rows(second.states["e1"]) == [("e1", "Leads", "lead-1", "acme")]
    decided = {row[0]: row for row in second.decision_rows}
    assert decided[late.event_id][1] == "violation"
    assert decided[late.event_id][2] == "duplicate_origin"
    assert second.states["e1"] == fold([late, sent, winner], "e1")


def test_repeats_within_a_batch_across_batches_and_of_stored_ids_change_nothing(
    events: Events,
) -> None:
    origin, sent = events.composed("e1"), events.sent("e1")
    first = fold_batch({}, events.accepted([origin, sent, sent]))
    assert first.duplicates == 1
    assert len(first.event_rows) == 2

    again = fold_batch(first.states, events.accepted([sent, origin], first_seq=4))
    assert again.duplicates == 2
    assert again.event_rows == []
    assert again.states == {}

    other = events.opened("e2")
    known = fold_batch({}, events.accepted([other]), known=frozenset({other.event_id}))
    assert known.duplicates == 1
    assert known.states == {}


def test_an_event_of_another_org_is_a_violation_kept_in_the_history(events: Events) -> None:
    origin = events.composed("e1")
    foreign = EmailSent(**events.env("e1", 1, org_id="other"))

    folded = fold_batch({}, events.accepted([origin, foreign]))

    rows = {row[0]: row for row in folded.event_rows}
    assert rows[foreign.event_id][8] == Decision.VIOLATION
    assert rows[foreign.event_id][9] == ViolationReason.ORG_MISMATCH
    assert folded.states["e1"].sent_at is None


def test_the_email_row_carries_the_timeline_columns(events: Events) -> None:
    history: list[AnyEvent] = [
        events.composed("e1", transport=Transport.CRM_SERVERS),
        events.sent("e1", minutes=1),
        events.bounced("e1", minutes=3),
        events.opened("e1", minutes=4),
        events.opened("e1", minutes=6, verdict=Verdict.MACHINE),
        events.clicked("e1", minutes=5),
    ]
    state = fold(history, "e1")
    row = email_row(state, encode_state(state), 42)

    assert len(row) == len(EMAIL_COLUMNS)
    assert column(row, "status") == "Clicked"
    assert column(row, "source_display") == "Individual"
    assert column(row, "crm_originated") is True
    assert column(row, "direction") == "outgoing"
    assert column(row, "to_addrs") == ["ann@example.org"]
    assert column(row, "email_at") == history[1].occurred_at
    assert column(row, "opens_human") == 1
    assert column(row, "opens_machine") == 1
    assert column(row, "clicks_human") == 1
    assert column(row, "bounce_reason") == "user_unknown"
    assert column(row, "bounce_kind") == "hard"
    assert column(row, "event_count") == 6
    assert column(row, "updated_seq") == 42


def test_an_email_waiting_for_its_origin_belongs_to_the_org_of_its_events(
    events: Events,
) -> None:
    sent = events.sent("e1", minutes=3)
    state = fold([events.opened("e1", minutes=7), sent], "e1")
    row = email_row(state, encode_state(state), 1)

    assert column(row, "org_id") == "acme"
    assert column(row, "status") is None
    assert column(row, "waiting_count") == 2
    assert column(row, "email_at") == sent.occurred_at
    assert record_rows(state) == []


def test_received_mail_sorts_by_its_arrival_and_links_to_its_records(events: Events) -> None:
    origin = events.received("e1", minutes=12)
    state = fold([origin], "e1")
    row = email_row(state, encode_state(state), 1)

    assert column(row, "direction") == "incoming"
    assert column(row, "status") == "Received"
    assert column(row, "crm_originated") is False
    assert column(row, "email_at") == origin.occurred_at
    assert record_rows(state) == [("e1", "Contacts", "contact-1", "acme")]
