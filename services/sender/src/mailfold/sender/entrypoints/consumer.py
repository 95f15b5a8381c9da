"""The durable pull consumer `sender`: decode EmailComposed, call the handler, ack or retry later.

Every sender copy binds the same durable consumer, so JetStream hands each email to one copy at a
time. A retry is a negative acknowledgement with a delay (`nak(delay=...)`): the stream keeps
the email and redelivers it when due, to whichever copy is running then, across restarts.
While an email is being handled its acknowledgement deadline is pushed back (`in_progress`), so
a slow server does not get the email handed to a second copy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from mailfold.events import STREAM, EmailComposed, decode, dlq_subject, subject_for
from mailfold.sender import metrics
from mailfold.sender.service_layer.handlers import Disposition, Done

Handle = Callable[[EmailComposed, bool], Awaitable[Disposition]]

FILTER_SUBJECT: Final = subject_for("*", "email_composed")
_FETCH_TIMEOUT: Final = 1.0
_MAX_BATCH: Final = 64
_COALESCE_S: Final = 0.002
_ERROR_DELAY_CAP: Final = 300.0
log = structlog.get_logger("mailfold.sender")


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


class ComposedConsumer:
    """Pulls EmailComposed and runs up to `concurrency` handlers at once."""

    def __init__(
        self,
        js: JetStreamContext,
        handle: Handle,
        *,
        durable: str,
        concurrency: int,
        ack_wait: float,
        max_pending: int,
    ) -> None:
        self._js = js
        self._handle = handle
        self._durable = durable
        self._concurrency = concurrency
        self._ack_wait = ack_wait
        self._max_pending = max_pending
        self._tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._room.set()
        self._loop: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._working: dict[int, tuple[Msg, float]] = {}  # messages (not hashable) by id
        self._stopping = False
        self._sub: JetStreamContext.PullSubscription | None = None

    @property
    def alive(self) -> bool:
        """True while the fetch loop runs."""
        return self._loop is not None and not self._loop.done()

    async def start(self) -> None:
        """Create or update the durable consumer, bind it, start pulling."""
        config = consumer_config(
            self._durable, ack_wait=self._ack_wait, max_pending=self._max_pending
        )
        await self._js.add_consumer(STREAM, config)
        self._sub = await self._js.pull_subscribe_bind(self._durable, stream=STREAM)
        self._loop = asyncio.create_task(self._run(), name="sender-consumer")
        self._heartbeat = asyncio.create_task(self._keep_alive(), name="sender-heartbeat")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop pulling, give in-flight emails `grace` seconds, cancel the rest (redelivered)."""
        self._stopping = True
        self._room.set()
        if self._loop is not None:
            # Not cancelled: the NATS client turns a cancelled fetch into a timeout. The loop
            # sees the flag within one fetch timeout.
            done, _ = await asyncio.wait({self._loop}, timeout=_FETCH_TIMEOUT + 5)
            if not done:
                self._loop.cancel()
                with contextlib.suppress(BaseException):
                    await self._loop
            self._loop = None
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _run(self) -> None:
        assert self._sub is not None
        gather_room = max(1, self._concurrency // 4)
        while True:
            await self._room.wait()
            if self._stopping:
                return
            if self._concurrency - len(self._tasks) < gather_room:
                # Busy: let a few more emails finish so one pull fetches several.
                await asyncio.sleep(_COALESCE_S)
            free = max(1, self._concurrency - len(self._tasks))
            try:
                msgs = await self._sub.fetch(batch=min(free, _MAX_BATCH), timeout=_FETCH_TIMEOUT)
            except (TimeoutError, nats.errors.TimeoutError):
                continue  # nothing to do right now (the client raises either kind)
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError):
                await asyncio.sleep(0.5)
                continue
            except Exception as exc:  # the loop must outlive any client error
                log.warning("fetch failed", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                task = asyncio.create_task(self._one(msg))
                self._tasks.add(task)
                task.add_done_callback(self._finished)
            if len(self._tasks) >= self._concurrency:
                self._room.clear()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._room.set()

    async def _keep_alive(self) -> None:
        """Push back the acknowledgement deadline of every email handled for a while."""
        interval = max(0.2, self._ack_wait / 3)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval / 2)
            now = loop.time()
            for key, (msg, since) in list(self._working.items()):
                if now - since >= interval and key in self._working:
                    self._working[key] = (msg, now)
                    with contextlib.suppress(nats.errors.Error):
                        await msg.in_progress()

    async def _one(self, msg: Msg) -> None:
        metrics.IN_FLIGHT.inc()
        self._working[id(msg)] = (msg, asyncio.get_running_loop().time())
        try:
            await self._process(msg)
        except asyncio.CancelledError:
            # Stopping mid-email: leave it unacknowledged, it comes back to the next sender.
            raise
        except Exception:
            log.exception("could not settle a message")
        finally:
            self._working.pop(id(msg), None)
            metrics.IN_FLIGHT.dec()

    async def _process(self, msg: Msg) -> None:
        try:
            event = decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            await self._dead_letter(msg, f"not a valid event: {exc}")
            return
        if not isinstance(event, EmailComposed):
            await self._dead_letter(msg, f"expected email_composed, got {event.event_type}")
            return
        deliveries = msg.metadata.num_delivered
        with structlog.contextvars.bound_contextvars(
            email_id=event.email_id, event_id=event.event_id, org_id=event.org_id
        ):
            try:
                outcome = await self._handle(event, deliveries > 1)
            except Exception:
                delay = error_delay(deliveries)
                log.exception("handling failed; will retry", delay_s=delay, deliveries=deliveries)
                metrics.HANDLED.labels("error").inc()
                await msg.nak(delay=delay)
                return
            if isinstance(outcome, Done):
                metrics.HANDLED.labels("done").inc()
                await msg.ack()
            else:
                metrics.HANDLED.labels("retry").inc()
                log.info("retry scheduled", delay_s=round(outcome.delay_s, 3))
                # A zero delay would redeliver at once; JetStream needs a positive one to wait.
                await msg.nak(delay=max(outcome.delay_s, 0.001))

    async def _dead_letter(self, msg: Msg, error: str) -> None:
        """Park a message no sender can use in MAIL_DLQ, with why, then let it go."""
        meta = msg.metadata
        # The headers every mailfold consumer puts on its dead letters.
        headers = {
            "Mailfold-Error": " ".join(error.split())[:1000],
            "Mailfold-Consumer": self._durable,
            "Mailfold-Subject": msg.subject,
            "Mailfold-Stream": STREAM,
            "Mailfold-Stream-Seq": str(meta.sequence.stream),
            "Nats-Msg-Id": f"dlq-{self._durable}-{meta.sequence.stream}",
        }
        await self._js.publish(dlq_subject(self._durable), msg.data, headers=headers)
        metrics.HANDLED.labels("dlq").inc()
        log.error("message sent to the dead-letter queue", error=error, subject=msg.subject)
        await msg.ack()
