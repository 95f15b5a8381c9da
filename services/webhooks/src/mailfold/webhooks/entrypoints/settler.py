"""Stores delivery records a batch at a time (one NATS round trip), then settles their attempts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final

from mailfold.runtime.logging import get_logger
from mailfold.webhooks import metrics
from mailfold.webhooks.domain.retries import Outcome
from mailfold.webhooks.service_layer.delivery import Action, Settlement
from mailfold.webhooks.service_layer.ports import DeliveryStore

log = get_logger(__name__)

SETTLE_LINGER_S: Final = 0.005

# What settles an attempt once its record is stored (ack or nak a job, queue a retry, ...);
# `Failed` is called instead when the record or the settling could not be stored.
Finish = Callable[[Settlement], Awaitable[None]]
Failed = Callable[[], Awaitable[None]]


class Settler:
    """Stores delivery records in batches, then settles each attempt.

    An attempt is never settled without its record: one whose record was not stored is handed
    to its `failed` callback (its job or event stays unacknowledged and comes back after
    ack_wait). Attempts are handed over and their workers go on meanwhile.
    """

    def __init__(self, deliveries: DeliveryStore) -> None:
        self._deliveries = deliveries
        self._pending: list[tuple[Settlement, Finish, Failed]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start settling on the running loop."""
        self._task = asyncio.create_task(self._run(), name="webhook-settler")

    def settle(self, settlement: Settlement, finish: Finish, failed: Failed) -> None:
        """Store the attempt's record with the next batch, then `finish` it."""
        self._pending.append((settlement, finish, failed))
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
                    log.exception("settling failed", attempts=len(batch))
            if self._closing and not self._pending:
                return

    async def _settle(self, batch: list[tuple[Settlement, Finish, Failed]]) -> None:
        records = [s.delivery for s, _, _ in batch if s.delivery is not None]
        stored = await self._deliveries.put_many(records)
        lost = {id(d) for d, error in zip(records, stored, strict=True) if error is not None}
        kept: list[tuple[Settlement, Finish, Failed]] = []
        for settlement, finish, failed in batch:
            delivery = settlement.delivery
            if delivery is not None and id(delivery) in lost:
                log.error(
                    "record not stored", event_id=delivery.event_id, email_id=delivery.email_id
                )
                await failed()
            else:
                kept.append((settlement, finish, failed))
        # An acknowledged attempt settles with an ack (buffered, never waited for): one after
        # the other, without a task each; the others (a retry queued) wait together.
        done: list[BaseException | None] = []
        for settlement, finish, _ in kept:
            if settlement.action is Action.ACK:
                try:
                    await finish(settlement)
                except Exception as exc:
                    done.append(exc)
                else:
                    done.append(None)
            else:
                done.append(None)
        waiting = [(i, s, f) for i, (s, f, _) in enumerate(kept) if s.action is not Action.ACK]
        results = await asyncio.gather(*(f(s) for _, s, f in waiting), return_exceptions=True)
        for (i, _, _), result in zip(waiting, results, strict=True):
            done[i] = result if isinstance(result, BaseException) else None
        for (settlement, _, failed), error in zip(kept, done, strict=True):
            if isinstance(error, BaseException):
                log.error("attempt not settled; it comes back", error=str(error))
                await failed()
                continue
            if settlement.delivery is not None:
                last = settlement.delivery.history[-1]
                metrics.ATTEMPTS.labels(str(last.outcome)).inc()
                metrics.LATENCY.observe(last.latency_ms / 1000)
                if last.outcome is not Outcome.RETRYING:
                    metrics.DELIVERIES.labels(str(last.outcome)).inc()
