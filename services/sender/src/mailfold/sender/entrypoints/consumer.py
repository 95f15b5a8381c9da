"""The sender's subscriber: EmailComposed from the shared durable `sender`, acked or retried later.

Every sender copy binds the same durable consumer, so JetStream hands each email to one copy at a
time. A retry is a negative acknowledgement with a delay (`nak(delay=...)`): the stream keeps
the email and redelivers it when due, to whichever copy is running then, across restarts.
While an email is being handled its acknowledgement deadline is pushed back (`in_progress`), so
a slow server does not get the email handed to a second copy. A message that is not an
EmailComposed goes to MAIL_DLQ through the broker's dead-letter middleware.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import nats.errors
import structlog
from faststream.middlewares import AckPolicy as Ack
from faststream.nats import NatsBroker, PullSub
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from mailfold.events import AnyEvent, EmailComposed, subject_for
from mailfold.runtime.broker import EVENTS_STREAM, Poison, current_message, deliveries, documented
from mailfold.sender import metrics
from mailfold.sender.service_layer.handlers import Disposition, Done

Handle = Callable[[EmailComposed, bool], Awaitable[Disposition]]

FILTER_SUBJECT: Final = subject_for("*", "email_composed")
_FETCH_TIMEOUT: Final = 1.0
_MAX_BATCH: Final = 64
_ERROR_DELAY_CAP: Final = 300.0
log = structlog.get_logger("mailfold.sender")

if TYPE_CHECKING:
    Composed = AnyEvent  # whatever arrives on the subject; checked below
else:
    Composed = documented(EmailComposed)  # what the AsyncAPI document says arrives


def consumer_config(durable: str, *, ack_wait: float, max_pending: int) -> ConsumerConfig:
    """The shared durable pull consumer of every EmailComposed, never giving up on a message."""
    return ConsumerConfig(
        durable_name=durable,
        filter_subject=FILTER_SUBJECT,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=-1,
        max_ack_pending=max_pending,
    )


def error_delay(deliveries: int) -> float:
    """Backoff after a handler error (NATS or KV trouble): 1 s, doubling, at most 5 minutes."""
    return float(min(_ERROR_DELAY_CAP, 2 ** min(deliveries - 1, 16)))


@contextlib.asynccontextmanager
async def _kept_alive(raw: Msg, every: float) -> AsyncIterator[None]:
    """Push back the acknowledgement deadline every `every` seconds while the body runs."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(nats.errors.Error):
                await raw.in_progress()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def subscribe(
    broker: NatsBroker,
    handle: Handle,
    *,
    durable: str,
    concurrency: int,
    ack_wait: float,
    max_pending: int,
) -> Any:
    """Declare the `sender` subscriber on the broker; up to `concurrency` emails at once."""
    heartbeat = max(0.2, ack_wait / 3)

    @broker.subscriber(
        FILTER_SUBJECT,
        stream=EVENTS_STREAM,
        durable=durable,
        config=consumer_config(durable, ack_wait=ack_wait, max_pending=max_pending),
        pull_sub=PullSub(batch_size=min(concurrency, _MAX_BATCH), timeout=_FETCH_TIMEOUT),
        max_workers=concurrency,
        ack_policy=Ack.MANUAL,
        title="sender:email_composed",
        description="Delivers each composed email; retries are delayed negative acks.",
    )
    async def on_composed(event: Composed) -> None:
        if not isinstance(event, EmailComposed):
            raise Poison(f"expected email_composed, got {event.event_type}")
        msg = current_message(broker)
        count = deliveries(msg.raw_message)
        metrics.IN_FLIGHT.inc()
        try:
            with structlog.contextvars.bound_contextvars(
                email_id=event.email_id, event_id=event.event_id, org_id=event.org_id
            ):
                async with _kept_alive(msg.raw_message, heartbeat):
                    await _settle(msg.raw_message, handle, event, count)
        finally:
            metrics.IN_FLIGHT.dec()

    return on_composed


async def _settle(raw: Msg, handle: Handle, event: EmailComposed, count: int) -> None:
    try:
        outcome = await handle(event, count > 1)
    except Exception:
        delay = error_delay(count)
        log.exception("handling failed; will retry", delay_s=delay, deliveries=count)
        metrics.HANDLED.labels("error").inc()
        await raw.nak(delay=delay)
        return
    if isinstance(outcome, Done):
        metrics.HANDLED.labels("done").inc()
        await raw.ack()
    else:
        metrics.HANDLED.labels("retry").inc()
        log.info("retry scheduled", delay_s=round(outcome.delay_s, 3))
        # A zero delay would redeliver at once; JetStream needs a positive one to wait.
        await raw.nak(delay=max(outcome.delay_s, 0.001))
