"""The sender's subscriber: EmailComposed from the shared durable `sender`, acked or retried later.

Every sender copy binds the same durable consumer, so JetStream hands each email to one copy at a
time. A retry is a negative acknowledgement with a delay (`nak(delay=...)`): the stream keeps
the email and redelivers it when due, to whichever copy is running then, across restarts.
While an email is being handled its acknowledgement deadline is pushed back (`in_progress`), so
a slow server does not get the email handed to a second copy. A message that is not an
EmailComposed goes to MAIL_DLQ with its reason (`runtime.broker.dead_letter`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import nats.errors
import structlog
from faststream.middlewares import AckPolicy as Ack
from faststream.nats import NatsBroker, PullSub
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from mailfold.events import AnyEvent, EmailComposed, subject_for
from mailfold.runtime.broker import (
    EVENTS_STREAM,
    Poison,
    current_message,
    dead_letter,
    deliveries,
    documented,
)
from mailfold.sender import metrics
from mailfold.sender.service_layer.handlers import Disposition, Done

Handle = Callable[[EmailComposed, bool], Awaitable[Disposition]]

FILTER_SUBJECT: Final = subject_for("*", "email_composed")
# A batch is filled for at most this long once its first email arrived (runtime.broker.tune_batch_fetch).
_BATCH_WAIT_S: Final = 0.05
_MAX_BATCH: Final = 64
_ERROR_DELAY_CAP: Final = 300.0
log = structlog.get_logger("mailfold.sender")

if TYPE_CHECKING:
    Composed = list[AnyEvent | Poison]  # a batch of whatever arrives on the subject; checked below
else:
    # What the AsyncAPI document says each message carries: one EmailComposed. The handler gets
    # them in batches, which is how this copy reads, not what a message is.
    Composed = documented(EmailComposed)


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


class Pool:
    """Runs up to `concurrency` handlers at once, each settling its own message.

    FastStream's batch subscriber fetches; `take` waits for a free slot before it returns, so a
    full pool stops the fetching. One task pushes back the acknowledgement deadline of every
    message held (waiting for a slot or being handled) every `heartbeat` seconds, so a slow
    server does not get an email handed to a second copy.
    """

    def __init__(self, handle: Handle, *, concurrency: int, heartbeat: float) -> None:
        self._handle = handle
        self._slots = asyncio.Semaphore(concurrency)
        self._heartbeat = heartbeat
        self._held: dict[int, tuple[Msg, float]] = {}  # messages (not hashable) by id
        self._tasks: set[asyncio.Task[None]] = set()
        self._beat: asyncio.Task[None] | None = None
        self._closed = False

    async def take(self, raw: Msg, event: EmailComposed) -> None:
        """Hand `event` to a handler as soon as a slot is free; after `close`, give it back."""
        loop = asyncio.get_running_loop()
        key = id(raw)
        self._held[key] = (raw, loop.time())
        if self._beat is None:
            self._beat = asyncio.create_task(self._keep_alive(), name="sender-heartbeat")
        try:
            await self._slots.acquire()
        except BaseException:
            self._held.pop(key, None)
            raise
        if self._closed:
            self._slots.release()
            self._held.pop(key, None)
            with contextlib.suppress(nats.errors.Error):
                await raw.nak()  # to whichever copy is running, at once
            return
        task = loop.create_task(self._one(key, raw, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """Take no more work: what waits for a slot goes back to the stream."""
        self._closed = True

    async def drain(self, grace: float) -> None:
        """Give in-flight emails `grace` seconds, then cancel them (they are redelivered)."""
        self.close()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
            self._beat = None

    async def _one(self, key: int, raw: Msg, event: EmailComposed) -> None:
        metrics.IN_FLIGHT.inc()
        try:
            with structlog.contextvars.bound_contextvars(
                email_id=event.email_id, event_id=event.event_id, org_id=event.org_id
            ):
                await _settle(raw, self._handle, event, deliveries(raw))
        except asyncio.CancelledError:
            raise  # stopping mid-email: left unacknowledged, it comes back to the next sender
        except Exception:
            log.exception("could not settle a message", email_id=event.email_id)
        finally:
            self._held.pop(key, None)
            self._slots.release()
            metrics.IN_FLIGHT.dec()

    async def _keep_alive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._heartbeat / 2)
            now = loop.time()
            for key, (raw, since) in list(self._held.items()):
                if now - since >= self._heartbeat and key in self._held:
                    self._held[key] = (raw, now)
                    with contextlib.suppress(nats.errors.Error):
                        await raw.in_progress()


def subscribe(
    broker: NatsBroker,
    handle: Handle,
    *,
    durable: str,
    concurrency: int,
    ack_wait: float,
    max_pending: int,
) -> Pool:
    """Declare the `sender` subscriber on the broker; up to `concurrency` emails at once.

    Once the broker started, call `runtime.broker.tune_batch_fetch` on its subscribers.

    A batch subscriber, not one message per call: FastStream's per-message path costs about as
    much CPU as the rest of an email's handling (docs/decisions.md). Each message of a batch is
    still settled on its own, by its own handler.
    """
    pool = Pool(handle, concurrency=concurrency, heartbeat=max(0.2, ack_wait / 3))

    @broker.subscriber(
        FILTER_SUBJECT,
        stream=EVENTS_STREAM,
        durable=durable,
        config=consumer_config(durable, ack_wait=ack_wait, max_pending=max_pending),
        pull_sub=PullSub(
            batch_size=min(concurrency, _MAX_BATCH), timeout=_BATCH_WAIT_S, batch=True
        ),
        ack_policy=Ack.MANUAL,
        title="sender:email_composed",
        description="Delivers each composed email; retries are delayed negative acks.",
    )
    async def on_composed(events: Composed) -> None:
        raw: list[Msg] = current_message(broker).raw_message  # type: ignore[assignment]
        for msg, event in zip(raw, events, strict=True):
            if isinstance(event, Poison):
                await dead_letter(broker, msg, str(event), consumer=durable)
            elif not isinstance(event, EmailComposed):
                reason = f"expected email_composed, got {event.event_type}"
                await dead_letter(broker, msg, reason, consumer=durable)
            else:
                await pool.take(msg, event)

    return pool


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
