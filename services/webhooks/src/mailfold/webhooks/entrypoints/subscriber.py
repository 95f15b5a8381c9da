"""The MAIL_EVENTS subscriber: a FastStream JetStream pull subscriber, in batches, durable."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final

from faststream import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub
from faststream.nats.subscriber.usecases.stream_pull_subscriber import BatchPullStreamSubscriber
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from mailfold.events import AnyEvent
from mailfold.events.subjects import STREAM_SUBJECTS
from mailfold.runtime.broker import EVENTS_STREAM, Poison, current_message, dead_letter, documented
from mailfold.webhooks.adapters.jobs import JOBS_STREAM, job_subject
from mailfold.webhooks.domain.deliveries import Job
from mailfold.webhooks.service_layer.fanout import Stored

DURABLE: Final = "webhooks"

Handle = Callable[[Sequence[Stored], Sequence[Msg]], Awaitable[None]]

if TYPE_CHECKING:
    Events = list[AnyEvent | Poison]
else:
    Events = list[documented(AnyEvent)]  # what the AsyncAPI document says arrives


def declare(
    broker: NatsBroker,
    handle: Handle,
    *,
    batch_size: int,
    batch_timeout_s: float,
    ack_wait_s: float,
) -> BatchPullStreamSubscriber:
    """Declare the fan-out's subscriber and the jobs it publishes on the broker (before it starts).

    Every copy of the service shares the durable consumer. Its events are acknowledged one by
    one by `handle` (MANUAL), each once its jobs are settled (`first.FirstAttempts`); an event
    not acknowledged (an error, a crash) comes back after ack_wait, nothing is lost. Retries go
    out through JetStream's asynchronous publish (`JobQueue`); the publisher is declared for the
    AsyncAPI document.
    """
    subscriber = broker.subscriber(
        STREAM_SUBJECTS[0],
        stream=EVENTS_STREAM,
        durable=DURABLE,
        pull_sub=PullSub(batch_size=batch_size, timeout=batch_timeout_s, batch=True),
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait_s,
            max_ack_pending=batch_size * 8,
        ),
        ack_policy=AckPolicy.MANUAL,
        title=f"webhooks:{DURABLE}",
        description="Every event, folded per email, queued once per endpoint that wants it.",
    )

    @subscriber
    async def on_events(events: Events) -> None:
        raw: list[Msg] = current_message(broker).raw_message  # type: ignore[assignment]
        batch = [
            Stored(
                seq=int(m.metadata.sequence.stream),
                data=m.data,
                event=None if isinstance(e, Poison) else e,
                problem=str(e) if isinstance(e, Poison) else "",
            )
            for m, e in zip(raw, events, strict=True)
        ]
        await handle(batch, raw)

    broker.publisher(
        job_subject("*", "*"),
        stream=JStream(JOBS_STREAM, declare=False),  # created by JobQueue.ensure
        title="webhooks:jobs",
        description="A delivery job per (event, endpoint), MessagePack, the signed body computed "
        "once; each endpoint's own durable consumer (`webhook_<endpoint>`) delivers them.",
        schema=documented(Job),
    )
    return subscriber


def dead_letters(broker: NatsBroker) -> Callable[[Stored, str], Awaitable[None]]:
    """Park an event of the batch being handled in MAIL_DLQ with the reason (the shared way)."""

    async def park(message: Stored, reason: str) -> None:
        raw: list[Msg] = current_message(broker).raw_message  # type: ignore[assignment]
        found = next(m for m in raw if int(m.metadata.sequence.stream) == message.seq)
        await dead_letter(broker, found, reason, consumer=DURABLE)

    return park
