"""The sender's composition root: settings from the environment, wiring, start and stop."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dns.asyncresolver
from faststream.nats import NatsBroker
from nats.js.errors import NotFoundError

from mailfold.events import STREAM, EmailComposed, Keyring
from mailfold.runtime import bus
from mailfold.runtime.broker import (
    asyncapi_document,
    declare_publishers,
    new_broker,
    tune_batch_fetch,
)
from mailfold.runtime.broker import close as broker_close
from mailfold.runtime.directory import OrgCache
from mailfold.runtime.logging import configure_logging
from mailfold.runtime.ops import HttpServer, ops_app
from mailfold.runtime.publisher import EventPublisher
from mailfold.runtime.service import run_until_signalled
from mailfold.runtime.settings import (
    CommonSettings,
    ConfigError,
    env_float,
    env_str,
    from_env,
    setting,
)
from mailfold.sender.adapters.dns import MxResolver
from mailfold.sender.adapters.ledger import KvLedger
from mailfold.sender.adapters.publisher import PUBLISHES, record
from mailfold.sender.adapters.smtp import ConnectionCache, DirectMailer, SubmissionMailer
from mailfold.sender.adapters.store import ContentCache, OrgSettingsStore
from mailfold.sender.domain.delivery import RetryPolicy
from mailfold.sender.domain.routes import Routes
from mailfold.sender.entrypoints import consumer
from mailfold.sender.service_layer.handlers import Disposition, Ports, handle_composed

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The wall clock, tz-aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the sender reads from the environment (see docs/sender.md)."""

    common: CommonSettings
    routes: Routes = field(default_factory=Routes)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    http_host: str = setting("MAILFOLD_HTTP_HOST", "127.0.0.1")
    http_port: int = setting("MAILFOLD_SENDER_PORT", 8004, minimum=0)
    concurrency: int = setting("MAILFOLD_SENDER_CONCURRENCY", 32, minimum=1)
    ack_wait_s: float = setting("MAILFOLD_SENDER_ACK_WAIT_S", 60.0, positive=True)
    max_pending: int = setting("MAILFOLD_SENDER_MAX_PENDING", 10_000, minimum=1)
    smtp_timeout_s: float = setting("MAILFOLD_SENDER_SMTP_TIMEOUT_S", 60.0, positive=True)
    helo_name: str = setting("MAILFOLD_SENDER_HELO_NAME", "")
    consumer: str = setting("MAILFOLD_SENDER_CONSUMER", "sender")
    content_cache_bytes: int = 64 * 1024 * 1024
    smtp_cache_idle_s: float = setting("MAILFOLD_SENDER_SMTP_CACHE_IDLE_S", 5.0, positive=True)
    smtp_cache_uses: int = setting("MAILFOLD_SENDER_SMTP_CACHE_USES", 100, minimum=1)

    @classmethod
    def from_env(cls) -> Settings:
        """Read MAILFOLD_* variables; raises ConfigError naming a bad one."""
        try:
            routes = Routes.parse(env_str("MAILFOLD_SMTP_ROUTES", ""))
        except ValueError as exc:
            raise ConfigError(f"MAILFOLD_SMTP_ROUTES: {exc}") from exc
        default = RetryPolicy()
        retry = RetryPolicy(
            base_s=_positive("MAILFOLD_SENDER_RETRY_BASE_S", default.base_s),
            factor=_positive("MAILFOLD_SENDER_RETRY_FACTOR", default.factor),
            cap_s=_positive("MAILFOLD_SENDER_RETRY_CAP_S", default.cap_s),
            max_age_s=_positive("MAILFOLD_SENDER_MAX_AGE_S", default.max_age_s),
        )
        return from_env(cls, common=CommonSettings.from_env(), routes=routes, retry=retry)


def _positive(name: str, default: float) -> float:
    value = env_float(name, default)
    if value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value}")
    return value


