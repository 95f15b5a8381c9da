"""The stream consumer: one leader folds MAIL_EVENTS into PostgreSQL; any error re-seats it.

Leadership is the projection's writer lock in PostgreSQL. The leader reads its committed position,
re-seats the durable consumer just after it, and runs the pipeline; every batch is acknowledged
only after its transaction committed. On any error the pipeline and its cache are discarded and
the loop starts again from the committed position: what was folded but not committed comes again.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import asyncpg
import structlog
from faststream.nats import NatsBroker, PullSub
from nats.aio.client import Client
from nats.js import JetStreamContext

from mailfold.events import STREAM, AnyEvent
from mailfold.projector import metrics
from mailfold.projector.adapters import jetstream, postgres
from mailfold.projector.service_layer.leader import Leadership
from mailfold.projector.service_layer.pipeline import Pipeline
from mailfold.projector.service_layer.projection import Projection
from mailfold.runtime.broker import EVENTS_STREAM, documented
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
    """How the consumer batches and caches."""

    name: str = setting("MAILFOLD_PROJECTOR_CONSUMER", "projector")
    max_batch: int = setting("MAILFOLD_PROJECTOR_MAX_BATCH", 2000, minimum=1)
    idle_wait: float = setting("MAILFOLD_PROJECTOR_IDLE_WAIT_S", 1.0)
    linger: float = setting("MAILFOLD_PROJECTOR_LINGER_S", 0.005)
    cache_size: int = setting("MAILFOLD_PROJECTOR_CACHE_SIZE", 10_000, minimum=0)
    lock_poll: float = 1.0


class ConsumerRunner:
    """Runs the consumer until stopped, as leader or as standby."""

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
        self._leadership = Leadership(self._lead)
        self._stop = self._leadership.stopping
        self._source: jetstream.PullSource | None = None
        self.leader = False

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand and return."""
        self._stop.set()
        if self._source is not None:
            self._source.interrupt()

    async def run(self) -> None:
        """Consume until stopped, as leader or standby (service_layer.leader restarts terms)."""
        await self._leadership.run()

    async def _lead(self, look_up_until: int) -> None:
        """One term: wait for the writer lock, then consume from the committed position."""
        try:
            await self._term(look_up_until)
        finally:
            self.leader = False
            metrics.LEADER.set(0)

    async def _term(self, look_up_until: int) -> None:
        conn = await postgres.connect(self._dsn)
        try:
            writer = postgres.PgBatchWriter(
                conn, schema="public", consumer=self._settings.name, stream=STREAM
            )
            while not await writer.try_lock():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=self._settings.lock_poll)
                if self._stop.is_set():
                    return
            self.leader = True
            metrics.LEADER.set(1)
            await self._consume(writer, look_up_until)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=5)

    async def _consume(self, writer: postgres.PgBatchWriter, look_up_until: int) -> None:
        settings = self._settings
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
        )
        await jetstream.seat_consumer(
            self._js,
            stream=STREAM,
            name=settings.name,
            filter_subject=FILTER_SUBJECT,
            start_seq=position + 1,
            max_ack_pending=max(10_000, 8 * settings.max_batch),
        )
        metrics.POSITION.set(position)
        log.info("consuming", position=position, consumer=settings.name)
        source = jetstream.PullSource(
            self._nc,
            stream=STREAM,
            consumer=settings.name,
            max_batch=settings.max_batch,
            idle_wait=settings.idle_wait,
            linger=settings.linger,
        )
        dead_letters = jetstream.JetStreamDeadLetters(
            self._js, consumer=settings.name, stream=STREAM
        )
        pipeline = Pipeline(projection, writer, dead_letters=dead_letters)
        await source.start()
        self._source = source
        try:
            while not self._stop.is_set():
                messages = await source.fetch()
                if source.conflict is not None:
                    raise RuntimeError(f"pull request refused: {source.conflict}")
                if not messages:
                    await pipeline.drain()
                    continue
                batch = [(jetstream.stream_seq(m.reply), m.subject, m.data) for m in messages]
                await pipeline.submit(batch, partial(jetstream.ack_all, self._nc, messages[-1]))
            await pipeline.drain()
        finally:
            self._source = None
            await pipeline.close()
            await source.stop()


async def report_lag(js: JetStreamContext, name: str, interval: float) -> None:
    """Keep the consumer-lag gauge current (runs until cancelled)."""
    while True:
        try:
            metrics.CONSUMER_LAG.set(await jetstream.consumer_lag(js, STREAM, name))
        except Exception as exc:  # no consumer yet, or NATS away: try again next time
            log.debug("consumer lag unavailable", error=str(exc))
        await asyncio.sleep(interval)
