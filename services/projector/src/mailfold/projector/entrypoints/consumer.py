"""The stream consumer: partitions of MAIL_EVENTS folded into PostgreSQL; any error re-seats one.

Each partition (all of the stream's events whose email hashes to it) is led by one process at a
time: the process holds the partition's writer lock on its lease session (adapters.leases). For
each partition it holds, a worker reads the partition's committed position, re-seats the
partition's durable consumer just after it, and runs the pipeline; every batch is acknowledged
only after its transaction committed. On any error the worker's pipeline and cache are discarded
and it starts again from the committed position: what was folded but not committed comes again.
Every `lease_poll` seconds the process counts the live processes and takes or gives back
partitions towards its fair share (domain.partitions.plan); a partition given back first
finishes the batch in hand.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import asyncpg
import structlog
from faststream.nats import NatsBroker, PullSub
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from mailfold.events import STREAM, AnyEvent
from mailfold.projector import metrics
from mailfold.projector.adapters import jetstream, postgres
from mailfold.projector.adapters.leases import PgLeases
from mailfold.projector.domain.partitions import Partition, layout, plan
from mailfold.projector.service_layer.leader import Leadership
from mailfold.projector.service_layer.pipeline import Pipeline
from mailfold.projector.service_layer.projection import Projection
from mailfold.runtime.broker import EVENTS_STREAM, documented
from mailfold.runtime.service import wait_set
from mailfold.runtime.settings import setting

log = structlog.get_logger("mailfold.projector.consumer")

FILTER_SUBJECT = "mail.events.>"

if TYPE_CHECKING:
    Folded = AnyEvent
else:
    Folded = documented(AnyEvent)


def declare(broker: NatsBroker, settings: ConsumerSettings | None = None) -> NatsBroker:
    """The projector's durable consumer of every event, as the AsyncAPI document shows it.

    The projector reads it with its own batch loop (ConsumerRunner), not through the broker:
    its position lives in PostgreSQL and a batch is acknowledged once its transaction commits;
    docs/decisions.md has the measurements. This declaration is what the document says.
    """
    name = (settings or ConsumerSettings()).name

    @broker.subscriber(
        FILTER_SUBJECT,
        stream=EVENTS_STREAM,
        durable=name,
        pull_sub=PullSub(batch=True),
        title=f"projector:{name}",
        description="Folds every event into the timelines (batches, position in PostgreSQL).",
    )
    async def folded(events: list[Folded]) -> None:
        raise RuntimeError("the projector reads this subject with ConsumerRunner")

    return broker


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """How the consumer batches, caches and shares the partitions."""

    name: str = setting("MAILFOLD_PROJECTOR_CONSUMER", "projector")
    max_batch: int = setting("MAILFOLD_PROJECTOR_MAX_BATCH", 2000, minimum=1)
    idle_wait: float = setting("MAILFOLD_PROJECTOR_IDLE_WAIT_S", 1.0)
    linger: float = setting("MAILFOLD_PROJECTOR_LINGER_S", 0.005)
    cache_size: int = setting("MAILFOLD_PROJECTOR_CACHE_SIZE", 10_000, minimum=0)
    partitions: int = setting("MAILFOLD_PROJECTOR_PARTITIONS", 1, minimum=1)
    lease_poll: float = setting("MAILFOLD_PROJECTOR_LEASE_POLL_S", 1.0, positive=True)


@dataclass(slots=True)
class _Held:
    """A partition this process runs: its worker and the worker's task."""

    worker: PartitionWorker
    task: asyncio.Task[None]


