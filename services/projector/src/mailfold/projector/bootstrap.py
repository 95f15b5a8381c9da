"""The projector's composition root: settings, wiring, start and stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from dataclasses import dataclass, field

import asyncpg
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from mailfold.events import STREAM
from mailfold.projector.adapters import postgres
from mailfold.projector.adapters.migrations import migrate
from mailfold.projector.adapters.queries import ProjectionQueries
from mailfold.projector.adapters.stats import StatsQueries
from mailfold.projector.domain.partitions import other_layouts
from mailfold.projector.entrypoints.consumer import (
    ConsumerRunner,
    ConsumerSettings,
    declare,
    report_lag,
)
from mailfold.projector.entrypoints.http import Api, build_app
from mailfold.projector.entrypoints.pipeline_metrics import PipelineGauges
from mailfold.projector.entrypoints.stats_http import StatsApi
from mailfold.projector.entrypoints.ui import RecordPage
from mailfold.runtime import bus
from mailfold.runtime.broker import asyncapi_document, described_broker
from mailfold.runtime.logging import configure_logging
from mailfold.runtime.ops import HttpServer
from mailfold.runtime.orgs import TokenVerifier
from mailfold.runtime.service import run_until_signalled
from mailfold.runtime.settings import (
    DEFAULT_DATABASE_URL,
    DEFAULT_NATS_URL,
    CommonSettings,
    ConfigError,
    NatsAuth,
    from_env,
    setting,
)

log = structlog.get_logger("mailfold.projector")

CONSUMER_TASK = "projector-consumer"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the projector reads from its environment."""

    nats_url: str = DEFAULT_NATS_URL
    database_url: str = setting("MAILFOLD_DATABASE_URL", DEFAULT_DATABASE_URL)
    # Where the query API reads (a streaming replica, say); empty: MAILFOLD_DATABASE_URL.
    query_database_url: str = setting("MAILFOLD_QUERY_DATABASE_URL", "")
    # false: serve the query API only; no consuming, no leases, no migrations, no writes.
    consume: bool = setting("MAILFOLD_PROJECTOR_CONSUME", True)
    host: str = setting("MAILFOLD_HTTP_HOST", "127.0.0.1")
    port: int = setting("MAILFOLD_PROJECTOR_PORT", 8003, minimum=0)
    log_level: str = "info"
    log_json: bool | None = None
    consumer: ConsumerSettings = field(default_factory=ConsumerSettings)
    migrate: bool = setting("MAILFOLD_PROJECTOR_MIGRATE", True)
    lag_interval: float = setting("MAILFOLD_PROJECTOR_LAG_INTERVAL_S", 5.0)
    nats_auth: NatsAuth = field(default_factory=NatsAuth)

    @classmethod
    def from_env(cls) -> Settings:
        """MAILFOLD_* variables; see docs/projector.md."""
        common = CommonSettings.from_env()
        return from_env(
            cls,
            nats_url=common.nats_url,
            nats_auth=common.nats_auth,
            log_level=common.log_level,
            log_json=common.log_json,
            consumer=from_env(ConsumerSettings),
        )


@dataclass
class Service:
    """A running projector."""

    nc: Client
    pools: list[asyncpg.Pool]
    server: HttpServer
    runner: ConsumerRunner
    tasks: list[asyncio.Task[None]]

    @property
    def port(self) -> int:
        """The HTTP port (query API, /healthz, /metrics)."""
        return self.server.port

    async def stop(self) -> None:
        """Finish the batch in hand, stop serving, close every connection."""
        self.runner.stop()
        consumers = [t for t in self.tasks if t.get_name() == CONSUMER_TASK]
        for consumer in consumers:
            try:
                await asyncio.wait_for(asyncio.shield(consumer), timeout=10)
            except (TimeoutError, Exception):
                consumer.cancel()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.server.stop()
        for pool in self.pools:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), timeout=5)
        await bus.close(self.nc)


