"""The MAIL_EVENTS subscriber: a FastStream JetStream pull subscriber, in batches, durable."""

from __future__ import annotations

from typing import Annotated, Any, Final

import nats.errors
from faststream import AckPolicy, Context
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub
from faststream.nats.message import NatsBatchMessage
from faststream.nats.subscriber.usecases.stream_pull_subscriber import BatchPullStreamSubscriber
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from mailfold.events.subjects import STREAM, STREAM_SUBJECTS
from mailfold.webhooks import metrics
from mailfold.webhooks.service_layer.fanout import Fanout, Stored

DURABLE: Final = "webhooks"


def subscribe(
    broker: NatsBroker,
    fanout: Fanout,
    *,
    batch_size: int,
    batch_timeout_s: float,
    ack_wait_s: float,
) -> BatchPullStreamSubscriber:
    """Declare the fan-out's subscriber on the broker (before it starts).

    Every copy of the service shares the durable consumer. A batch is acked after the fan-out
    stored every job of it; an error naks it for redelivery (NACK_ON_ERROR), nothing is lost.
    """
    subscriber = broker.subscriber(
        STREAM_SUBJECTS[0],
        stream=JStream(STREAM, declare=False),
        durable=DURABLE,
        pull_sub=PullSub(batch_size=batch_size, timeout=batch_timeout_s, batch=True),
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait_s,
            max_ack_pending=batch_size * 8,
        ),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title="webhooks fan-out",
        description="Every event, folded per email, queued once per endpoint that wants it.",
    )

    @subscriber
    async def on_events(message: Annotated[NatsBatchMessage, Context("message")]) -> None:
        batch = [
            Stored(seq=int(m.metadata.sequence.stream), data=m.data) for m in message.raw_message
        ]
        await fanout.handle(batch)
        metrics.EVENTS.labels("handled").inc(len(batch))

    return subscriber


def convert_fetch_timeouts(subscriber: BatchPullStreamSubscriber) -> None:
    """Work around FastStream 0.7.8's batch loop stopping on a timeout that nats-py raises.

    The loop catches `nats.errors.TimeoutError`, but nats-py's fetch raises the plain
    `asyncio.TimeoutError` when a partial batch's deadline runs out between its two requests.
    FastStream then restarts the task and the messages it had collected wait for `ack_wait`.
    The subscription's fetch is wrapped to raise the error the loop expects.
    """
    subscription = subscriber.subscription
    if subscription is None:
        return
    fetch = subscription.fetch

    async def converted(*args: Any, **kwargs: Any) -> list[Msg]:
        try:
            return await fetch(*args, **kwargs)
        except nats.errors.TimeoutError:
            raise
        except TimeoutError as exc:
            raise nats.errors.TimeoutError from exc

    subscription.fetch = converted  # type: ignore[method-assign]
