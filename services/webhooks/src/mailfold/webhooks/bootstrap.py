"""The webhooks service's composition root: settings from the environment, wiring, start and stop."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Final

from faststream.nats import NatsBroker
from faststream.nats.subscriber.usecases.stream_pull_subscriber import BatchPullStreamSubscriber
from nats.js import JetStreamContext

from mailfold.runtime import bus
from mailfold.runtime.broker import asyncapi_document, new_broker, tune_batch_fetch
from mailfold.runtime.broker import close as broker_close
from mailfold.runtime.logging import configure_logging, get_logger
from mailfold.runtime.ops import HttpServer
from mailfold.runtime.orgs import TokenVerifier
from mailfold.runtime.service import run_until_signalled
from mailfold.runtime.settings import (
    CommonSettings,
    ConfigError,
    NatsAuth,
    env_str,
    from_env,
    setting,
)
from mailfold.webhooks import metrics
from mailfold.webhooks.adapters import kv
from mailfold.webhooks.adapters.http import Poster
from mailfold.webhooks.adapters.jobs import JobQueue
from mailfold.webhooks.adapters.stream import StreamReader
from mailfold.webhooks.domain.retries import DEFAULT_SCHEDULE_S, parse_schedule
from mailfold.webhooks.entrypoints import subscriber
from mailfold.webhooks.entrypoints.first import SLOT_WAIT_S, FirstAttempts, Lanes
from mailfold.webhooks.entrypoints.http import Api, build_app
from mailfold.webhooks.entrypoints.settler import Settler
from mailfold.webhooks.entrypoints.workers import Workers
from mailfold.webhooks.service_layer.delivery import Deliverer
from mailfold.webhooks.service_layer.endpoints import Manager
from mailfold.webhooks.service_layer.fanout import Fanout
from mailfold.webhooks.service_layer.replay import Replayer

log = get_logger(__name__)

MAX_TIMEOUT_S: Final = 120.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the webhooks service reads from the environment (see docs/webhooks.md)."""

    nats_url: str
    host: str = setting("MAILFOLD_HTTP_HOST", "127.0.0.1")
    port: int = setting("MAILFOLD_WEBHOOKS_PORT", 8006, minimum=0)
    timeout_s: float = setting("MAILFOLD_WEBHOOKS_TIMEOUT_S", 15.0, positive=True)
    schedule_s: tuple[float, ...] = field(default=DEFAULT_SCHEDULE_S)
    allow_loopback: bool = setting("MAILFOLD_WEBHOOKS_ALLOW_LOOPBACK", False)
    concurrency: int = setting("MAILFOLD_WEBHOOKS_CONCURRENCY", 8, minimum=1)
    batch_size: int = setting("MAILFOLD_WEBHOOKS_BATCH", 100, minimum=1)
    batch_wait_s: float = setting("MAILFOLD_WEBHOOKS_BATCH_WAIT_S", 0.05, positive=True)
    ack_grace_s: float = setting("MAILFOLD_WEBHOOKS_ACK_GRACE_S", 15.0, positive=True)
    stop_grace_s: float = setting("MAILFOLD_WEBHOOKS_STOP_GRACE_S", 10.0, minimum=0)
    backlog_interval_s: float = setting("MAILFOLD_WEBHOOKS_BACKLOG_INTERVAL_S", 15.0, positive=True)
    nats_auth: NatsAuth = field(default_factory=NatsAuth)

    @classmethod
    def from_env(cls) -> Settings:
        """Read MAILFOLD_* variables; a bad value raises ConfigError naming the variable."""
        raw_schedule = env_str("MAILFOLD_WEBHOOKS_SCHEDULE", "")
        try:
            schedule = parse_schedule(raw_schedule) if raw_schedule else DEFAULT_SCHEDULE_S
        except ValueError as exc:
            raise ConfigError(f"MAILFOLD_WEBHOOKS_SCHEDULE: {exc}") from exc
        common = CommonSettings.from_env()
        settings = from_env(
            cls, nats_url=common.nats_url, nats_auth=common.nats_auth, schedule_s=schedule
        )
        if settings.timeout_s > MAX_TIMEOUT_S:
            raise ConfigError(
                f"MAILFOLD_WEBHOOKS_TIMEOUT_S must be at most {MAX_TIMEOUT_S:g}, "
                f"got {settings.timeout_s:g}"
            )
        return settings

    @property
    def ack_wait_s(self) -> float:
        """How long a job or an event may stay unacked before JetStream hands it out again."""
        return self.timeout_s + self.ack_grace_s