async def start(settings: Settings) -> Service:
    """Connect, migrate, serve the API and start consuming."""
    nc = await bus.connect(settings.nats_url, "mailfold-projector", auth=settings.nats_auth)
    pools: list[asyncpg.Pool] = []
    try:
        js = nc.jetstream()
        # State reads of every partition this process may lead, and the query API.
        pool = await postgres.create_pool(
            settings.database_url, max_size=3 + settings.consumer.partitions
        )
        pools.append(pool)
        if settings.consume:
            await _prepare_to_consume(js, pool, settings)
        read_pool = pool
        if settings.query_database_url:
            read_pool = await postgres.create_pool(settings.query_database_url)
            pools.append(read_pool)
        queries = ProjectionQueries(read_pool)
        verifier = TokenVerifier(await bus.kv(js, bus.BUCKET_ORGS))
        directory = await bus.kv(js, bus.BUCKET_DIRECTORY)

        async def health() -> dict[str, object]:
            database = "ok" if await queries.ping() else "unavailable"
            return {"nats": "ok" if nc.is_connected else "disconnected", "database": database}

        api = Api(queries, verifier, directory, available=lambda: nc.is_connected)
        extra = [
            *StatsApi(api, StatsQueries(read_pool)).routes(),
            *RecordPage(queries, verifier).routes(),
        ]
        runner = ConsumerRunner(nc, js, pool, settings.database_url, settings.consumer)
        # ConsumerRunner reads the stream; the broker only describes the subscription.
        described = declare(described_broker("projector"), settings.consumer)
        app = build_app(
            api,
            health,
            extra,
            asyncapi=asyncapi_document(described, "projector"),
            details=lambda: {"partitions": runner.describe()},
        )
        server = HttpServer(app, settings.host, settings.port)
        await server.start()
    except BaseException:
        for opened in pools:
            await opened.close()
        await bus.close(nc)
        raise
    tasks = [
        asyncio.create_task(
            PipelineGauges(nc, js, queries.ping).run(settings.lag_interval), name="pipeline-gauges"
        ),
    ]
    if settings.consume:
        tasks += [
            asyncio.create_task(runner.run(), name=CONSUMER_TASK),
            asyncio.create_task(
                report_lag(js, runner, settings.lag_interval), name="projector-lag"
            ),
        ]
    log.info("projector started", port=server.port, consuming=settings.consume)
    return Service(nc=nc, pools=pools, server=server, runner=runner, tasks=tasks)


async def _prepare_to_consume(js: JetStreamContext, pool: asyncpg.Pool, settings: Settings) -> None:
    """The stream and the schema in place, and the partition layout the one folded with."""
    try:
        await js.stream_info(STREAM)
    except NotFoundError:
        await bus.ensure_topology(js)
    if settings.migrate:
        async with pool.acquire() as conn:
            applied = await migrate(conn)
        if applied:
            log.info("migrations applied", migrations=applied)
    async with pool.acquire() as conn:
        stored = await postgres.positions(conn)
    conflicting = other_layouts(settings.consumer.name, settings.consumer.partitions, stored)
    if conflicting:
        raise ConfigError(
            f"MAILFOLD_PROJECTOR_PARTITIONS={settings.consumer.partitions} but the projection "
            f"was folded with another number of partitions ({', '.join(conflicting)}); "
            f"run `mailfold repartition {settings.consumer.partitions}` with every projector "
            "stopped (docs/operations.md)"
        )


def tune_gc() -> None:
    """Collect cyclic garbage less often: the fold allocates many small objects per event while
    the state cache keeps a large set alive, and at the default threshold (700 allocations) the
    collector's scans took about a third of the CPU. The fold's objects form no cycles; reference
    counting frees them as before."""
    gc.set_threshold(20_000, 20, 20)


def main() -> None:
    """`mailfold serve projector`."""
    tune_gc()
    settings = Settings.from_env()
    configure_logging("projector", level=settings.log_level, json=settings.log_json)
    run_until_signalled(lambda: start(settings))
