"""The ingest service's composition root: settings, wiring, start and stop."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Final

from faststream.nats import NatsBroker

from mailfold.bounces import ParseFailed
from mailfold.events import Keyring
from mailfold.ingest.adapters.nats import (
    PUBLISHES,
    KvDirectory,
    KvIdempotency,
    KvVerpRecords,
    ObjectContentStore,
    count_failure,
    count_published,
)
from mailfold.ingest.adapters.usage import KvAttachmentUsage
from mailfold.ingest.entrypoints.http import build_app
from mailfold.ingest.entrypoints.smtp import SmtpHandler, SmtpServer
from mailfold.ingest.metrics import BOUNCE_PARSER_ERRORS
from mailfold.ingest.service_layer.mail import MailIngress
from mailfold.ingest.service_layer.ports import Ports
from mailfold.runtime import bus
from mailfold.runtime.broker import asyncapi_document, declare_publishers, new_broker
from mailfold.runtime.broker import close as broker_close
from mailfold.runtime.directory import AddressCache, OrgCache
from mailfold.runtime.logging import configure_logging, get_logger
from mailfold.runtime.ops import HttpServer
from mailfold.runtime.orgs import TokenVerifier
from mailfold.runtime.publisher import EventPublisher
from mailfold.runtime.service import run_until_signalled
from mailfold.runtime.settings import CommonSettings, env_str, from_env, setting

SERVICE: Final = "ingest"
log = get_logger("mailfold.ingest")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service reads from the environment (see docs/ingest.md)."""

    common: CommonSettings
    http_host: str = setting("MAILFOLD_HTTP_HOST", "127.0.0.1")
    http_port: int = setting("MAILFOLD_INGEST_HTTP_PORT", 8001, minimum=0)
    smtp_host: str = "127.0.0.1"  # from_env: MAILFOLD_INGEST_SMTP_HOST, else the HTTP host
    smtp_port: int = setting("MAILFOLD_INGEST_SMTP_PORT", 2525, minimum=0)
    smtp_hostname: str = setting("MAILFOLD_INGEST_SMTP_HOSTNAME", "mailfold-ingest")
    smtp_max_bytes: int = setting("MAILFOLD_INGEST_SMTP_MAX_BYTES", 25 * 1024 * 1024, minimum=1)
    smtp_max_recipients: int = setting("MAILFOLD_INGEST_SMTP_MAX_RECIPIENTS", 100, minimum=1)
    smtp_timeout_s: float = setting("MAILFOLD_INGEST_SMTP_TIMEOUT_S", 120.0, positive=True)
    smtp_backlog: int = setting("MAILFOLD_INGEST_SMTP_BACKLOG", 2048, minimum=1)
    smtp_max_connections: int = setting("MAILFOLD_INGEST_SMTP_MAX_CONNECTIONS", 500, minimum=1)
    publish_timeout_s: float = setting("MAILFOLD_INGEST_PUBLISH_TIMEOUT_S", 5.0, positive=True)
    reuse_port: bool = setting("MAILFOLD_REUSE_PORT", False)
    # How long a publish is retried before the client is told 503/451: a stream leader election
    # on a cluster takes a few seconds.
    publish_retry_s: float = setting("MAILFOLD_INGEST_PUBLISH_RETRY_S", 10.0, positive=True)

    @classmethod
    def from_env(cls) -> Settings:
        """Read MAILFOLD_* variables, with the defaults above where unset."""
        settings = from_env(cls, common=CommonSettings.from_env())
        smtp_host = env_str("MAILFOLD_INGEST_SMTP_HOST", settings.http_host)
        return dataclasses.replace(settings, smtp_host=smtp_host)


