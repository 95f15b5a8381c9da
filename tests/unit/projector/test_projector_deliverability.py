"""Deliverability metrics count what committed batches changed: once per change, never a repeat."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from mailfold.events import (
    AnyEvent,
    BounceKind,
    EmailBounced,
    EmailComplained,
    EmailRejected,
    Source,
    Verdict,
    encode,
    event_subject,
    fold,
)
from mailfold.projector.service_layer import deliverability
from mailfold.projector.service_layer.deliverability import changes, diff
from mailfold.projector.service_layer.pipeline import Pipeline
from mailfold.projector.service_layer.projection import Projection

if TYPE_CHECKING:
    from tests.unit.projector.conftest import Events, FakeStore

PREFIX = "mailfold_deliverability_"


def snapshot() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every deliverability sample in the process's registry."""
    values = {}
    for family in REGISTRY.collect():
        if family.name.startswith(PREFIX):
            for sample in family.samples:
                if not sample.name.endswith("_created"):
                    values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def delta(before: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    """What changed since `before`, keyed by readable sample names."""
    out = {}
    for key, value in snapshot().items():
        gained = value - before.get(key, 0.0)
        if gained:
            labels = ",".join(f"{k}={v}" for k, v in key[1])
            out[f"{key[0]}{{{labels}}}"] = gained
    return out


def one_origin_history(events: Events, email_id: str, rng: random.Random) -> list[AnyEvent]:
    """An email with one origin and random facts (duplicates are added by the caller)."""
    origin = rng.choice(
        (
            events.composed(email_id),
            events.composed(email_id, to=("a@example.org", "b@example.org")),
            events.captured(email_id),
            events.received(email_id),
        )
    )
    makers = (
        events.sent,
        events.delivered,
        events.bounced,
        lambda e, m: events.opened(e, m, Verdict.HUMAN),
        lambda e, m: events.opened(e, m, Verdict.MACHINE),
        lambda e, m: events.clicked(e, m, Verdict.HUMAN),
        lambda e, m: events.clicked(e, m, Verdict.MACHINE),
    )
    facts = [rng.choice(makers)(email_id, rng.uniform(0, 60)) for _ in range(rng.randrange(8))]
    return [origin, *facts]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32), capacity=st.sampled_from((0, 1, 100)))
async def test_counts_add_up_to_the_final_states_however_the_stream_is_cut_or_repeated(
    events: Events, new_store: type[FakeStore], seed: int, capacity: int
) -> None:
    rng = random.Random(seed)
    histories = {f"d{n}": one_origin_history(events, f"d{n}", rng) for n in range(4)}
    distinct = [e for history in histories.values() for e in history]
    stream = distinct + rng.sample(distinct, k=rng.randrange(len(distinct)))
    rng.shuffle(stream)
    messages = [(i + 1, event_subject(e), encode(e)) for i, e in enumerate(stream)]
    store = new_store()
    pipeline = Pipeline(Projection(store, position=0, capacity=capacity, store_empty=True), store)
    before = snapshot()
    at = 0
    while at < len(messages):
        size = rng.randrange(1, 6)
        await pipeline.submit(messages[at : at + size])
        at += size
        await pipeline.submit(messages[: rng.randrange(at + 1)])  # redelivered: skipped
    await pipeline.drain()
    got = delta(before)

    # The sum over batches equals one step from nothing to each final state.
    final = changes((None, fold(h, email_id)) for email_id, h in histories.items())
    for name, tally in (
        ("milestones_total", final.milestones),
        ("opens_total", final.opens),
        ("clicks_total", final.clicks),
        ("violations_total", final.violations),
    ):
        wanted = {k: v for k, v in tally.items() if v}
        counted = {k: v for k, v in got.items() if k.startswith(f"{PREFIX}{name}{{") and v}
        assert sum(counted.values()) == sum(wanted.values()), (name, counted, wanted)
    bounced = sum(1 for e, h in histories.items() if fold(h, e).bounce is not None)
    assert sum(v for k, v in got.items() if k.startswith(f"{PREFIX}bounces_total")) == bounced


