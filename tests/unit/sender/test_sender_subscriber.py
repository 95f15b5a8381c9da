"""The sender's FastStream subscriber in memory (TestNatsBroker): decode, hand over, dead-letter."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from faststream import StreamMessage
from faststream.nats import JStream, TestNatsBroker
from prometheus_client import CollectorRegistry

from mailfold.events import DLQ_STREAM, EmailComposed, EmailOpened, Source, encode, new_id
from mailfold.runtime.broker import current_message, new_broker
from mailfold.sender.entrypoints import consumer
from mailfold.sender.service_layer.handlers import DONE, Disposition


class Raw:
    """Dead letters are kept as the bytes that arrived."""

    async def decode(self, msg: StreamMessage[Any]) -> Any:
        return msg.body

    async def encode(self, msg: Any, serializer: Any = None) -> tuple[bytes, str | None]:
        return msg, None


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

    consumer.subscribe(broker, handle, durable="sender", concurrency=4, ack_wait=30, max_pending=10)
    composed = _composed()
    async with TestNatsBroker(broker) as test:
        await test.publish(composed, "mail.events.acme.email_composed")
    assert seen == [(composed, False)]


async def test_what_is_not_a_composed_email_is_dead_lettered_with_its_reason() -> None:
    broker = new_broker("nats://127.0.0.1:1", service="sender", registry=CollectorRegistry())
    handled: list[EmailComposed] = []

    async def handle(event: EmailComposed, redelivered: bool) -> Disposition:
        handled.append(event)
        return DONE

    consumer.subscribe(broker, handle, durable="sender", concurrency=4, ack_wait=30, max_pending=10)
    parked: list[tuple[bytes, dict[str, str]]] = []

    @broker.subscriber("mail.dlq.sender", stream=JStream(DLQ_STREAM, declare=False), codec=Raw())
    async def dlq(body: bytes) -> None:
        parked.append((body, dict(current_message(broker).headers)))

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
    assert handled == []
    assert [body for body, _ in parked] == [
        b'{"type": "email_composed"}',
        encode(opened),
    ]
    reasons = [headers["Mailfold-Error"] for _, headers in parked]
    assert "not a valid event" in reasons[0]
    assert reasons[1] == "expected email_composed, got email_opened"
    assert all(headers["Mailfold-Consumer"] == "sender" for _, headers in parked)
