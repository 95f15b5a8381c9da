"""One delivery loop per enabled endpoint, each on the endpoint's own durable consumer.

A slow or dead endpoint only ever holds its own loop's slots: every other endpoint (of any org)
has its own consumer, fetches and in-flight attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final

import msgspec
from nats.aio.msg import Msg

from mailfold.runtime.logging import get_logger
from mailfold.webhooks import metrics
from mailfold.webhooks.adapters.jobs import JobQueue, attempt_number, decode_job
from mailfold.webhooks.adapters.kv import Endpoints
from mailfold.webhooks.domain.endpoints import Endpoint
from mailfold.webhooks.domain.retries import Outcome
from mailfold.webhooks.service_layer.delivery import Action, Deliverer, Settlement
from mailfold.webhooks.service_layer.ports import DeliveryStore

log = get_logger(__name__)

FETCH_WAIT_S: Final = 1.0
RESTART_DELAY_S: Final = 1.0
IN_PROGRESS_AFTER_S: Final = 1.0
SETTLE_LINGER_S: Final = 0.005
HOLD_S: Final = 60.0  # a disabled endpoint's job is looked at again after this


class Settler:
    """Stores delivery records a batch at a time (one NATS round trip), then settles their jobs.

    A job is never acked without its record: one whose record was not stored stays unacked and
    comes back after ack_wait. Workers hand attempts over and go on with the next job.
    """

    def __init__(self, deliveries: DeliveryStore) -> None:
        self._deliveries = deliveries
        self._pending: list[tuple[Msg, Settlement]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start settling on the running loop."""
        self._task = asyncio.create_task(self._run(), name="webhook-settler")

    def settle(self, message: Msg, settlement: Settlement) -> None:
        """Settle this attempt's job with the next batch."""
        self._pending.append((message, settlement))
        self._wake.set()

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Settle what is pending (bounded), then stop; what is left comes back after ack_wait."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, timeout_s)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if not self._closing:
                # Attempts ending meanwhile join this batch.
                await asyncio.sleep(SETTLE_LINGER_S)
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                try:
                    await self._settle(batch)
                except Exception:  # never ends the task: the jobs come back after ack_wait
                    log.exception("settling failed", jobs=len(batch))
            if self._closing and not self._pending:
                return

    async def _settle(self, batch: list[tuple[Msg, Settlement]]) -> None:
        records = [s.delivery for _, s in batch if s.delivery is not None]
        stored = await asyncio.gather(*map(self._deliveries.put, records), return_exceptions=True)
        lost = {id(d) for d, error in zip(records, stored, strict=True) if error is not None}
        for message, settlement in batch:
            delivery = settlement.delivery
            if delivery is not None and id(delivery) in lost:
                log.error(
                    "record not stored", event_id=delivery.event_id, email_id=delivery.email_id
                )
                continue
            try:
                if settlement.action is Action.RETRY:
                    await message.nak(delay=settlement.delay_s)
                elif settlement.action is Action.HOLD:
                    await message.nak(delay=HOLD_S)
                else:
                    await message.ack()
            except Exception as exc:
                log.error("job not settled; it comes back", error=str(exc))
                continue
            if delivery is not None:
                last = delivery.history[-1]
                metrics.ATTEMPTS.labels(str(last.outcome)).inc()
                metrics.LATENCY.observe(last.latency_ms / 1000)
                if last.outcome is not Outcome.RETRYING:
                    metrics.DELIVERIES.labels(str(last.outcome)).inc()


