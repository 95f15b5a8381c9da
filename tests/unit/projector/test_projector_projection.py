"""Batches through the Projection and Pipeline: however the stream is cut, cached, evicted or
repeated, the store ends equal to the pure fold of the distinct events."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailfold.events import (
    AnyEvent,
    Decision,
    EmailSent,
    Source,
    Transport,
    decisions,
    encode,
    event_subject,
    fold,
)
from mailfold.events.fold import encode_state
from mailfold.projector.domain.messages import RawMessage
from mailfold.projector.domain.rows import EMAIL_COLUMNS, email_row, record_rows
from mailfold.projector.service_layer.pipeline import Pipeline
from mailfold.projector.service_layer.ports import DuplicateEventIds
from mailfold.projector.service_layer.projection import Projection
from mailfold.projector.service_layer.replay import rebuild

if TYPE_CHECKING:
    from tests.unit.projector.conftest import Events, FakeStore

IGNORED = {"state", "updated_seq"}


def history_of(events: Events, email_id: str, rng: random.Random) -> list[AnyEvent]:
    """One email's events: zero to two origins of a random kind, and random facts."""
    origins: list[AnyEvent] = []
    for _ in range(rng.choice((0, 1, 1, 1, 2))):
        kind = rng.randrange(4)
        if kind == 0:
            origins.append(events.composed(email_id, to=("a@example.org",)))
        elif kind == 1:
            origins.append(events.composed(email_id, to=("a@example.org", "b@example.org")))
        elif kind == 2:
            origins.append(
                events.composed(
                    email_id, source=Source.CADENCE, transport=Transport.INTEGRATED_MAILBOX
                )
            )
        else:
            origins.append(events.received(email_id))
    makers = (
        events.sent,
        events.delivered,
        events.bounced,
        events.opened,
        events.clicked,
        events.deleted,
    )
    facts = [rng.choice(makers)(email_id, rng.uniform(0, 60)) for _ in range(rng.randrange(7))]
    if rng.random() < 0.2:
        facts.append(EmailSent(**events.env(email_id, 1, org_id="other")))
    return [*origins, *facts]


def assert_store_is_the_fold(store: FakeStore, distinct: list[AnyEvent]) -> None:
    by_email: dict[str, list[AnyEvent]] = {}
    for event in distinct:
        by_email.setdefault(event.email_id, []).append(event)
    assert set(store.emails) == set(by_email)
    assert set(store.events) == {e.event_id for e in distinct}
    links = set()
    for email_id, history in by_email.items():
        expected = fold(history, email_id)
        assert store.state(email_id) == expected
        row = email_row(expected, encode_state(expected), 0)
        stored = store.emails[email_id]
        for i, name in enumerate(EMAIL_COLUMNS):
            if name not in IGNORED:
                assert stored[i] == row[i], (email_id, name)
        for event_id, ruling in decisions(expected).items():
            reason = None if ruling.reason is None else ruling.reason.value
            assert store.decision(event_id) == (ruling.decision.value, reason, ruling.detail)
        links.update(record_rows(expected))
    assert store.links == links


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32),
    capacity=st.sampled_from((0, 1, 3, 100)),
    write_behind=st.booleans(),
)
async def test_any_cut_of_a_shuffled_repeated_stream_stores_the_pure_fold(
    events: Events, new_store: type[FakeStore], seed: int, capacity: int, write_behind: bool
) -> None:
    store = new_store()
    rng = random.Random(seed)
    distinct = [e for n in range(4) for e in history_of(events, f"m{n}", rng)]
    stream = list(distinct)
    stream.extend(rng.sample(distinct, k=min(len(distinct), rng.randrange(4))))
    rng.shuffle(stream)
    messages = [(i + 1, event_subject(e), encode(e)) for i, e in enumerate(stream)]
    # A redelivery of positions already folded: skipped by position.
    redelivered = messages[: rng.randrange(len(messages) + 1)]

    projection = Projection(
        store, position=0, capacity=capacity, store_empty=True, write_behind=write_behind
    )
    pipeline = Pipeline(projection, store, record_metrics=False)
    at = 0
    while at < len(messages):
        size = rng.randrange(1, 6)
        await pipeline.submit(messages[at : at + size])
        at += size
        if redelivered and rng.random() < 0.3:
            await pipeline.submit(redelivered)
    await pipeline.drain()
    if write_behind:
        await pipeline.write_extra(projection.flush())

    if distinct:
        assert store.position == len(messages)
    assert_store_is_the_fold(store, distinct)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32),
    capacity=st.sampled_from((0, 1, 3, 100)),
    flush_chunk=st.sampled_from((1, 2, 1000)),
)
async def test_a_rebuild_flushed_in_chunks_stores_the_pure_fold(
    events: Events, new_store: type[FakeStore], seed: int, capacity: int, flush_chunk: int
) -> None:
    store = new_store()
    rng = random.Random(seed)
    distinct = [e for n in range(5) for e in history_of(events, f"m{n}", rng)]
    stream = list(distinct)
    rng.shuffle(stream)
    messages = [(i + 1, event_subject(e), encode(e)) for i, e in enumerate(stream)]

    async def batches() -> AsyncIterator[list[RawMessage]]:
        at = 0
        while at < len(messages):
            size = rng.randrange(1, 6)
            yield messages[at : at + size]
            at += size

    report = await rebuild(
        batches(), store, store, start_seq=0, cache_size=capacity, flush_chunk=flush_chunk
    )

    assert report.messages == len(messages)
    assert report.events == len(distinct)
    assert_store_is_the_fold(store, distinct)


