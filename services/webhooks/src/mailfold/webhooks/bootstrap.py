"""The webhooks service's composition root: settings from the environment, wiring, start and stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass, field
from typing import Final

from faststream.nats import NatsBroker
from nats.js import JetStreamContext

from mailfold.events import dlq_subject
from mailfold.runtime import bus
from mailfold.runtime.logging import configure_logging, get_logger
from mailfold.runtime.ops import HttpServer
from mailfold.runtime.orgs import TokenVerifier
from mailfold.runtime.service import run_until_signalled
from mailfold.runtime.settings import (
    CommonSettings,
    ConfigError,
    env_bool,
    env_float,
    env_int,
    env_str,
)
from mailfold.webhooks import metrics
from mailfold.webhooks.adapters import kv
from mailfold.webhooks.adapters.http import Poster
from mailfold.webhooks.adapters.jobs import JobQueue
from mailfold.webhooks.adapters.stream import StreamReader
from mailfold.webhooks.domain.retries import DEFAULT_SCHEDULE_S, parse_schedule
from mailfold.webhooks.entrypoints.http import Api, build_app
from mailfold.webhooks.entrypoints.subscriber import DURABLE, convert_fetch_timeouts, subscribe
from mailfold.webhooks.entrypoints.workers import Settler, Workers
from mailfold.webhooks.service_layer.delivery import Deliverer
from mailfold.webhooks.service_layer.endpoints import Manager
from mailfold.webhooks.service_layer.fanout import DeadLetter, Fanout, Stored
from mailfold.webhooks.service_layer.replay import Replayer

log = get_logger(__name__)

DEFAULT_PORT: Final = 8006


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the webhooks service reads from the environment (see docs/webhooks.md)."""

    nats_url: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    timeout_s: float = 15.0
    schedule_s: tuple[float, ...] = field(default=DEFAULT_SCHEDULE_S)
    allow_loopback: bool = False
    concurrency: int = 8
    batch_size: int = 100
    batch_wait_s: float = 0.05
    ack_grace_s: float = 15.0
    backlog_interval_s: float = 15.0

    @classmethod
    def from_env(cls) -> Settings:
        """Read MAILFOLD_* variables; a bad value raises ConfigError naming the variable."""
        common = CommonSettings.from_env()
        raw_schedule = env_str("MAILFOLD_WEBHOOKS_SCHEDULE", "")
        try:
            schedule = parse_schedule(raw_schedule) if raw_schedule else DEFAULT_SCHEDULE_S
        except ValueError as exc:
            raise ConfigError(f"MAILFOLD_WEBHOOKS_SCHEDULE: {exc}") from exc
        timeout = env_float("MAILFOLD_WEBHOOKS_TIMEOUT", 15.0)
        if not 0 < timeout <= 120:
            raise ConfigError(f"MAILFOLD_WEBHOOKS_TIMEOUT must be in (0, 120], got {timeout}")
        return cls(
            nats_url=common.nats_url,
            host=env_str("MAILFOLD_HTTP_HOST", "127.0.0.1"),
            port=env_int("MAILFOLD_WEBHOOKS_PORT", DEFAULT_PORT, minimum=0),
            timeout_s=timeout,
            schedule_s=schedule,
            allow_loopback=env_bool("MAILFOLD_WEBHOOKS_ALLOW_LOOPBACK", False),
            concurrency=env_int("MAILFOLD_WEBHOOKS_CONCURRENCY", 8, minimum=1),
            batch_size=env_int("MAILFOLD_WEBHOOKS_BATCH", 100, minimum=1),
            batch_wait_s=env_float("MAILFOLD_WEBHOOKS_BATCH_WAIT", 0.05),
            ack_grace_s=env_float("MAILFOLD_WEBHOOKS_ACK_GRACE", 15.0),
            backlog_interval_s=env_float("MAILFOLD_WEBHOOKS_BACKLOG_INTERVAL", 15.0),
        )


@dataclass
class Service:
    """A running webhooks service."""

    broker: NatsBroker
    endpoints: kv.Endpoints
    workers: Workers
    poster: Poster
    http: HttpServer
    tasks: list[asyncio.Task[None]]

    @property
    def port(self) -> int:
        """The HTTP port it listens on."""
        return self.http.port

    async def stop(self) -> None:
        """Stop answering, stop delivering (unsettled jobs are redelivered later), disconnect."""
        await self.http.stop()
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.workers.stop()
        await self.broker.stop()
        await self.endpoints.stop()
        await self.poster.close()
        log.info("webhooks stopped")


