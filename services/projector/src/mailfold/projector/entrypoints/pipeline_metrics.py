"""Gauges of the pipeline as a whole, refreshed on a timer by every projector copy.

Every worker of `serve --workers N` reads the same state: a scrape shows the latest reading.

The projector already holds connections to both stores, so it reports what the dashboards and
alerts need beyond each service's own counters: every durable consumer of MAIL_EVENTS (pending,
awaiting an ack, redelivered, its ack floor and how old the oldest unacknowledged message is),
the size of each stream (MAIL_DLQ's is the dead-letter depth) and whether NATS and PostgreSQL
answer. Consumer names are the deployment's own (a handful), so they are bounded labels.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final

import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from prometheus_client import Gauge

from mailfold.events import STREAM
from mailfold.events.subjects import DLQ_STREAM

log = structlog.get_logger("mailfold.projector.pipeline_metrics")


def _consumer_gauge(name: str, documentation: str) -> Gauge:
    """A gauge per (stream, consumer), the latest reading of any worker."""
    return Gauge(name, documentation, ["stream", "consumer"], multiprocess_mode="livemostrecent")


CONSUMER_PENDING: Final = _consumer_gauge(
    "mailfold_jetstream_consumer_pending",
    "Messages of the stream not yet delivered to the consumer.",
)
CONSUMER_ACK_PENDING: Final = _consumer_gauge(
    "mailfold_jetstream_consumer_ack_pending",
    "Messages delivered to the consumer and not acknowledged yet.",
)
CONSUMER_REDELIVERED: Final = _consumer_gauge(
    "mailfold_jetstream_consumer_redelivered",
    "Messages delivered more than once and not acknowledged yet.",
)
CONSUMER_ACK_FLOOR: Final = _consumer_gauge(
    "mailfold_jetstream_consumer_ack_floor",
    "The stream sequence up to which the consumer acknowledged everything.",
)
CONSUMER_OLDEST_AGE: Final = _consumer_gauge(
    "mailfold_jetstream_consumer_oldest_unacked_age_seconds",
    "Age of the oldest message the consumer has not acknowledged (0 when caught up); for the "
    "projector, how far behind the stream its timelines are.",
)
STREAM_MESSAGES: Final = Gauge(
    "mailfold_jetstream_stream_messages",
    "Messages held by the stream (MAIL_DLQ: the dead-letter depth).",
    ["stream"],
    multiprocess_mode="livemostrecent",
)
DEPENDENCY_UP: Final = Gauge(
    "mailfold_projector_dependency_up",
    "1 when the dependency answered the last check, else 0 (nats, postgresql).",
    ["dependency"],
    multiprocess_mode="livemin",  # with workers: 0 when any of them cannot reach it
)
_CONSUMER_GAUGES: Final = (
    CONSUMER_PENDING,
    CONSUMER_ACK_PENDING,
    CONSUMER_REDELIVERED,
    CONSUMER_ACK_FLOOR,
    CONSUMER_OLDEST_AGE,
)

Ping = Callable[[], Awaitable[bool]]


async def _oldest_age(js: JetStreamContext, stream: str, ack_floor: int) -> float:
    """Seconds since the first message after the ack floor was stored."""
    message = await js.get_msg(stream, seq=ack_floor + 1, next=True)
    if message.time is None:
        return 0.0
    return max(time.time() - message.time.timestamp(), 0.0)


class PipelineGauges:
    """Reads consumer and stream state and sets the gauges; forgets consumers that went away."""

    def __init__(self, nc: Client, js: JetStreamContext, database_ping: Ping) -> None:
        self._nc = nc
        self._js = js
        self._ping = database_ping
        self._consumers: set[tuple[str, str]] = set()

    async def refresh(self) -> None:
        """One round: dependencies first, then streams and consumers (skipped without NATS)."""
        try:
            database = await asyncio.wait_for(self._ping(), timeout=5)
        except Exception:  # down or slow: the gauge says so
            database = False
        DEPENDENCY_UP.labels("postgresql").set(1 if database else 0)
        DEPENDENCY_UP.labels("nats").set(1 if self._nc.is_connected else 0)
        if not self._nc.is_connected:
            return
        for stream in (STREAM, DLQ_STREAM):
            info = await self._js.stream_info(stream)
            STREAM_MESSAGES.labels(stream).set(int(info.state.messages or 0))
        seen: set[tuple[str, str]] = set()
        for consumer in await self._js.consumers_info(STREAM):
            key = (STREAM, consumer.name)
            seen.add(key)
            pending = int(consumer.num_pending or 0)
            ack_pending = int(consumer.num_ack_pending or 0)
            floor = int(consumer.ack_floor.stream_seq or 0) if consumer.ack_floor else 0
            CONSUMER_PENDING.labels(*key).set(pending)
            CONSUMER_ACK_PENDING.labels(*key).set(ack_pending)
            CONSUMER_REDELIVERED.labels(*key).set(int(consumer.num_redelivered or 0))
            CONSUMER_ACK_FLOOR.labels(*key).set(floor)
            age = await _oldest_age(self._js, STREAM, floor) if pending + ack_pending else 0.0
            CONSUMER_OLDEST_AGE.labels(*key).set(age)
        for gone in self._consumers - seen:
            for gauge in _CONSUMER_GAUGES:
                gauge.remove(*gone)
        self._consumers = seen

    async def run(self, interval: float) -> None:
        """Refresh every `interval` seconds until cancelled."""
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # NATS away or a stream missing: try again next time
                log.debug("pipeline gauges unavailable", error=str(exc))
            await asyncio.sleep(interval)
