"""Publishing off the request path: a bounded buffer drained to JetStream by one background task.

Requests only `offer` an event. The task takes what is buffered in batches, publishes each batch
concurrently, and keeps whatever failed for the next round after a backoff, so a NATS restart
costs a delay, not events. A retried publish carries the same Nats-Msg-Id, so JetStream stores
an event once even when only the acknowledgement was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Final

from mailfold.events import Event
from mailfold.runtime.logging import get_logger
from mailfold.tracker.metrics import BACKLOG, EVENTS_DROPPED, EVENTS_PUBLISHED, PUBLISH_FAILURES

# Publish a batch; one outcome per event, in order: None when stored, else the error.
PublishBatch = Callable[[list[Event]], Awaitable[list[BaseException | None]]]

DEFAULT_BATCH: Final = 512
DEFAULT_LINGER_S: Final = 0.005
DROP_LOG_INTERVAL_S: Final = 1.0

log = get_logger(__name__)


class BufferedPublisher:
    """A bounded buffer of events and the task that publishes them."""

    def __init__(
        self,
        publish_batch: PublishBatch,
        *,
        capacity: int,
        batch: int = DEFAULT_BATCH,
        linger_s: float = DEFAULT_LINGER_S,
        backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publish_batch = publish_batch
        self.capacity = capacity
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=capacity)
        self._batch = batch
        self._linger_s = linger_s
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._monotonic = monotonic
        self._pending = 0
        self._in_flight: list[Event] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._drained = asyncio.Event()
        self._drained.set()
        self._unlogged_drops = 0
        self._last_drop_log = -math.inf

    @property
    def backlog(self) -> int:
        """Events accepted and not yet acknowledged."""
        return self._pending

    @property
    def running(self) -> bool:
        """Whether the publishing task is alive."""
        return self._task is not None and not self._task.done()

    def offer(self, event: Event) -> bool:
        """Buffer an event for publishing; False (counted and logged) when it cannot be kept."""
        if self._closed:
            self._drop(event, "stopped")
            return False
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._drop(event, "buffer_full")
            return False
        self._pending += 1
        self._drained.clear()
        BACKLOG.inc()
        return True

    def _drop(self, event: Event, reason: str) -> None:
        EVENTS_DROPPED.labels(reason).inc()
        self._unlogged_drops += 1
        now = self._monotonic()
        # One line a second while dropping: every drop is counted, the log is not flooded.
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            log.error(
                "event dropped",
                reason=reason,
                email_id=event.email_id,
                event_id=event.event_id,
                event_type=event.event_type,
                dropped=self._unlogged_drops,
                capacity=self.capacity,
            )
            self._unlogged_drops = 0
            self._last_drop_log = now

    def start(self) -> None:
        """Start the publishing task on the running loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tracker-publisher")

    async def _run(self) -> None:
        retry: list[Event] = []
        delay = self._backoff_s
        while True:
            batch = retry
            if not batch:
                batch = self._in_flight = [await self._queue.get()]
                # Under load a short linger turns one publish round per request into one per
                # many; when idle it only delays publishing by that much.
                if self._linger_s and self._queue.qsize() < self._batch:
                    await asyncio.sleep(self._linger_s)
            while len(batch) < self._batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._in_flight = batch
            try:
                outcomes = await self._publish_batch(batch)
            except Exception as exc:  # a fault in publishing must not end the task: retry all
                outcomes = [exc] * len(batch)
            retry = [event for event, error in zip(batch, outcomes, strict=True) if error]
            done = len(batch) - len(retry)
            self._pending -= done
            self._in_flight = retry
            if not self._pending:
                self._drained.set()
            BACKLOG.dec(done)
            EVENTS_PUBLISHED.inc(done)
            if not retry:
                delay = self._backoff_s
                continue
            PUBLISH_FAILURES.inc(len(retry))
            log.warning(
                "publish failed, retrying",
                failed=len(retry),
                backlog=self._pending,
                retry_in_s=delay,
                error=repr(next(error for error in outcomes if error)),
                email_id=retry[0].email_id,
                event_id=retry[0].event_id,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_backoff_s)

    async def stop(self, timeout: float) -> int:
        """Publish what is buffered, waiting at most `timeout` seconds; returns events abandoned."""
        self._closed = True
        if self._pending and self._task is not None:
            drained = asyncio.ensure_future(self._drained.wait())
            await asyncio.wait(
                {drained, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            drained.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drained
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("publisher task had failed")
            self._task = None
        abandoned = list(self._in_flight)
        self._in_flight = []
        while not self._queue.empty():
            abandoned.append(self._queue.get_nowait())
        if abandoned:
            self._pending -= len(abandoned)
            BACKLOG.dec(len(abandoned))
            EVENTS_DROPPED.labels("shutdown").inc(len(abandoned))
            log.error(
                "events not published before stopping",
                abandoned=len(abandoned),
                timeout_s=timeout,
                event_ids=[event.event_id for event in abandoned[:20]],
            )
        if self._unlogged_drops:
            log.error("events dropped", dropped=self._unlogged_drops, capacity=self.capacity)
            self._unlogged_drops = 0
        return len(abandoned)
