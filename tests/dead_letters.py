"""In-memory brokers' dead letters (TestNatsBroker): what a consumer parked, bytes and headers."""

from __future__ import annotations

from typing import Any

from faststream import StreamMessage
from faststream.nats import JStream, NatsBroker

from mailfold.events import DLQ_STREAM
from mailfold.runtime.broker import current_message


class Raw:
    """Dead letters are read as the bytes that arrived."""

    async def decode(self, msg: StreamMessage[Any]) -> Any:
        return msg.body

    async def encode(self, msg: Any, serializer: Any = None) -> tuple[bytes, str | None]:
        return msg, None


def collect_dead_letters(
    broker: NatsBroker, subject: str = "mail.dlq.>"
) -> list[tuple[bytes, dict[str, str]]]:
    """A list that fills with (body, headers) of every message parked on `subject`; declare it
    before the broker starts."""
    parked: list[tuple[bytes, dict[str, str]]] = []

    @broker.subscriber(subject, stream=JStream(DLQ_STREAM, declare=False), codec=Raw())
    async def dlq(body: bytes) -> None:
        parked.append((body, dict(current_message(broker).headers)))

    return parked
