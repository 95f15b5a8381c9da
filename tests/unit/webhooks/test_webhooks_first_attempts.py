"""First attempts from the fan-out, with fakes: what is acked, what is queued, and when."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import msgspec
from nats.aio.msg import Msg
from tests.webhooks_fakes import (
    JOB,
    FakeDeliveries,
    FakeEndpoints,
    FakeQueue,
    ScriptedPoster,
    make_endpoint,
    until,
)

from mailfold.webhooks.adapters.jobs import attempt_number, retry_delay
from mailfold.webhooks.domain.deliveries import Job
from mailfold.webhooks.domain.retries import Outcome
from mailfold.webhooks.entrypoints.first import FirstAttempts, Lanes
from mailfold.webhooks.entrypoints.settler import Settler
from mailfold.webhooks.service_layer.delivery import Deliverer
from mailfold.webhooks.service_layer.fanout import Fanout, Stored


class _Meta:
    def __init__(self, seq: int) -> None:
        self.sequence = type("Seq", (), {"stream": seq})()


class EventMessage:
    """A MAIL_EVENTS message as nats-py hands it out: its position, and whether it was acked."""

    def __init__(self, seq: int) -> None:
        self.subject = f"mail.events.acme.email_sent.{seq}"
        self.seq = seq
        self.metadata = _Meta(seq)
        self.acked = False
        self.nakked = False

    async def ack(self) -> None:
        self.acked = True

    async def nak(self) -> None:
        self.nakked = True


class FakeFanout:
    """Hands back prepared jobs per event, as the fold would build them."""

    def __init__(self, jobs: dict[int, list[Job]]) -> None:
        self.jobs = jobs

    async def handle(self, messages: Sequence[Stored]) -> list[tuple[Stored, list[Job]]]:
        return [(m, self.jobs.get(m.seq, [])) for m in messages]


def job(seq: int, endpoint_id: str = "ep_1") -> Job:
    return msgspec.structs.replace(
        JOB, event_id=f"ev_{seq}", stream_seq=seq, endpoint_id=endpoint_id
    )


async def run_batch(
    jobs: dict[int, list[Job]],
    poster: ScriptedPoster,
    queue: FakeQueue,
    endpoints: FakeEndpoints,
    *,
    concurrency: int = 4,
    wait_s: float = 1.0,
) -> tuple[list[EventMessage], FakeDeliveries, FirstAttempts, Settler]:
    deliveries = FakeDeliveries()
    deliverer = Deliverer(endpoints, deliveries, poster, schedule=(5.0, 60.0), rng=random.Random(1))
    settler = Settler(deliveries)
    settler.start()
    first = FirstAttempts(
        cast(Fanout, FakeFanout(jobs)),
        endpoints,
        deliverer,
        settler,
        queue,
        Lanes(concurrency),
        wait_s=wait_s,
    )
    messages = [EventMessage(seq) for seq in sorted(jobs)]
    stored = [Stored(seq=m.seq, data=b"{}") for m in messages]
    await first.on_batch(stored, cast(list[Msg], messages))
    return messages, deliveries, first, settler


async def settled(messages: list[EventMessage]) -> None:
    await until(lambda: all(m.acked for m in messages))


async def test_a_delivered_first_attempt_acks_its_event_and_queues_nothing() -> None:
    endpoint = make_endpoint()
    poster, queue = ScriptedPoster({}), FakeQueue()
    messages, deliveries, first, settler = await run_batch(
        {1: [job(1)], 2: [job(2)]}, poster, queue, FakeEndpoints(endpoint)
    )
    await settled(messages)
    assert queue.jobs == []
    assert {d.outcome for d in deliveries.records.values()} == {Outcome.DELIVERED}
    assert sorted(deliveries.records) == [("ep_1", "ev_1"), ("ep_1", "ev_2")]
    await settler.stop()
    await first.stop()


async def test_a_failed_first_attempt_lands_in_the_retry_queue_before_its_event_is_acked() -> None:
    endpoint = make_endpoint()
    poster, queue = ScriptedPoster({endpoint.url: 500}), FakeQueue()
    before = datetime.now(UTC)
    messages, deliveries, first, settler = await run_batch(
        {7: [job(7)]}, poster, queue, FakeEndpoints(endpoint)
    )
    await settled(messages)
    ((retry, msg_id),) = queue.jobs
    assert msg_id == "ep_1.ev_7"
    assert retry.attempts_made == 1
    assert retry.body == JOB.body
    assert retry.event_id == "ev_7"
    assert retry.not_before is not None
    # The schedule's first delay (5 s, +-10 % jitter) counts from the attempt.
    assert before + timedelta(seconds=4.4) <= retry.not_before
    assert retry.not_before <= datetime.now(UTC) + timedelta(seconds=5.6)
    record = deliveries.of("ev_7")
    assert record.outcome is Outcome.RETRYING
    assert record.attempts == 1
    await settler.stop()
    await first.stop()


async def test_an_event_whose_retry_could_not_be_queued_stays_unacked() -> None:
    endpoint = make_endpoint()
    poster, queue = ScriptedPoster({endpoint.url: 503}), FakeQueue(fail=True)
    messages, deliveries, first, settler = await run_batch(
        {3: [job(3)], 4: []}, poster, queue, FakeEndpoints(endpoint)
    )
    await until(lambda: ("ep_1", "ev_3") in deliveries.records)  # recorded: now being settled
    await settler.stop()  # settles what is pending, then stops
    by_seq = {m.seq: m for m in messages}
    assert by_seq[4].acked  # nothing to deliver: acked at once
    assert not by_seq[3].acked  # comes back after ack_wait, is attempted again
    assert poster.sent == [endpoint.url]
    await first.stop()


async def test_a_hanging_endpoint_congests_its_own_lane_only() -> None:
    slow = make_endpoint()
    fast = msgspec.structs.replace(
        make_endpoint(), endpoint_id="ep_2", url="https://b.example.org/"
    )
    poster = ScriptedPoster({}, hang={slow.url})
    queue = FakeQueue()
    # Concurrency 1: one attempt in flight and one waiting for it, per endpoint.
    jobs = {seq: [job(seq, "ep_1"), job(seq, "ep_2")] for seq in range(1, 6)}
    messages, deliveries, first, settler = await run_batch(
        jobs, poster, queue, FakeEndpoints(slow, fast), concurrency=1, wait_s=0.2
    )
    # Every event reached the healthy endpoint; the hanging one holds one attempt, and every
    # job of it that could not start went to the queue for its own loop.
    await until(lambda: sum(d.endpoint_id == "ep_2" for d in deliveries.records.values()) == 5)
    assert poster.sent.count(slow.url) == 1
    queued = sorted(j.stream_seq for j, _ in queue.jobs)
    assert queued == [2, 3, 4, 5]
    assert all(j.endpoint_id == "ep_1" and j.attempts_made == 0 for j, _ in queue.jobs)
    assert [m.seq for m in messages if m.acked] == [2, 3, 4, 5]  # the first waits for its attempt
    poster.release.set()
    await settled(messages)
    await settler.stop()
    await first.stop()


def _job_message(delivered: int) -> Msg:
    reply = f"$JS.ACK.WEBHOOK_JOBS.webhook_ep_1.{delivered}.12.12.1764417600000000000.0"
    return Msg(_client=cast(Any, None), subject="webhooks.jobs.acme.ep_1", reply=reply)


def test_a_queued_retry_waits_for_its_due_time_then_counts_on_from_the_first_attempt() -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    retry = msgspec.structs.replace(JOB, attempts_made=1, not_before=now + timedelta(seconds=5))
    assert retry_delay(_job_message(1), retry, now) == 5.0
    assert retry_delay(_job_message(1), retry, now + timedelta(seconds=9)) == 0.0
    assert retry_delay(_job_message(2), retry, now) is None
    assert attempt_number(_job_message(2), retry) == 2
    assert attempt_number(_job_message(4), retry) == 4
    # A job queued without an attempt (a congested endpoint's, a replay) starts at 1.
    assert retry_delay(_job_message(1), JOB, now) is None
    assert attempt_number(_job_message(1), JOB) == 1


async def test_a_graceful_stop_finishes_the_attempts_in_flight_and_hands_back_the_rest() -> None:
    endpoint = make_endpoint()
    poster, queue = ScriptedPoster({}, hang={endpoint.url}), FakeQueue()
    # One slot: event 1's attempt is in flight, event 2's job waits for the slot.
    messages, deliveries, first, settler = await run_batch(
        {1: [job(1)], 2: [job(2)]}, poster, queue, FakeEndpoints(endpoint), concurrency=1
    )
    await until(lambda: poster.sent == [endpoint.url])
    stopping = asyncio.ensure_future(first.stop(grace_s=5.0))
    await asyncio.sleep(0.05)
    assert not stopping.done()  # the attempt in flight is waited for
    poster.release.set()
    await stopping
    assert messages[1].nakked  # never attempted: back to the stream at once
    await settled(messages[:1])
    await settler.stop()
    assert sorted(deliveries.records) == [("ep_1", "ev_1")]
    assert poster.sent == [endpoint.url]  # the handed-back job was not attempted
    assert not messages[1].acked
    assert not messages[0].nakked
    assert queue.jobs == []


async def test_attempts_still_running_when_the_grace_ends_are_abandoned_unacked() -> None:
    endpoint = make_endpoint()
    poster, queue = ScriptedPoster({}, hang={endpoint.url}), FakeQueue()
    messages, deliveries, first, settler = await run_batch(
        {1: [job(1)]}, poster, queue, FakeEndpoints(endpoint), concurrency=1
    )
    await until(lambda: poster.sent == [endpoint.url])
    await first.stop(grace_s=0.05)
    await settler.stop()
    # Neither acked nor handed back: JetStream hands it out again after ack_wait.
    assert not messages[0].acked
    assert not messages[0].nakked
    assert deliveries.records == {}


async def test_events_arriving_while_stopping_are_handed_back_unattempted() -> None:
    endpoint = make_endpoint()
    poster, queue = ScriptedPoster({}), FakeQueue()
    deliveries = FakeDeliveries()
    deliverer = Deliverer(FakeEndpoints(endpoint), deliveries, poster, schedule=(5.0,))
    settler = Settler(deliveries)
    settler.start()
    first = FirstAttempts(
        cast(Fanout, FakeFanout({3: [job(3)]})),
        FakeEndpoints(endpoint),
        deliverer,
        settler,
        queue,
        Lanes(2),
    )
    first.close()
    message = EventMessage(3)
    await first.on_batch([Stored(seq=3, data=b"{}")], cast(list[Msg], [message]))
    await first.stop()
    assert message.nakked
    await settler.stop()
    assert poster.sent == []
    assert not message.acked
    assert queue.jobs == []


async def test_an_event_whose_other_job_was_settling_at_stop_is_handed_back_after() -> None:
    first_endpoint = make_endpoint()
    second = msgspec.structs.replace(
        make_endpoint(), endpoint_id="ep_2", url="https://other.example.org/"
    )
    poster = ScriptedPoster({}, hang={first_endpoint.url, second.url})
    queue = FakeQueue()
    # One slot each: event 1 holds ep_1's; event 2's ep_2 job is in flight, its ep_1 job waits.
    messages, deliveries, first, settler = await run_batch(
        {1: [job(1)], 2: [job(2), job(2, "ep_2")]},
        poster,
        queue,
        FakeEndpoints(first_endpoint, second),
        concurrency=1,
    )
    await until(lambda: len(poster.sent) == 2)
    stopping = asyncio.ensure_future(first.stop(grace_s=5.0))
    await asyncio.sleep(0.05)
    poster.release.set()
    await stopping
    await settler.stop()  # settles the two attempts that finished
    assert messages[0].acked
    # Its ep_2 job may still have been settling when stop returned: handed back now at the latest.
    await first.hand_back()
    assert messages[1].nakked
    assert not messages[1].acked
    assert sorted(deliveries.records) == [("ep_1", "ev_1"), ("ep_2", "ev_2")]
