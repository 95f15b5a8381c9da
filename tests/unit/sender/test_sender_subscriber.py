"""The sender's FastStream subscriber in memory (TestNatsBroker): decode, hand over, dead-letter;
and its pool: bounded concurrency, each message settled on its own, deadlines pushed back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from faststream.nats import TestNatsBroker
from prometheus_client import CollectorRegistry
from tests.dead_letters import collect_dead_letters

from mailfold.events import EmailComposed, EmailOpened, Source, encode, new_id
from mailfold.runtime.broker import new_broker
from mailfold.sender.entrypoints import consumer
from mailfold.sender.service_layer.handlers import DONE, Disposition, Retry


def _composed() -> EmailComposed:
    return EmailComposed(
        event_id=new_id(),
        org_id="acme",
        email_id=new_id(),
        producer="ingest",
        occurred_at=datetime(2026, 1, 2, tzinfo=UTC),
        source=Source.INDIVIDUAL,
        from_addr="me@acme.example",
        to=("ann@example.org",),
        subject="hello",
    )


async def test_a_composed_email_reaches_the_handler_as_a_typed_event() -> None:
    broker = new_broker("nats://127.0.0.1:1", service="sender", registry=CollectorRegistry())
    seen: list[tuple[EmailComposed, bool]] = []

    async def handle(event: EmailComposed, redelivered: bool) -> Disposition:
        seen.append((event, redelivered))
        return DONE

    pool = consumer.subscribe(
        broker, handle, durable="sender", concurrency=4, ack_wait=30, max_pending=10
    )
    composed = _composed()
    async with TestNatsBroker(broker) as test:
        await test.publish(composed, "mail.events.acme.email_composed")
        await pool.drain(grace=5)
    assert seen == [(composed, False)]


async def test_what_is_not_a_composed_email_is_dead_lettered_with_its_reason() -> None:
    broker = new_broker("nats://127.0.0.1:1", service="sender", registry=CollectorRegistry())
    handled: list[EmailComposed] = []

    async def handle(event: EmailComposed, redelivered: bool) -> Disposition:
        handled.append(event)
        return DONE

    pool = consumer.subscribe(
        broker, handle, durable="sender", concurrency=4, ack_wait=30, max_pending=10
    )
    parked = collect_dead_letters(broker, "mail.dlq.sender")

    opened = EmailOpened(
        event_id=new_id(),
        org_id="acme",
        email_id=new_id(),
        producer="tracker",
        occurred_at=datetime(2026, 1, 2, tzinfo=UTC),
        recipient="ann@example.org",
    )
    async with TestNatsBroker(broker) as test:
        await test.publish(b'{"type": "email_composed"}', "mail.events.acme.email_composed")
        await test.publish(opened, "mail.events.acme.email_composed")
        await pool.drain(grace=5)
    assert handled == []
    assert [body for body, _ in parked] == [
        b'{"type": "email_composed"}',
        encode(opened),
    ]
    reasons = [headers["Mailfold-Error"] for _, headers in parked]
    assert "not a valid event" in reasons[0]
    assert reasons[1] == "expected email_composed, got email_opened"
    assert all(headers["Mailfold-Consumer"] == "sender" for _, headers in parked)


class FakeMsg:
    """A JetStream message that records how it was settled."""

    def __init__(self, delivered: int = 1) -> None:
        self.metadata = SimpleNamespace(num_delivered=delivered)
        self.settled: list[tuple[str, float | None]] = []
        self.progress = 0

    async def ack(self) -> None:
        self.settled.append(("ack", None))

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append(("nak", delay))

    async def in_progress(self) -> None:
        self.progress += 1


def _take(pool: consumer.Pool, msg: FakeMsg, event: EmailComposed) -> Any:
    return pool.take(msg, event)  # type: ignore[arg-type]


async def test_the_pool_runs_at_most_its_concurrency_and_settles_each_message() -> None:
    release = asyncio.Event()
    running: list[str] = []
    outcomes: dict[str, Disposition] = {}

    async def handle(event: EmailComposed, redelivered: bool) -> Disposition:
        running.append(event.email_id)
        await release.wait()
        return outcomes[event.email_id]

    pool = consumer.Pool(handle, concurrency=2, heartbeat=60)
    events = [_composed() for _ in range(3)]
    outcomes = {events[0].email_id: DONE, events[1].email_id: Retry(7.0), events[2].email_id: DONE}
    msgs = [FakeMsg(), FakeMsg(), FakeMsg(delivered=2)]
    await _take(pool, msgs[0], events[0])
    await _take(pool, msgs[1], events[1])
    third = asyncio.create_task(_take(pool, msgs[2], events[2]))
    await asyncio.sleep(0.05)
    assert not third.done()  # no free slot: the subscriber fetches nothing more meanwhile
    assert running == [events[0].email_id, events[1].email_id]
    release.set()
    await third
    await pool.drain(grace=5)
    assert running == [e.email_id for e in events]
    assert [m.settled for m in msgs] == [[("ack", None)], [("nak", 7.0)], [("ack", None)]]


async def test_a_failing_handler_gets_its_message_back_after_the_error_delay() -> None:
    async def handle(event: EmailComposed, redelivered: bool) -> Disposition:
        raise ConnectionError("KV away")

    pool = consumer.Pool(handle, concurrency=1, heartbeat=60)
    msg = FakeMsg(delivered=3)
    await _take(pool, msg, _composed())
    await pool.drain(grace=5)
    assert msg.settled == [("nak", consumer.error_delay(3))]


async def test_a_closed_pool_hands_waiting_messages_back_and_finishes_the_running_one() -> None:
    release = asyncio.Event()
    handled: list[str] = []

    async def handle(event: EmailComposed, redelivered: bool) -> Disposition:
        await release.wait()
        handled.append(event.email_id)
        return DONE

    pool = consumer.Pool(handle, concurrency=1, heartbeat=60)
    first, waiting = _composed(), _composed()
    running_msg, waiting_msg = FakeMsg(), FakeMsg()
    await _take(pool, running_msg, first)
    queued = asyncio.create_task(_take(pool, waiting_msg, waiting))
    await asyncio.sleep(0.02)
    pool.close()
    release.set()
    await queued
    await pool.drain(grace=5)
    assert handled == [first.email_id]
    assert running_msg.settled == [("ack", None)]
    assert waiting_msg.settled == [("nak", None)]


async def test_held_messages_have_their_deadline_pushed_back_while_waiting_or_handled() -> None:
    release = asyncio.Event()

    async def handle(event: EmailComposed, redelivered: bool) -> Disposition:
        await release.wait()
        return DONE

    pool = consumer.Pool(handle, concurrency=1, heartbeat=0.05)
    handled, waiting = FakeMsg(), FakeMsg()
    await _take(pool, handled, _composed())
    queued = asyncio.create_task(_take(pool, waiting, _composed()))
    await asyncio.sleep(0.3)
    assert handled.progress >= 2
    assert waiting.progress >= 2
    release.set()
    await queued
    await pool.drain(grace=5)
    assert handled.settled == [("ack", None)]
    assert waiting.settled == [("ack", None)]
