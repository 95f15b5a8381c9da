"""The publish buffer: off the request path, retried until stored, bounded, flushed on stop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

from prometheus_client import REGISTRY

from mailfold.events import EmailOpened, Event, new_id
from mailfold.tracker.adapters.publisher import BufferedPublisher


def opened(n: int = 0) -> EmailOpened:
    return EmailOpened(
        event_id=new_id(),
        org_id="acme",
        email_id=new_id(),
        occurred_at=datetime.now(UTC),
        producer="tracker",
        recipient=f"reader{n}@example.org",
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class FakeStream:
    """Stores by event id, as JetStream deduplicates by Nats-Msg-Id; fails while told to."""

    def __init__(self) -> None:
        self.stored: dict[str, Event] = {}
        self.order: list[str] = []
        self.attempts = 0
        self.failing = False
        self.failing_ids: set[str] = set()
        self.lose_acks = False

    async def publish_batch(self, events: list[Event]) -> list[BaseException | None]:
        await asyncio.sleep(0)
        outcomes: list[BaseException | None] = []
        for event in events:
            self.attempts += 1
            if self.failing or event.event_id in self.failing_ids:
                outcomes.append(ConnectionError("no servers"))
                continue
            if event.event_id not in self.stored:
                self.stored[event.event_id] = event
                self.order.append(event.event_id)
            outcomes.append(TimeoutError("ack lost") if self.lose_acks else None)
        return outcomes


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


async def test_offered_events_are_published_once_each_in_order() -> None:
    stream = FakeStream()
    publisher = BufferedPublisher(stream.publish_batch, capacity=100, backoff_s=0.001)
    publisher.start()
    events = [opened(n) for n in range(50)]
    for event in events:
        assert publisher.offer(event)
    await wait_until(lambda: publisher.backlog == 0)
    assert stream.order == [event.event_id for event in events]
    assert await publisher.stop(1.0) == 0


async def test_failed_publishes_are_retried_until_stored() -> None:
    stream = FakeStream()
    stream.failing = True
    publisher = BufferedPublisher(
        stream.publish_batch, capacity=100, backoff_s=0.001, max_backoff_s=0.01
    )
    publisher.start()
    failures_before = metric("mailfold_tracker_publish_failures_total")
    events = [opened(n) for n in range(10)]
    for event in events:
        publisher.offer(event)
    await wait_until(lambda: stream.attempts >= 30)
    assert publisher.backlog == 10
    assert metric("mailfold_tracker_publish_failures_total") > failures_before
    stream.failing = False
    await wait_until(lambda: publisher.backlog == 0)
    assert sorted(stream.stored) == sorted(event.event_id for event in events)
    await publisher.stop(1.0)


async def test_a_lost_acknowledgement_is_retried_and_stored_once() -> None:
    stream = FakeStream()
    stream.lose_acks = True
    publisher = BufferedPublisher(stream.publish_batch, capacity=10, backoff_s=0.001)
    publisher.start()
    event = opened()
    publisher.offer(event)
    await wait_until(lambda: stream.attempts >= 3)
    stream.lose_acks = False
    await wait_until(lambda: publisher.backlog == 0)
    assert stream.order == [event.event_id]
    await publisher.stop(1.0)


async def test_only_the_failed_events_of_a_batch_are_retried() -> None:
    stream = FakeStream()
    publisher = BufferedPublisher(stream.publish_batch, capacity=10, backoff_s=0.001)
    events = [opened(n) for n in range(4)]
    stream.failing_ids = {events[1].event_id}
    for event in events:
        publisher.offer(event)
    publisher.start()
    await wait_until(lambda: len(stream.stored) == 3)
    stream.failing_ids = set()
    await wait_until(lambda: publisher.backlog == 0)
    assert stream.order[-1] == events[1].event_id
    await publisher.stop(1.0)


async def test_a_full_buffer_drops_counts_and_says_so() -> None:
    stream = FakeStream()
    publisher = BufferedPublisher(stream.publish_batch, capacity=2)
    dropped_before = metric("mailfold_tracker_events_dropped_total", reason="buffer_full")
    assert publisher.offer(opened(1))
    assert publisher.offer(opened(2))
    assert not publisher.offer(opened(3))
    assert metric("mailfold_tracker_events_dropped_total", reason="buffer_full") == (
        dropped_before + 1
    )
    publisher.start()
    await wait_until(lambda: publisher.backlog == 0)
    assert len(stream.stored) == 2
    await publisher.stop(1.0)


async def test_stop_publishes_what_is_still_buffered() -> None:
    stream = FakeStream()
    publisher = BufferedPublisher(stream.publish_batch, capacity=1000, batch=8)
    for n in range(200):
        publisher.offer(opened(n))
    publisher.start()
    assert await publisher.stop(5.0) == 0
    assert len(stream.stored) == 200
    assert publisher.backlog == 0


async def test_stop_gives_up_after_its_deadline_and_counts_what_is_left() -> None:
    stream = FakeStream()
    stream.failing = True
    backlog_before = metric("mailfold_tracker_publish_backlog")
    dropped_before = metric("mailfold_tracker_events_dropped_total", reason="shutdown")
    publisher = BufferedPublisher(stream.publish_batch, capacity=100, backoff_s=0.001)
    publisher.start()
    for n in range(5):
        publisher.offer(opened(n))
    assert metric("mailfold_tracker_publish_backlog") == backlog_before + 5
    assert await publisher.stop(0.05) == 5
    assert metric("mailfold_tracker_events_dropped_total", reason="shutdown") == (
        dropped_before + 5
    )
    assert metric("mailfold_tracker_publish_backlog") == backlog_before
    assert not publisher.running


async def test_nothing_is_accepted_after_stop() -> None:
    stream = FakeStream()
    publisher = BufferedPublisher(stream.publish_batch, capacity=10)
    publisher.start()
    await publisher.stop(1.0)
    dropped_before = metric("mailfold_tracker_events_dropped_total", reason="stopped")
    assert not publisher.offer(opened())
    assert metric("mailfold_tracker_events_dropped_total", reason="stopped") == dropped_before + 1
