"""First attempts made straight from the fan-out; only what fails (or cannot start) is queued.

Every event's jobs are attempted at once, each in its endpoint's lane: `concurrency` attempts
in flight per endpoint and per copy (shared with the endpoint's retry loop), and as many
waiting for a slot. A lane that cannot start an attempt within `wait_s` is congested: its jobs
go to WEBHOOK_JOBS, where the endpoint's own loop delivers them at its pace, until one of its
attempts delivers again. So a slow or dead endpoint holds at most its own slots and the
fan-out waits for it at most `wait_s` once; every other endpoint keeps its pace.

An event is acknowledged once each of its jobs is settled: delivered or failed for good (its
record stored), or stored in WEBHOOK_JOBS for a retry. Until then it stays unacknowledged in
MAIL_EVENTS, so a crash before that hands it out again (at least once, same webhook-id).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import msgspec
from nats.aio.msg import Msg

from mailfold.runtime.logging import get_logger
from mailfold.webhooks import metrics
from mailfold.webhooks.domain.deliveries import Job
from mailfold.webhooks.domain.retries import Outcome
from mailfold.webhooks.service_layer.delivery import Action, Deliverer, Settlement
from mailfold.webhooks.service_layer.fanout import Fanout, Stored, job_msg_id
from mailfold.webhooks.service_layer.ports import EndpointStore, Queue

from .settler import Settler

log = get_logger(__name__)

SLOT_WAIT_S: Final = 1.0
ENQUEUE_TIMEOUT_S: Final = 10.0


class Lane:
    """One endpoint's attempts on this copy: the slots, the jobs waiting for one, congestion."""

    def __init__(self, concurrency: int) -> None:
        self.slots = asyncio.Semaphore(concurrency)
        self.bound = concurrency  # jobs waiting for a slot
        self.waiting = 0
        self.busy = 0
        self.congested = False
        self.room = asyncio.Event()

    async def acquire(self) -> None:
        """Take a slot (wait for one)."""
        await self.slots.acquire()
        self.busy += 1

    def release(self) -> None:
        """Give the slot back."""
        self.busy -= 1
        self.slots.release()

    def pending(self) -> int:
        """First attempts in flight or waiting for a slot on this copy."""
        return self.waiting + self.busy


class Lanes:
    """The lanes of every endpoint this copy delivers to (made on first use)."""

    def __init__(self, concurrency: int) -> None:
        self._concurrency = concurrency
        self._lanes: dict[str, Lane] = {}

    def __getitem__(self, endpoint_id: str) -> Lane:
        lane = self._lanes.get(endpoint_id)
        if lane is None:
            lane = self._lanes[endpoint_id] = Lane(self._concurrency)
        return lane

    def wake(self) -> None:
        """Wake every job waiting for room (to be offered again)."""
        for lane in self._lanes.values():
            lane.room.set()

    def drop(self, endpoint_id: str) -> None:
        """Forget a deleted endpoint's lane (attempts in flight keep theirs)."""
        self._lanes.pop(endpoint_id, None)


class _Event:
    """One event of MAIL_EVENTS waiting for its jobs: acknowledged when the last one settles.

    A job given back (the service is stopping before its attempt started) puts the event in
    `handed_back` once the others settle, to be sent back at once (nak) when the fan-out no
    longer fetches; a job that failed leaves it to come back after ack_wait.
    """

    __slots__ = ("_back", "_handed_back", "_left", "_message", "_ok")

    def __init__(self, message: Msg, jobs: int, handed_back: list[Msg]) -> None:
        self._message = message
        self._left = jobs
        self._ok = True
        self._back = False
        self._handed_back = handed_back

    async def done(self, ok: bool) -> None:
        self._ok = self._ok and ok
        self._left -= 1
        if self._left > 0:
            return
        if self._ok:
            await self._message.ack()
        elif self._back:
            self._handed_back.append(self._message)
        else:
            log.warning(
                "event not settled; it comes back after ack_wait", subject=self._message.subject
            )

    async def back(self) -> None:
        """The job was not attempted: hand the event back (its delivered jobs repeat, same id)."""
        self._back = True
        await self.done(False)