async def test_folding_the_same_stream_again_changes_no_counter(
    events: Events, new_store: type[FakeStore]
) -> None:
    history = [
        events.composed("e1"),
        events.sent("e1", 1),
        events.delivered("e1", 2),
        events.opened("e1", 3),
        events.opened("e1", 4, Verdict.MACHINE),
        events.clicked("e1", 5),
    ]
    messages = [(i + 1, event_subject(e), encode(e)) for i, e in enumerate(history)]
    store = new_store()
    pipeline = Pipeline(Projection(store, position=0, capacity=10, store_empty=True), store)
    before = snapshot()
    await pipeline.submit(messages)
    await pipeline.drain()
    first = delta(before)
    assert first[f"{PREFIX}opens_total{{source=individual,verdict=human}}"] == 1
    assert first[f"{PREFIX}opens_total{{source=individual,verdict=machine}}"] == 1
    assert first[f"{PREFIX}milestones_total{{milestone=delivered,source=individual}}"] == 1
    assert first[f"{PREFIX}sent_to_delivered_seconds_count{{}}"] == 1

    # The same events again under new stream positions (a producer republished them), and a
    # fresh projection that reads the states back from the store (a restarted consumer).
    again = [(len(history) + i + 1, s, d) for i, (_, s, d) in enumerate(messages)]
    restarted = Pipeline(Projection(store, position=len(history), capacity=10), store)
    middle = snapshot()
    await restarted.submit(again)
    await restarted.drain()
    assert delta(middle) == {}


def test_a_transition_is_counted_with_its_source_and_both_statuses(events: Events) -> None:
    sent = fold([events.composed("t1"), events.sent("t1", 1)], "t1")
    clicked = fold([events.composed("t1"), events.sent("t1", 1), events.clicked("t1", 30)], "t1")
    found = changes([(None, sent), (sent, clicked)])
    assert found.emails == {("individual", "none", "Sent"): 1, ("individual", "Sent", "Clicked"): 1}
    # A click implies the first open: the time to it is observed once, from sent.
    assert found.to_first_open == [29 * 60.0]
    assert found.clicks == {("individual", "human"): 1}


def test_bounce_and_rejection_reasons_outside_the_vocabulary_are_counted_as_other(
    events: Events,
) -> None:
    bounced = fold(
        [
            events.composed("b1"),
            EmailBounced(
                **events.env("b1", 2),
                recipient="ann@example.org",
                kind=BounceKind.SOFT,
                reason="<script>a free text</script>",
            ),
        ],
        "b1",
    )
    known = fold(
        [
            events.composed("b2"),
            EmailBounced(
                **events.env("b2", 2),
                recipient="ann@example.org",
                kind=BounceKind.HARD,
                reason="userunknown",
            ),
        ],
        "b2",
    )
    rejected = fold(
        [
            events.composed("r1", source=Source.MASS_EMAIL),
            EmailRejected(**events.env("r1", 1), reason="daily_limit_reached"),
        ],
        "r1",
    )
    odd = fold(
        [events.composed("r2"), EmailRejected(**events.env("r2", 1), reason="ann@example.org")],
        "r2",
    )
    found = changes([(None, bounced), (None, known), (None, rejected), (None, odd)])
    assert found.bounces == {("other", "soft"): 1, ("userunknown", "hard"): 1}
    assert found.rejections == {"daily_limit_reached": 1, "other": 1}


def test_a_complaint_counts_and_an_unreachable_open_is_a_violation_by_source(
    events: Events,
) -> None:
    base: list[AnyEvent] = [events.captured("c1"), events.sent("c1", 1)]
    before = fold(base, "c1")
    after = fold([*base, events.opened("c1", 3)], "c1")
    out = deliverability.Changes()
    diff(before, after, out)
    assert out.violations == {("bcc_dropbox", "unreachable_status"): 1}
    assert not out.opens
    mailed: list[AnyEvent] = [events.composed("c2"), events.sent("c2", 1)]
    complained = fold(
        [*mailed, EmailComplained(**events.env("c2", 5), recipient="ann@example.org")], "c2"
    )
    found = changes([(fold(mailed, "c2"), complained)])
    assert found.complaints == {"individual": 1}
    assert found.milestones == {("individual", "complained"): 1}


def test_the_known_rejection_reasons_are_the_senders() -> None:
    from mailfold.sender.domain.rules import RejectReason

    assert {r.value for r in RejectReason} == deliverability.REJECTION_REASONS