@dataclass
class IngestService:
    """A running ingest service: the HTTP API and the SMTP server, on one NATS connection."""

    broker: NatsBroker
    http: HttpServer
    smtp: SmtpServer
    cache: OrgCache
    addresses: AddressCache

    @property
    def http_port(self) -> int:
        """The port of the API, /healthz and /metrics."""
        return self.http.port

    @property
    def smtp_port(self) -> int:
        return self.smtp.port

    async def stop(self) -> None:
        """Stop taking mail and requests, finish what is in flight, close the NATS connection."""
        with contextlib.suppress(Exception):
            await self.smtp.stop()
        with contextlib.suppress(Exception):
            await self.http.stop()
        await self.cache.stop()
        await self.addresses.stop()
        await broker_close(self.broker)
        log.info("stopped")


def parse_error(failed: ParseFailed) -> None:
    """A bug in the bounce parser: counted and logged with the message's digest. The message
    itself is kept like any other (its events are what the parser could not read: none)."""
    BOUNCE_PARSER_ERRORS.inc()
    log.error("bounce parser failed", sha256=failed.digest, error=repr(failed.error))


def declare(broker: NatsBroker) -> NatsBroker:
    """What ingest publishes, on `broker` (what the AsyncAPI document shows)."""
    declare_publishers(broker, SERVICE, PUBLISHES)
    return broker


async def start(settings: Settings) -> IngestService:
    """Connect to NATS, make sure the topology exists, start the HTTP API and the SMTP server."""
    keyring = Keyring.parse(settings.common.tracking_keys)
    broker = declare(
        new_broker(settings.common.nats_url, service=SERVICE, auth=settings.common.nats_auth)
    )
    cache: OrgCache | None = None
    addresses: AddressCache | None = None
    try:
        nc = await broker.connect()
        js = nc.jetstream()
        await bus.ensure_topology(js)
        orgs = await bus.kv(js, bus.BUCKET_ORGS)
        cache = OrgCache(orgs)
        await cache.start()
        addresses = AddressCache(nc)
        await addresses.start()
        ports = Ports(
            publisher=EventPublisher(
                nc,
                timeout=settings.publish_timeout_s,
                within_s=settings.publish_retry_s,
                on_published=count_published,
                on_failure=count_failure,
            ),
            content=ObjectContentStore(
                await bus.objects(js), js, timeout=settings.publish_timeout_s
            ),
            directory=KvDirectory(orgs, await bus.kv(js, bus.BUCKET_DIRECTORY), cache, addresses),
            idempotency=KvIdempotency(await bus.kv(js, bus.BUCKET_IDEMPOTENCY)),
            usage=KvAttachmentUsage(await bus.kv(js, bus.BUCKET_DIRECTORY)),
        )

        async def health() -> dict[str, object]:
            return {"nats": nc.is_connected}

        http = HttpServer(
            build_app(
                ports,
                TokenVerifier(orgs),
                health,
                asyncapi=asyncapi_document(broker, SERVICE),
                available=lambda: nc.is_connected,
            ),
            settings.http_host,
            settings.http_port,
        )
        smtp = SmtpServer(
            SmtpHandler(
                MailIngress(
                    ports,
                    keyring,
                    KvVerpRecords(await bus.kv(js, bus.BUCKET_SENDER)),
                    on_parse_error=parse_error,
                ),
                max_recipients=settings.smtp_max_recipients,
                available=lambda: nc.is_connected,
            ),
            host=settings.smtp_host,
            port=settings.smtp_port,
            hostname=settings.smtp_hostname,
            data_size_limit=settings.smtp_max_bytes,
            timeout=settings.smtp_timeout_s,
            backlog=settings.smtp_backlog,
            max_connections=settings.smtp_max_connections,
            reuse_port=settings.reuse_port,
        )
        await http.start()
        try:
            await smtp.start()
        except BaseException:
            await http.stop()
            raise
    except BaseException:
        if cache is not None:
            await cache.stop()
        if addresses is not None:
            await addresses.stop()
        await broker_close(broker)
        raise
    log.info("started", http_port=http.port, smtp_port=smtp.port)
    return IngestService(broker, http, smtp, cache, addresses)


def main() -> None:
    """`mailfold serve ingest`."""
    settings = Settings.from_env()
    configure_logging(SERVICE, level=settings.common.log_level, json=settings.common.log_json)
    run_until_signalled(lambda: start(settings))
