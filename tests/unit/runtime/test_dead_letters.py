"""The runtime's dead-lettering in memory (TestNatsBroker): what a handler cannot use is parked in
MAIL_DLQ with its reason, once, for one message or a whole batch."""

from __future__ import annotations

from datetime import UTC, datetime

from faststream.nats import PullSub, TestNatsBroker
from prometheus_client import CollectorRegistry
from tests.dead_letters import collect_dead_letters

from mailfold.events import AnyEvent, EmailOpened, encode, new_id
from mailfold.runtime.broker import EVENTS_STREAM, Poison, new_broker


def _opened() -> EmailOpened:
    return EmailOpened(
        event_id=new_id(),
        org_id="acme",
        email_id=new_id(),
        producer="tracker",
        occurred_at=datetime(2026, 1, 2, tzinfo=UTC),
        recipient="ann@example.org",
    )


async def test_a_poison_raised_by_a_handler_parks_its_message_with_the_reason() -> None:
    broker = new_broker("nats://127.0.0.1:1", service="test", registry=CollectorRegistry())

    @broker.subscriber(
        "mail.events.*.email_opened", stream=EVENTS_STREAM, durable="one", pull_sub=PullSub()
    )
    async def handle(event: AnyEvent) -> None:
        raise Poison(f"no use for {event.event_type}")

    parked = collect_dead_letters(broker)

    opened = _opened()
    async with TestNatsBroker(broker) as test:
        await test.publish(opened, "mail.events.acme.email_opened")
        await test.publish(b"{not json", "mail.events.acme.email_opened")
    assert [body for body, _ in parked] == [encode(opened), b"{not json"]
    assert parked[0][1]["Mailfold-Error"] == "no use for email_opened"
    assert "not a valid event" in parked[1][1]["Mailfold-Error"]


async def test_a_poison_raised_for_a_whole_batch_parks_every_message_of_it() -> None:
    broker = new_broker("nats://127.0.0.1:1", service="test", registry=CollectorRegistry())

    @broker.subscriber(
        "mail.events.*.email_opened",
        stream=EVENTS_STREAM,
        durable="batch",
        pull_sub=PullSub(batch=True),
    )
    async def handle(events: list[AnyEvent]) -> None:
        raise Poison("the batch is unusable")

    parked = collect_dead_letters(broker)

    opened = _opened()
    async with TestNatsBroker(broker) as test:
        await test.publish(opened, "mail.events.acme.email_opened")
    assert [body for body, _ in parked] == [encode(opened)]
    assert parked[0][1]["Mailfold-Error"] == "the batch is unusable"