@dataclass
class Service:
    """A running sender."""

    broker: NatsBroker
    pool: consumer.Pool
    http: HttpServer
    direct: DirectMailer
    orgs: OrgCache
    grace_s: float = 10.0

    @property
    def port(self) -> int:
        """The bound HTTP port (/healthz, /metrics)."""
        return self.http.port

    async def stop(self) -> None:
        """Stop pulling, let in-flight emails finish briefly, close everything."""
        self.pool.close()  # emails waiting for a slot go back to the stream at once
        for subscriber in self.broker.subscribers:
            await subscriber.stop()
        await self.pool.drain(self.grace_s)
        await broker_close(self.broker)
        await self.orgs.stop()
        await self.direct.close()
        await self.http.stop()


def declare(broker: NatsBroker, handle: consumer.Handle, settings: Settings) -> consumer.Pool:
    """The sender's subscriber and publishers, on `broker` (also what AsyncAPI documents)."""
    pool = consumer.subscribe(
        broker,
        handle,
        durable=settings.consumer,
        concurrency=settings.concurrency,
        ack_wait=settings.ack_wait_s,
        max_pending=settings.max_pending,
    )
    declare_publishers(broker, "sender", PUBLISHES)
    return pool


async def start(
    settings: Settings,
    *,
    clock: Clock = utc_now,
    resolver: dns.asyncresolver.Resolver | None = None,
) -> Service:
    """Connect, wire the handler to its adapters, start consuming and serving ops endpoints."""
    keys = Keyring.parse(settings.common.tracking_keys)
    broker = new_broker(settings.common.nats_url, service="sender", auth=settings.common.nats_auth)
    direct: DirectMailer | None = None
    cache: OrgCache | None = None
    try:
        nc = await broker.connect()
        js = nc.jetstream()
        try:
            await js.stream_info(STREAM)
        except NotFoundError:
            await bus.ensure_topology(js)  # a fresh server (dev, tests): create what is missing
        ledger = KvLedger(await bus.kv(js, bus.BUCKET_SENDER))
        orgs = await bus.kv(js, bus.BUCKET_ORGS)
        cache = OrgCache(orgs)
        await cache.start()
        directory = OrgSettingsStore(orgs, cache)
        content = ContentCache(await bus.objects(js), settings.content_cache_bytes)
        helo = settings.helo_name or socket.gethostname()
        direct = DirectMailer(
            settings.routes,
            MxResolver(resolver),
            helo=helo,
            timeout=settings.smtp_timeout_s,
            cache=ConnectionCache(
                idle_s=settings.smtp_cache_idle_s, max_uses=settings.smtp_cache_uses
            ),
        )
        ports = Ports(
            publish=EventPublisher(nc, tries=5, on_published=record),
            ledger=ledger,
            content=content,
            settings=directory.settings,
            mailbox=directory.mailbox,
            direct=direct,
            submission=SubmissionMailer(helo=helo, timeout=settings.smtp_timeout_s),
            keys=keys,
            tracker_url=settings.common.public_tracker_url,
            retry=settings.retry,
            clock=clock,
        )

        async def handle(composed: EmailComposed, redelivered: bool) -> Disposition:
            return await handle_composed(composed, ports, redelivered=redelivered)

        pool = declare(broker, handle, settings)
        await broker.start()
        for subscriber in broker.subscribers:
            tune_batch_fetch(subscriber)

        async def health() -> dict[str, object]:
            running = all(sub.running for sub in broker.subscribers)
            return {
                "nats": "ok" if nc.is_connected else "disconnected",
                "consumer": "ok" if running else "stopped",
            }

        app = ops_app(health, asyncapi=asyncapi_document(broker, "sender"))
        http = HttpServer(app, settings.http_host, settings.http_port)
        await http.start()
    except BaseException:
        await broker_close(broker)
        if cache is not None:
            await cache.stop()
        if direct is not None:
            await direct.close()
        raise
    return Service(broker=broker, pool=pool, http=http, direct=direct, orgs=cache)


def main() -> None:
    """`mailfold serve sender`."""
    settings = Settings.from_env()
    configure_logging("sender", level=settings.common.log_level, json=settings.common.log_json)
    run_until_signalled(lambda: start(settings))
