"""One retry loop per enabled endpoint, each on the endpoint's own durable consumer.

First attempts are made by the fan-out (`first.py`); these loops deliver what WEBHOOK_JOBS
holds: retries, jobs of a congested endpoint, replays. A slow or dead endpoint only ever holds
its own slots (its lane, shared with its first attempts): every other endpoint (of any org) has
its own consumer, fetches and in-flight attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from faststream import AckPolicy
from faststream.message import StreamMessage
from faststream.nats import JStream, NatsBroker, PullSub
from nats.aio.msg import Msg

from mailfold.runtime.broker import EventCodec, dead_letter, tune_batch_fetch
from mailfold.runtime.logging import get_logger
from mailfold.webhooks import metrics
from mailfold.webhooks.adapters.jobs import (
    JOBS_STREAM,
    JobQueue,
    attempt_number,
    consumer_name,
    decode_job,
    job_subject,
    retry_delay,
)
from mailfold.webhooks.adapters.kv import Endpoints
from mailfold.webhooks.domain.endpoints import Endpoint
from mailfold.webhooks.domain.retries import Outcome
from mailfold.webhooks.service_layer.delivery import Action, Deliverer, Settlement

from .first import Lane, Lanes
from .settler import Settler
from .subscriber import DURABLE

log = get_logger(__name__)

FETCH_WAIT_S: Final = 1.0
RESTART_DELAY_S: Final = 1.0
IN_PROGRESS_AFTER_S: Final = 1.0
HOLD_S: Final = 60.0  # a disabled endpoint's job is looked at again after this


class RawJobs(EventCodec):
    """Hands a job's handler the nats-py message itself: it is decoded, attempted and settled
    (acked, or nakked with its own delay) by the loop; publishing stays the runtime's."""

    async def decode(self, msg: StreamMessage[Any]) -> Any:
        return msg.raw_message


RAW: Final = RawJobs()


class Workers:
    """Starts and stops the endpoints' delivery loops as endpoints come, change and go."""

    def __init__(
        self,
        endpoints: Endpoints,
        queue: JobQueue,
        deliverer: Deliverer,
        settler: Settler,
        lanes: Lanes,
        *,
        concurrency: int,
        broker: NatsBroker,
    ) -> None:
        self._endpoints = endpoints
        self._queue = queue
        self._deliverer = deliverer
        self._settler = settler
        self._lanes = lanes
        self._concurrency = concurrency
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._running = False
        self._broker = broker

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
        if endpoint is None:
            self._lanes.drop(endpoint_id)
        metrics.WORKERS.set(len(self._loops))

    def endpoint_ids(self) -> list[str]:
        """Endpoints this copy delivers to."""
        return list(self._loops)

    async def stop(self) -> None:
        """Stop every loop: each subscriber fetches no more jobs and lets those it holds finish
        for up to the broker's graceful timeout; then the settler records and settles them.
        Attempts still running then are cancelled, their jobs redelivered after ack_wait."""
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
        """A FastStream pull subscriber on the endpoint's durable consumer, made at run time.

        Up to `concurrency` jobs are handled at once (`max_workers`), each in the endpoint's lane.
        Acks are manual: the settler acks or naks with the retry delay once the record is stored.
        """
        lane = self._lanes[endpoint_id]
        subscriber = self._broker.subscriber(
            job_subject(org_id, endpoint_id),
            stream=JStream(JOBS_STREAM, declare=False),
            durable=consumer_name(endpoint_id),
            config=self._queue.consumer_config(org_id, endpoint_id),
            pull_sub=PullSub(batch_size=self._concurrency, timeout=FETCH_WAIT_S),
            max_workers=self._concurrency,
            ack_policy=AckPolicy.MANUAL,
            codec=RAW,
            persistent=False,  # made and dropped as endpoints come and go
            include_in_schema=False,  # `webhooks:jobs` documents the channel
        )

        @subscriber
        async def on_job(message: Msg) -> None:
            waited = time.monotonic()
            # The endpoint's slots are shared with its first attempts.
            async with lane.slots:
                if time.monotonic() - waited > IN_PROGRESS_AFTER_S:
                    # It waited behind slow attempts: restart its ack_wait before this attempt.
                    with contextlib.suppress(Exception):
                        await message.in_progress()
                await self._one(message, lane)

        await subscriber.start()
        tune_batch_fetch(subscriber)  # as for the subscribers declared at start (bootstrap)
        try:
            await asyncio.Event().wait()
        finally:
            await subscriber.stop()
            self._broker._subscribers.discard(subscriber)

    async def _one(self, message: Msg, lane: Lane) -> None:
        try:
            try:
                job = decode_job(message.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                # Parked with its reason (and then acked), on the service's own DLQ subject.
                reason = f"not a valid delivery job: {exc}"
                await dead_letter(self._broker, message, reason, consumer=DURABLE)
                return
            delay = retry_delay(message, job, datetime.now(UTC))
            if delay is not None:
                # A retry of a first attempt, handed out as soon as it was queued: due later.
                await message.nak(delay=delay)
                return
            settlement = await self._deliverer.attempt(job, attempt_number(message, job))
            delivery = settlement.delivery
            if delivery is not None and delivery.outcome is Outcome.DELIVERED:
                lane.congested = False  # it answers again: first attempts go to it again

            async def finish(settled: Settlement) -> None:
                await _settle_job(message, settled)

            async def failed() -> None:
                pass  # the job stays unacked: JetStream hands it out again after ack_wait

            # Settled off this worker's path (a 410 that disables the endpoint stops this very
            # loop; the attempt that did it is still recorded and settled).
            self._settler.settle(settlement, finish, failed)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The job stays unacked: JetStream hands it out again after ack_wait.
            log.exception("delivery attempt failed", subject=message.subject)

    def first_attempts_pending(self, endpoint_id: str) -> int:
        """First attempts of the endpoint in flight or waiting on this copy (not yet queued)."""
        return self._lanes[endpoint_id].pending()

    async def measure_backlog(self) -> None:
        """Set the backlog gauges from the consumers of every known endpoint."""
        sizes = [
            await self._queue.backlog(e.endpoint_id) + self._lanes[e.endpoint_id].pending()
            for e in self._endpoints.all()
        ]
        metrics.BACKLOG.set(sum(sizes))
        metrics.BACKLOG_MAX.set(max(sizes, default=0))
        metrics.BACKLOG_ENDPOINTS.set(sum(1 for s in sizes if s))


async def _settle_job(message: Msg, settlement: Settlement) -> None:
    """Ack the job (settled), or nak it with the retry delay, or hold it while disabled."""
    if settlement.action is Action.RETRY:
        await message.nak(delay=settlement.delay_s)
    elif settlement.action is Action.HOLD:
        await message.nak(delay=HOLD_S)
    else:
        await message.ack()
