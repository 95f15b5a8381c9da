"""Partition assignment and fair shares: stable, per email, and every process ends with its share."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.unit.projector.conftest import Events

from mailfold.events import encode, event_subject
from mailfold.events.ids import new_id
from mailfold.projector.domain.messages import RawMessage
from mailfold.projector.domain.partitions import (
    Bounds,
    MixedLayouts,
    Partition,
    Plan,
    committed_bounds,
    fair_share,
    layout,
    message_partition,
    other_layouts,
    parse_consumer,
    partition_of,
    plan,
)
from mailfold.projector.service_layer.pipeline import Pipeline
from mailfold.projector.service_layer.projection import Projection

if TYPE_CHECKING:
    from tests.unit.projector.conftest import FakeStore


def test_the_partition_of_an_email_is_a_fixed_function_of_its_id() -> None:
    # CRC-32 (its standard check value: "123456789" -> 0xCBF43926), the same in every process
    # and Python run, unlike the salted hash().
    assert 0xCBF43926 % 4 == 2
    assert partition_of("123456789", 4) == 2
    assert partition_of("123456789", 3) == 0xCBF43926 % 3
    assert partition_of("anything", 1) == 0


def test_every_event_of_an_email_lands_in_its_emails_partition() -> None:
    mail = Events()
    for _ in range(40):
        email_id = new_id()
        events = [mail.composed(email_id), mail.sent(email_id), mail.opened(email_id)]
        for count in (2, 3, 4, 7):
            expected = partition_of(email_id, count)
            assert {message_partition(encode(e), count) for e in events} == {expected}
            owners = [p.index for p in layout("projector", count) if p.owns(encode(events[0]))]
            assert owners == [expected]


def test_emails_spread_over_the_partitions() -> None:
    counts = [0, 0, 0, 0]
    for _ in range(4000):
        counts[partition_of(new_id(), 4)] += 1
    assert all(800 < c < 1200 for c in counts), counts


@pytest.mark.parametrize(
    "data", [b"\xffgarbage", b'{"type": "email_sent"}', b'{"email_id": 7}', b"[1, 2]"]
)
def test_a_message_without_a_readable_email_id_belongs_to_partition_zero(data: bytes) -> None:
    assert message_partition(data, 4) == 0
    assert [p.index for p in layout("projector", 4) if p.owns(data)] == [0]


def test_one_partition_keeps_the_consumer_name_and_owns_everything() -> None:
    (only,) = layout("projector", 1)
    assert only.consumer == "projector"
    assert only.owns(b"\xff")
    assert [p.consumer for p in layout("projector", 3)] == [
        "projector-p0-of-3",
        "projector-p1-of-3",
        "projector-p2-of-3",
    ]
    with pytest.raises(ValueError, match="at least 1"):
        layout("projector", 0)


def test_consumer_names_parse_back_and_other_layouts_are_found() -> None:
    assert parse_consumer("projector", "projector") == Partition("projector", 0, 1)
    assert parse_consumer("projector", "projector-p2-of-4") == Partition("projector", 2, 4)
    assert parse_consumer("projector", "projector-p4-of-4") is None
    assert parse_consumer("projector", "replay") is None
    assert parse_consumer("projector", "projector-p0-of-1") is None
    names = ["projector", "replay", "projector-p0-of-2", "projector-p1-of-2"]
    assert other_layouts("projector", 2, names) == ["projector"]
    assert other_layouts("projector", 1, names) == ["projector-p0-of-2", "projector-p1-of-2"]
    assert other_layouts("projector", 2, ["projector-p0-of-2", "webhooks"]) == []


def test_bounds_keep_each_message_up_to_its_own_partitions_position() -> None:
    mail = Events()
    emails = [new_id() for _ in range(20)]
    positions = {"projector-p0-of-2": 10, "projector-p1-of-2": 30, "replay": 99}
    bounds = committed_bounds("projector", positions)
    assert bounds == Bounds(2, (10, 30))
    assert bounds.last == 30
    for email_id in emails:
        data = encode(mail.sent(email_id))
        limit = 10 if partition_of(email_id, 2) == 0 else 30
        assert bounds.keep(limit, data)
        assert not bounds.keep(limit + 1, data)
    assert committed_bounds("projector", {}) == Bounds(1, (0,))
    assert committed_bounds("projector", {"projector": 5}).keep(5, b"\xff")
    with pytest.raises(MixedLayouts):
        committed_bounds("projector", {"projector": 5, "projector-p0-of-2": 5})


def test_fair_shares_are_the_floor_or_one_more() -> None:
    assert fair_share(4, 2) == (2, 2)
    assert fair_share(4, 3) == (1, 2)
    assert fair_share(1, 2) == (0, 1)
    assert fair_share(4, 0) == (4, 4)


def test_a_process_alone_takes_every_free_partition() -> None:
    assert plan(4, me=10, members=[10], holders={}, mine=[]).acquire == (0, 1, 2, 3)


def test_a_second_process_makes_the_first_give_back_down_to_its_share() -> None:
    holders = dict.fromkeys(range(4), 10)
    first = plan(4, me=10, members=[10, 20], holders=holders, mine=[0, 1, 2, 3])
    assert first.release == (2, 3)
    # The newcomer waits until they are free, then takes them.
    assert plan(4, me=20, members=[10, 20], holders=holders, mine=[]).acquire == ()
    after = {0: 10, 1: 10}
    assert plan(4, me=20, members=[10, 20], holders=after, mine=[]).acquire == (2, 3)
    assert plan(4, me=10, members=[10, 20], holders=after, mine=[0, 1]) == plan(
        4, me=10, members=[10, 20], holders={**after, 2: 20, 3: 20}, mine=[0, 1]
    )


def test_a_third_process_gets_one_from_the_last_process_at_the_ceiling() -> None:
    holders = {0: 10, 1: 10, 2: 20, 3: 20}
    members = [10, 20, 30]
    assert plan(4, me=10, members=members, holders=holders, mine=[0, 1]).release == ()
    assert plan(4, me=20, members=members, holders=holders, mine=[2, 3]).release == (3,)
    assert plan(4, me=30, members=members, holders={0: 10, 1: 10, 2: 20}, mine=[]).acquire == (3,)
    # Settled at 2+1+1: nobody moves.
    settled = {0: 10, 1: 10, 2: 20, 3: 30}
    for me, mine in ((10, [0, 1]), (20, [2]), (30, [3])):
        assert plan(4, me=me, members=members, holders=settled, mine=mine) == Plan()


def test_one_partition_over_two_processes_stays_where_it_is() -> None:
    assert plan(1, me=20, members=[10, 20], holders={0: 20}, mine=[0]).release == ()
    assert plan(1, me=10, members=[10, 20], holders={0: 20}, mine=[]).acquire == ()
    # The holder died: its lock went with its session.
    assert plan(1, me=10, members=[10], holders={}, mine=[]).acquire == (0,)


def test_the_survivor_takes_every_partition_of_a_dead_process() -> None:
    assert plan(4, me=10, members=[10], holders={0: 10, 1: 10}, mine=[0, 1]).acquire == (2, 3)


def test_a_partition_held_outside_the_members_is_not_taken() -> None:
    # A process without a membership lock (an older version) still holds its partition.
    assert plan(2, me=10, members=[10], holders={1: 99}, mine=[]).acquire == (0,)


@given(
    count=st.integers(1, 12),
    processes=st.integers(1, 6),
    seed=st.integers(0, 2**32),
)
def test_rounds_settle_with_every_partition_held_once_and_every_share_fair(
    count: int, processes: int, seed: int
) -> None:
    """Processes acting one at a time in random order, each on the current picture, settle with
    every partition held, nobody above the ceiling and nobody below the floor."""
    rng = random.Random(seed)
    members = list(range(100, 100 + processes))
    held: dict[int, int] = {}
    # Start unbalanced: one process holds everything, as after the others restarted.
    for index in range(count):
        held[index] = members[0]
    for _ in range(200):
        me = rng.choice(members)
        mine = [i for i, p in held.items() if p == me]
        move = plan(count, me, members, dict(held), mine)
        for index in move.release:
            del held[index]
        for index in move.acquire:
            held.setdefault(index, me)
    floor, ceiling = fair_share(count, processes)
    stable = all(
        plan(count, me, members, dict(held), [i for i, p in held.items() if p == me]) == Plan()
        for me in members
    )
    shares = [sum(1 for p in held.values() if p == me) for me in members]
    assert sorted(held) == list(range(count))
    assert all(floor <= s <= ceiling for s in shares), shares
    assert stable


async def test_partitions_fold_only_their_emails_and_together_equal_one_projection(
    events: Events, new_store: type[FakeStore]
) -> None:
    rng = random.Random(7)
    stream: list[RawMessage] = []
    for _ in range(60):
        email_id = new_id()
        for event in [events.composed(email_id), events.sent(email_id), events.opened(email_id)]:
            stream.append((0, event_subject(event), encode(event)))
    rng.shuffle(stream)
    stream.append((0, "mail.events.acme.email_sent", b"\xffpoison"))
    stream = [(seq, subject, data) for seq, (_, subject, data) in enumerate(stream, 1)]

    async def run(partition: Partition | None) -> FakeStore:
        store = new_store()
        owns = None if partition is None else partition.owns
        projection = Projection(store, position=0, capacity=1000, store_empty=True, owns=owns)
        pipeline = Pipeline(projection, store, record_metrics=False)
        for start in range(0, len(stream), 25):
            await pipeline.submit(stream[start : start + 25])
        await pipeline.drain()
        return store

    whole = await run(None)
    parts = [await run(p) for p in layout("projector", 3)]
    # Every partition's position is the stream's end; each holds only its own emails.
    assert [p.position for p in parts] == [len(stream)] * 3
    for partition, store in zip(layout("projector", 3), parts, strict=True):
        assert all(partition_of(e, 3) == partition.index for e in store.emails)
    merged_emails = {e: row for store in parts for e, row in store.emails.items()}
    merged_events = {e: row for store in parts for e, row in store.events.items()}
    assert merged_emails == whole.emails
    assert merged_events == whole.events
    assert set().union(*(s.links for s in parts)) == whole.links
    assert sum(len(s.emails) for s in parts) == len(whole.emails) == 60