class PartitionWorker:
    """Leads one partition whose lease this process holds: terms until stopped."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        pool: asyncpg.Pool,
        database_url: str,
        settings: ConsumerSettings,
        partition: Partition,
        on_position: Callable[[], None],
    ) -> None:
        self._nc = nc
        self._js = js
        self._pool = pool
        self._dsn = database_url
        self._settings = settings
        self.partition = partition
        self._label = str(partition.index)
        self._on_position = on_position
        self._leadership = Leadership(self._lead)
        self._stop = self._leadership.stopping
        self._source: jetstream.PullSource | None = None
        self.consuming = False
        self.position: int | None = None

    def stop(self) -> None:
        """Ask the worker to finish the batch in hand and return."""
        self._stop.set()
        if self._source is not None:
            self._source.interrupt()

    async def run(self) -> None:
        """Terms until stopped (service_layer.leader restarts them after errors)."""
        with structlog.contextvars.bound_contextvars(partition=self.partition.index):
            try:
                await self._leadership.run()
            finally:
                self.consuming = False
                # Labels stay (multiprocess metrics cannot remove them): no lag counted here now.
                metrics.PARTITION_LEADER.labels(self._label).set(0)
                metrics.PARTITION_LAG.labels(self._label).set(0)

    async def _lead(self, look_up_until: int) -> None:
        conn = await postgres.connect(self._dsn)
        try:
            writer = postgres.PgBatchWriter(
                conn, schema="public", consumer=self.partition.consumer, stream=STREAM
            )
            await self._consume(writer, look_up_until)
        finally:
            self.consuming = False
            metrics.PARTITION_LEADER.labels(self._label).set(0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=5)

    def _committed(self, seq: int) -> None:
        self.position = seq
        metrics.PARTITION_POSITION.labels(self._label).set(seq)
        self._on_position()

    async def _consume(self, writer: postgres.PgBatchWriter, look_up_until: int) -> None:
        settings, partition = self._settings, self.partition
        position = await writer.prepare()
        last = await jetstream.stream_last_seq(self._js, STREAM)
        if last < position:
            log.error(
                "the stream ends before the committed position; was it recreated?",
                stream_last_seq=last,
                position=position,
            )
        reader = postgres.PgStateReader(self._pool)
        projection = Projection(
            reader,
            position=position,
            capacity=settings.cache_size,
            store_empty=await reader.is_empty(),
            look_up_ids_until=look_up_until,
            owns=partition.owns if partition.count > 1 else None,
        )
        await jetstream.seat_consumer(
            self._js,
            stream=STREAM,
            name=partition.consumer,
            filter_subject=FILTER_SUBJECT,
            start_seq=position + 1,
            max_ack_pending=max(10_000, 8 * settings.max_batch),
        )
        self.consuming = True
        metrics.PARTITION_LEADER.labels(self._label).set(1)
        self._committed(position)
        log.info("consuming", position=position, consumer=partition.consumer)
        source = jetstream.PullSource(
            self._nc,
            stream=STREAM,
            consumer=partition.consumer,
            max_batch=settings.max_batch,
            idle_wait=settings.idle_wait,
            linger=settings.linger,
        )
        # Every partition files a poison message under the base name (and only its owner does).
        dead_letters = jetstream.JetStreamDeadLetters(
            self._js, consumer=settings.name, stream=STREAM
        )
        pipeline = Pipeline(projection, writer, dead_letters=dead_letters)
        await source.start()
        self._source = source
        delivered = 0  # the consumer sequence of the last delivery taken
        try:
            while not self._stop.is_set():
                messages = await source.fetch()
                if source.conflict is not None:
                    raise RuntimeError(f"pull request refused: {source.conflict}")
                if not messages:
                    await pipeline.drain()
                    continue
                delivered = check_deliveries(delivered, messages)
                batch = [(jetstream.stream_seq(m.reply), m.subject, m.data) for m in messages]
                await pipeline.submit(batch, partial(self._ack, pipeline, messages[-1]))
            await pipeline.drain()
        finally:
            self._source = None
            await pipeline.close()
            await source.stop()

    async def _ack(self, pipeline: Pipeline, last: Msg) -> None:
        self._committed(pipeline.committed_seq)
        await jetstream.ack_all(self._nc, last)


@dataclass(slots=True)
class _Shares:
    """The last picture's figures, for /healthz and the metrics."""

    live: int = 0
    holders: dict[int, int] = field(default_factory=dict)