class FirstAttempts:
    """The fan-out's handler: fold, build the jobs, attempt each, acknowledge the events."""

    def __init__(
        self,
        fanout: Fanout,
        endpoints: EndpointStore,
        deliverer: Deliverer,
        settler: Settler,
        queue: Queue,
        lanes: Lanes,
        *,
        wait_s: float = SLOT_WAIT_S,
    ) -> None:
        self._fanout = fanout
        self._endpoints = endpoints
        self._deliverer = deliverer
        self._settler = settler
        self._queue = queue
        self._lanes = lanes
        self._wait_s = wait_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: set[asyncio.Task[None]] = set()  # first attempts not holding a slot yet
        self._handed_back: list[Msg] = []  # events to send back once nothing is fetched
        self._closing = False

    async def on_batch(self, batch: Sequence[Stored], raw: Sequence[Msg]) -> None:
        """Handle one batch of MAIL_EVENTS; each event is acknowledged when its jobs settle."""
        by_seq = {int(m.metadata.sequence.stream): m for m in raw}
        handled = await self._fanout.handle(batch)  # raises: the batch comes back (not acked)
        jobs: list[tuple[Job, _Event]] = []
        for stored, wanted in handled:
            message = by_seq[stored.seq]
            if not wanted:
                await message.ack()
                continue
            event = _Event(message, len(wanted), self._handed_back)
            jobs.extend((job, event) for job in wanted)
        # Jobs whose lane has room start now; the others wait for room, after every other
        # endpoint's jobs of the batch started, and an endpoint's later jobs wait behind them.
        later: list[tuple[Job, _Event]] = []
        full: set[str] = set()
        for job, event in jobs:
            if job.endpoint_id in full or not self._offer(job, event):
                full.add(job.endpoint_id)
                later.append((job, event))
        placed = 0
        try:
            for job, event in later:
                await self._place(job, event)
                placed += 1
        except asyncio.CancelledError:
            for _, event in later[placed:]:  # the subscriber stopped: hand back what is left
                await event.back()
            raise

    def close(self) -> None:
        """Start no attempt from now on: the jobs of events still arriving are given back.

        Call `stop` once the fan-out fetches no more: a nak while it still fetches would hand
        the event to this very copy's pull request.
        """
        self._closing = True
        self._lanes.wake()  # jobs waiting for room are offered again, and given back

    async def stop(self, grace_s: float = 0.0) -> None:
        """Give back the jobs waiting for a slot, let the attempts in flight finish for up to
        `grace_s` (their records go to the settler), abandon the rest (their events come back
        after ack_wait), and send every event given back to the stream at once (nak)."""
        self.close()
        await asyncio.sleep(0)  # every attempt spawned so far has started (and can be cancelled)
        for task in list(self._waiting):
            task.cancel()
        pending = list(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=grace_s)
        left = [task for task in pending if not task.done()]
        for task in left:
            task.cancel()
        for task in left:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if left:
            log.warning("attempts abandoned at stop; their events come back", attempts=len(left))
        await self.hand_back()

    async def hand_back(self) -> None:
        """Send the events given back so far to the stream (nak). Called again once the settler
        stopped: an event whose other jobs were settling is given back only then."""
        back, self._handed_back[:] = list(self._handed_back), []
        for message in back:
            with contextlib.suppress(Exception):  # not sent back: it comes after ack_wait
                await message.nak()
        if back:
            log.info("events handed back at stop", events=len(back))

    def _spawn(self, coroutine: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _offer(self, job: Job, event: _Event) -> bool:
        """Start the job's first attempt, or queue it; False when its lane has no room now."""
        if self._closing:
            self._spawn(event.back())
            return True
        endpoint = self._endpoints.get(job.org_id, job.endpoint_id)
        lane = self._lanes[job.endpoint_id]
        if endpoint is None or not endpoint.enabled or lane.congested:
            self._spawn(self._queued(job, event))
            return True
        if lane.waiting >= lane.bound:
            return False
        lane.waiting += 1
        task = self._spawn(self._first(lane, job, event))
        self._waiting.add(task)
        return True

    async def _place(self, job: Job, event: _Event) -> None:
        """Offer the job until its lane has room, for at most wait_s; then its lane is congested."""
        lane = self._lanes[job.endpoint_id]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_s
        while True:
            lane.room.clear()
            if self._offer(job, event):
                return
            left = deadline - loop.time()
            if left <= 0:
                lane.congested = True
                self._spawn(self._queued(job, event))
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await lane.room.wait()

    async def _first(self, lane: Lane, job: Job, event: _Event) -> None:
        try:
            try:
                async with asyncio.timeout(self._wait_s):  # a timer, not a task (wait_for)
                    await lane.acquire()
            except TimeoutError:
                lane.congested = True
                await self._queued(job, event)
                return
            except asyncio.CancelledError:
                await event.back()  # stopping: not attempted, the event comes back at once
                raise
        finally:
            current = asyncio.current_task()
            if current is not None:
                self._waiting.discard(current)
            lane.waiting -= 1
            lane.room.set()
        try:
            settlement = await self._deliverer.attempt(job, 1)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery attempt failed", event_id=job.event_id, email_id=job.email_id)
            await event.done(False)
            return
        finally:
            lane.release()
        metrics.FIRST_ATTEMPTS.inc()
        if settlement.delivery is not None and settlement.delivery.outcome is Outcome.DELIVERED:
            lane.congested = False

        async def finish(settled: Settlement) -> None:
            await self._finish(job, settled)
            await event.done(True)

        async def failed() -> None:
            await event.done(False)

        self._settler.settle(settlement, finish, failed)

    async def _finish(self, job: Job, settlement: Settlement) -> None:
        """After the record is stored: a retry or a held job goes to WEBHOOK_JOBS."""
        if settlement.action is Action.RETRY:
            due = datetime.now(UTC) + timedelta(seconds=settlement.delay_s)
            await self._enqueue(msgspec.structs.replace(job, attempts_made=1, not_before=due))
        elif settlement.action is Action.HOLD:
            await self._enqueue(job)

    async def _queued(self, job: Job, event: _Event) -> None:
        try:
            await self._enqueue(job)
        except Exception as exc:
            log.error(
                "job not queued", event_id=job.event_id, email_id=job.email_id, error=str(exc)
            )
            await event.done(False)
            return
        await event.done(True)

    async def _enqueue(self, job: Job) -> None:
        future = await self._queue.start_enqueue(job, job_msg_id(job.endpoint_id, job.event_id))
        async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
            await future
        metrics.ENQUEUED.inc()
