"""Batches through fold and commit, two stages deep: batch N+1 folds while batch N commits.

Only one commit is in flight at a time and commits happen in batch order. A failed commit fails
the pipeline; the caller then discards it (and its cache) and starts again from the committed
position, so nothing folded after the failure is ever written.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import structlog

from mailfold.events import Decision
from mailfold.projector import metrics
from mailfold.projector.domain.messages import RawMessage
from mailfold.projector.service_layer import deliverability
from mailfold.projector.service_layer.ports import (
    BatchWriter,
    DeadLetters,
    DuplicateEventIds,
    WriteSet,
)
from mailfold.projector.service_layer.projection import Prepared, Projection

log = structlog.get_logger("mailfold.projector.pipeline")

AfterCommit = Callable[[], Awaitable[None]]


class Pipeline:
    """Feeds batches to a Projection and writes them in order, one commit in flight."""

    def __init__(
        self,
        projection: Projection,
        writer: BatchWriter,
        *,
        dead_letters: DeadLetters | None = None,
        record_metrics: bool = True,
    ) -> None:
        self._projection = projection
        self._writer = writer
        self._dead_letters = dead_letters
        self._record_metrics = record_metrics
        self._in_flight: asyncio.Task[None] | None = None
        self.committed_seq = projection.position
        self.committed_events = 0
        self.poisoned = 0

    async def submit(
        self, messages: Sequence[RawMessage], after_commit: AfterCommit | None = None
    ) -> None:
        """Fold a batch, wait for the previous commit, then start this one's commit.

        `after_commit` runs once the batch is committed (the consumer acknowledges there).
        """
        prepared = await self._projection.prepare(messages)
        await self._wait()
        self._in_flight = asyncio.create_task(self._commit(prepared, after_commit))

    async def drain(self) -> None:
        """Wait for the commit in flight, raising its error."""
        await self._wait()

    async def write_extra(self, writes: WriteSet) -> None:
        """Write rows outside the batch flow (a write-behind flush), after the commit in flight."""
        await self._wait()
        await self._writer.write(writes)

    async def submit_writes(self, writes: WriteSet) -> None:
        """Like `write_extra`, but the write runs in the background as a batch's commit does."""
        await self._wait()
        self._in_flight = asyncio.create_task(self._write_extra(writes))

    async def _write_extra(self, writes: WriteSet) -> None:
        await self._writer.write(writes)

    async def close(self) -> None:
        """Cancel a commit in flight (its transaction rolls back) without raising."""
        task, self._in_flight = self._in_flight, None
        if task is None:
            return
        task.cancel()
        # The pipeline is being discarded: its outcome no longer matters.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def _wait(self) -> None:
        task, self._in_flight = self._in_flight, None
        if task is not None:
            await task

    async def _commit(self, prepared: Prepared, after_commit: AfterCommit | None) -> None:
        writes = prepared.writes
        if self._dead_letters is not None:
            for poison in writes.poison:
                await self._dead_letters.send(poison)
        started = time.perf_counter()
        try:
            await self._writer.write(writes)
        except DuplicateEventIds as exc:
            exc.until_seq = writes.last_seq
            raise
        elapsed = time.perf_counter() - started
        self._projection.committed(prepared)
        self.committed_seq = writes.last_seq
        self.committed_events += len(writes.event_rows)
        self.poisoned += len(writes.poison)
        if self._record_metrics:
            _observe(prepared, elapsed)
        if after_commit is not None:
            await after_commit()


def _observe(prepared: Prepared, elapsed: float) -> None:
    writes = prepared.writes
    metrics.COMMIT_SECONDS.observe(elapsed)
    metrics.BATCH_SIZE.observe(prepared.size)
    deliverability.record(prepared.changed)
    if prepared.skipped:
        metrics.DUPLICATES.labels("redelivered").inc(prepared.skipped)
    if prepared.duplicates:
        metrics.DUPLICATES.labels("event_id").inc(prepared.duplicates)
    counts: Counter[tuple[str, str]] = Counter()
    for event_type, ruling in prepared.rulings:
        reason = ruling.reason.value if ruling.reason is not None else ""
        counts[(ruling.decision.value, reason or event_type)] += 1
    for row in writes.decision_rows:
        counts[("re" + row[1], row[2] or "")] += 1
    for (decision, label), n in counts.items():
        if decision == Decision.APPLIED:
            metrics.EVENTS_APPLIED.labels(label).inc(n)
        elif decision == Decision.WAITING:
            metrics.EVENTS_WAITING.labels(label).inc(n)
        elif decision == Decision.VIOLATION:
            metrics.VIOLATIONS.labels(label).inc(n)
        else:
            metrics.REDECIDED.labels(decision[2:]).inc(n)
            if label:
                metrics.VIOLATIONS.labels(label).inc(n)
    for poison in writes.poison:
        metrics.DEAD_LETTERS.labels(poison.error.partition(":")[0]).inc()
        log.warning(
            "dead letter", stream_seq=poison.seq, subject=poison.subject, error=poison.error
        )
    for event in writes.event_rows:
        if event[8] == Decision.VIOLATION:
            log.info(
                "violation",
                email_id=event[5],
                event_id=event[0],
                event_type=event[3],
                reason=event[9],
                detail=event[10],
            )