class ConsumerRunner:
    """Holds this process's share of the partitions and runs a worker for each, until stopped."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        pool: asyncpg.Pool,
        database_url: str,
        settings: ConsumerSettings,
    ) -> None:
        self._nc = nc
        self._js = js
        self._pool = pool
        self._dsn = database_url
        self._settings = settings
        self._layout = layout(settings.name, settings.partitions)
        self._held: dict[int, _Held] = {}
        self._stop = asyncio.Event()
        self._shares = _Shares()

    @property
    def leader(self) -> bool:
        """True while this process consumes at least one partition."""
        return any(h.worker.consuming for h in self._held.values())

    @property
    def partitions(self) -> list[int]:
        """The partitions this process holds, in order."""
        return sorted(self._held)

    def consumers(self) -> list[tuple[int, str]]:
        """(partition, durable consumer name) of each partition held."""
        return [(i, self._held[i].worker.partition.consumer) for i in sorted(self._held)]

    def describe(self) -> dict[str, object]:
        """What /healthz shows about the partitions."""
        return {
            "count": self._settings.partitions,
            "held": self.partitions,
            "consuming": sorted(i for i, h in self._held.items() if h.worker.consuming),
            "live_processes": self._shares.live,
        }

    def stop(self) -> None:
        """Ask every worker to finish the batch in hand, give the leases back and return."""
        self._stop.set()
        for held in self._held.values():
            held.worker.stop()

    async def run(self) -> None:
        """Rounds of the lease loop until stopped; a lost lease session gives everything back."""
        backoff = 0.2
        while not self._stop.is_set():
            try:
                await self._session()
                backoff = 0.2
            except Exception:
                metrics.RESETS.inc()
                log.exception("lease session failed; gave the partitions back, joining again")
                await wait_set(self._stop, backoff)
                backoff = min(backoff * 2, 5.0)

    async def _session(self) -> None:
        conn = await postgres.connect(self._dsn)
        leases = PgLeases(conn, schema="public", base=self._settings.name, partitions=self._layout)
        try:
            await leases.join()
            while not self._stop.is_set():
                await self._round(leases)
                await wait_set(self._stop, self._settings.lease_poll)
        finally:
            # Workers stop (finishing the batch in hand) before the session, and with it every
            # lease, goes: nobody else takes a partition while this process may still write it.
            await self._release_all(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=5)

    async def _round(self, leases: PgLeases) -> None:
        picture = await leases.picture()
        self._shares = _Shares(
            live=len(set(picture.members) | {picture.me}), holders=picture.holders
        )
        metrics.LIVE_PROCESSES.set(self._shares.live)
        for index, holder in list(picture.holders.items()):
            if holder == picture.me and index not in self._held:
                # A lock this session kept without a worker (its release was cut short).
                await leases.give_back(index)
                del picture.holders[index]
        move = plan(
            self._settings.partitions,
            picture.me,
            picture.members,
            picture.holders,
            list(self._held),
        )
        for index in move.release:
            log.info("giving a partition back", partition=index, live=self._shares.live)
            await self._release(index, leases)
        for index in move.acquire:
            if self._stop.is_set() or not await leases.try_take(index):
                continue
            self._start(index)
            log.info("took a partition", partition=index, live=self._shares.live)
        metrics.PARTITIONS_HELD.set(len(self._held))

    def _start(self, index: int) -> None:
        worker = PartitionWorker(
            self._nc,
            self._js,
            self._pool,
            self._dsn,
            self._settings,
            self._layout[index],
            self._positions_changed,
        )
        task = asyncio.create_task(worker.run(), name=f"projector-partition-{index}")
        self._held[index] = _Held(worker, task)
        metrics.LEADER.set(1)

    async def _release(self, index: int, leases: PgLeases | None) -> None:
        held = self._held.pop(index)
        held.worker.stop()
        try:
            await asyncio.wait_for(asyncio.shield(held.task), timeout=30)
        except BaseException as exc:  # too slow, failed, or this task is being cancelled
            held.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await held.task
            if not isinstance(exc, Exception):
                raise
        if leases is not None:
            await leases.give_back(index)
        self._positions_changed()
        if not self._held:
            metrics.LEADER.set(0)

    async def _release_all(self, leases: PgLeases | None) -> None:
        for held in self._held.values():
            held.worker.stop()
        try:
            for index in list(self._held):
                await self._release(index, leases)
        finally:
            for held in self._held.values():  # left only when cancelled meanwhile
                held.task.cancel()
            self._held.clear()
            metrics.PARTITIONS_HELD.set(0)
            metrics.LEADER.set(0)

    def _positions_changed(self) -> None:
        positions = [
            h.worker.position for h in self._held.values() if h.worker.position is not None
        ]
        if positions:
            metrics.POSITION.set(min(positions))


def check_deliveries(delivered: int, messages: list[Msg]) -> int:
    """The consumer sequence of the last of `messages`, after checking none went missing.

    Deliveries can be lost on the way (the consumer's leader or this connection moved to
    another node of the cluster while they were in flight). Acknowledging a later one would
    acknowledge them too (AckPolicy.ALL) without their being folded, so a jump in the consumer
    sequence ends the term: the consumer is re-seated at the committed position.
    """
    for msg in messages:
        seq = jetstream.consumer_seq(msg.reply)
        if seq != delivered + 1:
            raise RuntimeError(
                f"deliveries lost: consumer sequence {seq} after {delivered}; re-seating"
            )
        delivered = seq
    return delivered


async def report_lag(js: JetStreamContext, runner: ConsumerRunner, interval: float) -> None:
    """Keep the consumer-lag gauges current (runs until cancelled)."""
    while True:
        total = 0
        for index, name in runner.consumers():
            try:
                lag = await jetstream.consumer_lag(js, STREAM, name)
            except Exception as exc:  # no consumer yet, or NATS away: try again next time
                log.debug("consumer lag unavailable", error=str(exc), partition=index)
                continue
            metrics.PARTITION_LAG.labels(str(index)).set(lag)
            total += lag
        metrics.CONSUMER_LAG.set(total)
        await asyncio.sleep(interval)