@dataclass
class Service:
    """A running webhooks service."""

    broker: NatsBroker
    fanout: BatchPullStreamSubscriber
    settings: Settings
    endpoints: kv.Endpoints
    workers: Workers
    first: FirstAttempts
    poster: Poster
    http: HttpServer
    tasks: list[asyncio.Task[None]]

    @property
    def port(self) -> int:
        """The HTTP port it listens on."""
        return self.http.port

    async def stop(self) -> None:
        """Stop answering and fetching events, finish the first attempts in flight (bounded by
        MAILFOLD_WEBHOOKS_STOP_GRACE_S; events not yet attempted are handed back at once), stop
        the retry loops (their jobs in flight come back after ack_wait), disconnect."""
        await self.http.stop()
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.first.close()
        await self.fanout.stop()  # no more events fetched
        await self.first.stop(self.settings.stop_grace_s)
        await self.workers.stop()  # and the settler, which settles what finished
        await self.first.hand_back()
        await broker_close(self.broker)
        await self.endpoints.stop()
        await self.poster.close()
        log.info("webhooks stopped")


def declare(
    broker: NatsBroker, handle: subscriber.Handle, settings: Settings
) -> BatchPullStreamSubscriber:
    """What the webhooks service consumes and publishes, on `broker` (the AsyncAPI document);
    the fan-out's subscriber."""
    return subscriber.declare(
        broker,
        handle,
        batch_size=settings.batch_size,
        batch_timeout_s=settings.batch_wait_s,
        # An event waits for its first attempts: for room, for a slot, the attempt itself.
        ack_wait_s=max(30.0, settings.ack_wait_s + 2 * SLOT_WAIT_S),
    )


async def _every(interval_s: float, job: Workers) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await job.measure_backlog()
        except Exception as exc:  # metrics never stop the service
            log.warning("backlog not measured", error=str(exc))


async def ensure_topology(js: JetStreamContext, *, replicas: int) -> None:
    """The service's own stream and buckets with `replicas` (`mailfold topology`, `dev --cluster`);
    a copy starting creates what is missing with one."""
    await JobQueue(js, ack_wait_s=0).ensure(replicas=replicas)
    await bus.kv(js, kv.BUCKET_ENDPOINTS, replicas=replicas)
    await bus.kv(js, kv.BUCKET_DELIVERIES, ttl_s=kv.RECORD_TTL_S, replicas=replicas)
    await bus.kv(js, kv.BUCKET_FOLDS, ttl_s=kv.RECORD_TTL_S, replicas=replicas)


async def start(settings: Settings, *, loops: type[Workers] = Workers) -> Service:
    """Connect, create what is missing, subscribe, deliver, then serve HTTP (port 0: any).

    `loops` is the retry loops' class (`bench/webhooks.py` measures a variant of it).
    """
    broker = new_broker(settings.nats_url, service="webhooks", auth=settings.nats_auth)
    poster = Poster(timeout_s=settings.timeout_s, allow_loopback=settings.allow_loopback)
    endpoints: kv.Endpoints | None = None
    try:
        nc = await broker.connect()
        js = nc.jetstream()
        await bus.ensure_topology(js)
        queue = JobQueue(js, ack_wait_s=settings.ack_wait_s)
        await queue.ensure()
        endpoints = kv.Endpoints(await bus.kv(js, kv.BUCKET_ENDPOINTS))
        await endpoints.start()
        deliveries = kv.Deliveries(await bus.kv(js, kv.BUCKET_DELIVERIES, ttl_s=kv.RECORD_TTL_S))
        folds = kv.Folds(await bus.kv(js, kv.BUCKET_FOLDS, ttl_s=kv.RECORD_TTL_S))
        verifier = TokenVerifier(await bus.kv(js, bus.BUCKET_ORGS))
        fanout = Fanout(endpoints, folds, subscriber.dead_letters(broker))
        deliverer = Deliverer(
            endpoints,
            deliveries,
            poster,
            schedule=settings.schedule_s,
            on_disabled=metrics.DISABLED.inc,
        )
        settler = Settler(deliveries)
        lanes = Lanes(settings.concurrency)
        first = FirstAttempts(fanout, endpoints, deliverer, settler, queue, lanes)
        fanout_subscriber = declare(broker, first.on_batch, settings)
        workers = loops(
            endpoints,
            queue,
            deliverer,
            settler,
            lanes,
            concurrency=settings.concurrency,
            broker=broker,
        )
        await broker.start()
        for declared in broker.subscribers:
            tune_batch_fetch(declared)
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
            workers.first_attempts_pending,
        )

        async def health() -> dict[str, object]:
            return {"nats": "ok" if nc.is_connected else "disconnected"}

        app = build_app(api, health, asyncapi_document(broker, "webhooks"))
        http = HttpServer(app, settings.host, settings.port)
        await http.start()
    except BaseException:
        if endpoints is not None:
            await endpoints.stop()
        await broker_close(broker)
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
    return Service(
        broker, fanout_subscriber, settings, endpoints, workers, first, poster, http, tasks
    )


def main() -> None:
    """`mailfold serve webhooks`: run until SIGINT or SIGTERM."""
    common = CommonSettings.from_env()
    configure_logging("webhooks", level=common.log_level, json=common.log_json)
    run_until_signalled(lambda: start(Settings.from_env()))