def _dead_letters(js: JetStreamContext) -> DeadLetter:
    async def send(message: Stored, reason: str) -> None:
        headers = {
            "Nats-Msg-Id": f"{DURABLE}:{message.seq}",
            "Mailfold-Error": re.sub(r"[\r\n]+", " ", reason)[:1000],
            "Mailfold-Consumer": DURABLE,
            "Mailfold-Stream-Seq": str(message.seq),
        }
        await js.publish(dlq_subject(DURABLE), message.data, headers=headers, timeout=10)
        metrics.EVENTS.labels("dead_lettered").inc()
        log.warning("event dead-lettered", stream_seq=message.seq, reason=reason)

    return send


async def _every(interval_s: float, job: Workers) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await job.measure_backlog()
        except Exception as exc:  # metrics never stop the service
            log.warning("backlog not measured", error=str(exc))


async def start(settings: Settings) -> Service:
    """Connect, create what is missing, subscribe, deliver, then serve HTTP (port 0: any)."""
    broker = NatsBroker(
        settings.nats_url,
        name="mailfold-webhooks",
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=5,
        # Through the process's logging (warnings and errors, on stderr), not FastStream's own
        # stdout handler; its per-batch lines are debug.
        logger=logging.getLogger("mailfold.webhooks.broker"),
        log_level=logging.DEBUG,
    )
    poster = Poster(timeout_s=settings.timeout_s, allow_loopback=settings.allow_loopback)
    endpoints: kv.Endpoints | None = None
    try:
        await broker.connect()
        nc = broker.connection
        js = nc.jetstream()
        await bus.ensure_topology(js)
        ack_wait = settings.timeout_s + settings.ack_grace_s
        queue = JobQueue(js, ack_wait_s=ack_wait)
        await queue.ensure()
        endpoints = kv.Endpoints(await kv.bucket(js, kv.BUCKET_ENDPOINTS))
        await endpoints.start()
        deliveries = kv.Deliveries(
            js, await kv.bucket(js, kv.BUCKET_DELIVERIES, ttl=kv.RECORD_TTL_S)
        )
        folds = kv.Folds(await kv.bucket(js, kv.BUCKET_FOLDS, ttl=kv.RECORD_TTL_S))
        verifier = TokenVerifier(await bus.kv(js, bus.BUCKET_ORGS))

        fanout = Fanout(
            endpoints,
            folds,
            queue,
            _dead_letters(js),
            on_enqueued=metrics.ENQUEUED.inc,
        )
        subscriber = subscribe(
            broker,
            fanout,
            batch_size=settings.batch_size,
            batch_timeout_s=settings.batch_wait_s,
            ack_wait_s=max(30.0, ack_wait),
        )
        deliverer = Deliverer(
            endpoints,
            deliveries,
            poster,
            schedule=settings.schedule_s,
            on_disabled=metrics.DISABLED.inc,
        )
        workers = Workers(
            endpoints, queue, deliverer, Settler(deliveries), concurrency=settings.concurrency
        )
        await broker.start()
        convert_fetch_timeouts(subscriber)
        workers.start()

        reader = StreamReader(js)

        async def forget(org_id: str, endpoint_id: str) -> None:
            await queue.drop(org_id, endpoint_id)
            await deliveries.drop_endpoint(org_id, endpoint_id)

        manager = Manager(endpoints, allow_loopback=settings.allow_loopback, on_deleted=forget)
        api = Api(
            verifier,
            endpoints,
            deliveries,
            manager,
            Replayer(reader, folds, deliveries, queue),
            reader,
            queue,
        )

        async def health() -> dict[str, object]:
            return {"nats": "ok" if nc.is_connected else "disconnected"}

        http = HttpServer(build_app(api, health), settings.host, settings.port)
        await http.start()
    except BaseException:
        if endpoints is not None:
            await endpoints.stop()
        with contextlib.suppress(Exception):
            await broker.stop()
        await poster.close()
        raise
    tasks = [asyncio.create_task(_every(settings.backlog_interval_s, workers))]
    log.info(
        "webhooks listening",
        host=settings.host,
        port=http.port,
        allow_loopback=settings.allow_loopback,
        schedule=list(settings.schedule_s),
    )
    return Service(broker, endpoints, workers, poster, http, tasks)


def main() -> None:
    """`mailfold serve webhooks`: run until SIGINT or SIGTERM."""
    common = CommonSettings.from_env()
    configure_logging("webhooks", level=common.log_level, json=common.log_json)
    run_until_signalled(lambda: start(Settings.from_env()))