class Workers:
    """Starts and stops the endpoints' delivery loops as endpoints come, change and go."""

    def __init__(
        self,
        endpoints: Endpoints,
        queue: JobQueue,
        deliverer: Deliverer,
        settler: Settler,
        *,
        concurrency: int,
    ) -> None:
        self._endpoints = endpoints
        self._queue = queue
        self._deliverer = deliverer
        self._settler = settler
        self._concurrency = concurrency
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._running = False

    def start(self) -> None:
        """Deliver to every enabled endpoint, and follow changes."""
        self._running = True
        self._settler.start()
        self._endpoints.on_change(self._changed)
        for endpoint in self._endpoints.all():
            self._changed(endpoint.endpoint_id, endpoint)

    def _changed(self, endpoint_id: str, endpoint: Endpoint | None) -> None:
        if not self._running:
            return
        task = self._loops.get(endpoint_id)
        wanted = endpoint is not None and endpoint.enabled
        if wanted and (task is None or task.done()):
            assert endpoint is not None
            self._loops[endpoint_id] = asyncio.create_task(
                self._run(endpoint.org_id, endpoint_id), name=f"webhook-{endpoint_id}"
            )
        elif not wanted and task is not None:
            task.cancel()
            del self._loops[endpoint_id]
        metrics.WORKERS.set(len(self._loops))

    def endpoint_ids(self) -> list[str]:
        """Endpoints this copy delivers to."""
        return list(self._loops)

    async def stop(self) -> None:
        """Stop every loop; attempts in flight are abandoned and redelivered later (at-least-once)."""
        self._running = False
        tasks = list(self._loops.values())
        self._loops.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._settler.stop()

    async def _run(self, org_id: str, endpoint_id: str) -> None:
        while True:
            try:
                await self._loop(org_id, endpoint_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("delivery loop failed; restarting", endpoint_id=endpoint_id)
                await asyncio.sleep(RESTART_DELAY_S)

    async def _loop(self, org_id: str, endpoint_id: str) -> None:
        """`concurrency` workers, fed by one fetcher that keeps up to as many jobs ready.

        The fetch for the next jobs overlaps the attempts in flight, so a pull request's round
        trip is not on each delivery's path, and it asks for jobs once half the buffer is free,
        not for each job. A job waits in the buffer at most one attempt.
        """
        sub = await self._queue.subscribe(org_id, endpoint_id)
        ready: asyncio.Queue[tuple[float, Msg]] = asyncio.Queue()
        room = asyncio.Semaphore(self._concurrency)
        workers = [asyncio.create_task(self._work(ready, room)) for _ in range(self._concurrency)]
        # Refill once half the buffer is free: one pull request brings several jobs.
        refill = max(1, self._concurrency // 2)
        try:
            while True:
                for _ in range(refill):
                    await room.acquire()
                free = refill
                while free < self._concurrency and not room.locked():
                    await room.acquire()
                    free += 1
                try:
                    messages = await sub.fetch(free, timeout=FETCH_WAIT_S)
                except TimeoutError:
                    messages = []
                now = time.monotonic()
                for message in messages:
                    ready.put_nowait((now, message))
                for _ in range(free - len(messages)):
                    room.release()
        finally:
            for task in workers:
                task.cancel()
            for task in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _work(self, ready: asyncio.Queue[tuple[float, Msg]], room: asyncio.Semaphore) -> None:
        while True:
            fetched_at, message = await ready.get()
            room.release()
            if time.monotonic() - fetched_at > IN_PROGRESS_AFTER_S:
                # It waited behind slow attempts: restart its ack_wait before this attempt.
                with contextlib.suppress(Exception):
                    await message.in_progress()
            await self._one(message)

    async def _one(self, message: Msg) -> None:
        try:
            try:
                job = decode_job(message.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.error("unreadable delivery job dropped", subject=message.subject)
                await message.term()
                return
            settlement = await self._deliverer.attempt(job, attempt_number(message))
            # Settled off this worker's path (a 410 that disables the endpoint stops this very
            # loop; the attempt that did it is still recorded and settled).
            self._settler.settle(message, settlement)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The job stays unacked: JetStream hands it out again after ack_wait.
            log.exception("delivery attempt failed", subject=message.subject)

    async def measure_backlog(self) -> None:
        """Set the backlog gauges from the consumers of every known endpoint."""
        sizes = [await self._queue.backlog(e.endpoint_id) for e in self._endpoints.all()]
        metrics.BACKLOG.set(sum(sizes))
        metrics.BACKLOG_MAX.set(max(sizes, default=0))
        metrics.BACKLOG_ENDPOINTS.set(sum(1 for s in sizes if s))