async def test_a_batch_after_a_commit_continues_from_the_cache_without_reading(
    events: Events, store: FakeStore
) -> None:
    projection = Projection(store, position=0, capacity=10, store_empty=True)
    pipeline = Pipeline(projection, store, record_metrics=False)

    await pipeline.submit(events.raw([events.composed("e1"), events.sent("e1")]))
    await pipeline.submit(events.raw([events.delivered("e1")], first_seq=3))
    await pipeline.drain()

    assert store.loads == []
    assert store.state("e1").status == "Delivered"


async def test_an_evicted_email_is_read_back_from_the_store(
    events: Events, store: FakeStore
) -> None:
    projection = Projection(store, position=0, capacity=1, store_empty=True)
    pipeline = Pipeline(projection, store, record_metrics=False)

    await pipeline.submit(events.raw([events.composed("e1"), events.composed("e2")]))
    await pipeline.drain()
    await pipeline.submit(events.raw([events.sent("e1")], first_seq=3))
    await pipeline.drain()

    assert store.loads == ["e1"]
    assert projection.cached == 1
    assert store.state("e1").sent_at is not None


async def test_poison_moves_the_position_and_is_kept_for_the_dead_letter_stream(
    events: Events, store: FakeStore
) -> None:
    projection = Projection(store, position=0, capacity=10, store_empty=True)
    pipeline = Pipeline(projection, store, record_metrics=False)
    good = events.composed("e1")
    batch = [
        (1, "mail.events.acme.email_sent", b"\x00garbage"),
        (2, event_subject(good), encode(good)),
    ]

    prepared = await projection.prepare(batch)

    assert [p.seq for p in prepared.writes.poison] == [1]
    assert prepared.writes.last_seq == 2
    await store.write(prepared.writes)
    assert store.position == 2
    assert list(store.events) == [good.event_id]
    assert pipeline.poisoned == 0


async def test_an_event_id_stored_under_another_email_is_refused_then_looked_up(
    events: Events, store: FakeStore
) -> None:
    first = events.sent("e1")
    reused = EmailSent(**{**events.env("e2", 1), "event_id": first.event_id})
    projection = Projection(store, position=0, capacity=10, store_empty=True)
    pipeline = Pipeline(projection, store, record_metrics=False)
    await pipeline.submit(events.raw([first]))
    await pipeline.submit(events.raw([reused], first_seq=2))
    with pytest.raises(DuplicateEventIds) as raised:
        await pipeline.drain()
    assert raised.value.until_seq == 2

    # Started again from the committed position, looking ids up up to the refused batch.
    again = Projection(store, position=store.position, capacity=10, look_up_ids_until=2)
    retry = Pipeline(again, store, record_metrics=False)
    await retry.submit(events.raw([reused], first_seq=2))
    await retry.drain()

    assert store.position == 2
    assert store.events[first.event_id][5] == "e1"
    assert "e2" not in store.emails


async def test_a_commit_refused_for_a_moved_position_fails_the_pipeline(
    events: Events, store: FakeStore
) -> None:
    projection = Projection(store, position=0, capacity=10, store_empty=True)
    pipeline = Pipeline(projection, store, record_metrics=False)
    store.position = 5  # another writer got there first

    await pipeline.submit(events.raw([events.composed("e1")]))
    with pytest.raises(RuntimeError, match="position"):
        await pipeline.drain()
    assert store.events == {}


async def test_the_decisions_of_waiting_events_change_in_the_store_when_the_origin_comes(
    events: Events, store: FakeStore
) -> None:
    projection = Projection(store, position=0, capacity=10, store_empty=True)
    pipeline = Pipeline(projection, store, record_metrics=False)
    opened = events.opened("e1")

    await pipeline.submit(events.raw([opened]))
    await pipeline.drain()
    assert store.decision(opened.event_id) == ("waiting", None, "")

    await pipeline.submit(events.raw([events.composed("e1")], first_seq=2))
    await pipeline.drain()
    assert store.decision(opened.event_id) == ("applied", None, "")
    assert store.state("e1").opens_human == 1
    assert store.decision(opened.event_id)[0] == Decision.APPLIED
