"""The mailbox service's composition root: settings from the environment, wiring, start, stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Final

import msgspec
from faststream.nats import NatsBroker
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from mailfold.events import (
    EmailBounced,
    EmailCaptured,
    EmailDeleted,
    EmailReceived,
    EmailSent,
    Event,
)
from mailfold.mailbox import metrics
from mailfold.mailbox.adapters import store as store_adapter
from mailfold.mailbox.adapters.bounces import failed_recipients
from mailfold.mailbox.entrypoints.http import mailbox_app
from mailfold.mailbox.service_layer.coordinator import Coordinator
from mailfold.mailbox.service_layer.deletion import delete_email
from mailfold.mailbox.service_layer.sync import Options, Ports
from mailfold.runtime import bus, directory
from mailfold.runtime.broker import asyncapi_document, declare_publishers, new_broker
from mailfold.runtime.broker import close as broker_close
from mailfold.runtime.directory import (
    AddressCache,
    IncomingSettings,
    MailboxSettings,
)
from mailfold.runtime.logging import configure_logging, get_logger
from mailfold.runtime.ops import HttpServer
from mailfold.runtime.orgs import TokenVerifier
from mailfold.runtime.service import run_until_signalled
from mailfold.runtime.settings import CommonSettings, ConfigError, NatsAuth, from_env, setting

log = get_logger(__name__)
_mailbox_dec = msgspec.json.Decoder(MailboxSettings)
MAX_IDLE_S: Final = 29 * 60.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the mailbox service reads from the environment (see docs/mailbox.md)."""

    nats_url: str
    host: str = setting("MAILFOLD_HTTP_HOST", "127.0.0.1")
    port: int = setting("MAILFOLD_MAILBOX_PORT", 8005, minimum=0)
    lease_s: float = setting("MAILFOLD_MAILBOX_LEASE_S", 15.0, positive=True)
    poll_s: float = setting("MAILFOLD_MAILBOX_POLL_S", 60.0, positive=True)
    idle_s: float = setting("MAILFOLD_MAILBOX_IDLE_S", 25 * 60.0, positive=True)
    max_resets: int = setting("MAILFOLD_MAILBOX_MAX_RESETS", 3, minimum=1)
    timeout_s: float = setting("MAILFOLD_MAILBOX_TIMEOUT_S", 30.0, positive=True)
    backoff_max_s: float = setting("MAILFOLD_MAILBOX_BACKOFF_MAX_S", 300.0, positive=True)
    rescan_days: float = setting("MAILFOLD_MAILBOX_RESCAN_DAYS", 7.0)
    use_condstore: bool = setting("MAILFOLD_MAILBOX_CONDSTORE", True)
    ca_file: str = setting("MAILFOLD_MAILBOX_CA_FILE", "")
    metric_mailboxes: int = setting("MAILFOLD_MAILBOX_METRIC_MAILBOXES", 50, minimum=1)
    nats_auth: NatsAuth = field(default_factory=NatsAuth)

    @classmethod
    def from_env(cls) -> Settings:
        """Read MAILFOLD_MAILBOX_* variables; a bad value raises ConfigError naming it."""
        common = CommonSettings.from_env()
        settings = from_env(cls, nats_url=common.nats_url, nats_auth=common.nats_auth)
        if settings.idle_s >= MAX_IDLE_S:  # servers may drop an IDLE after 29 minutes
            raise ConfigError(f"MAILFOLD_MAILBOX_IDLE_S must be below {MAX_IDLE_S:g}")
        return settings

    def options(self) -> Options:
        """The sync options these settings give."""
        context = None
        if self.ca_file:
            try:
                context = ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"MAILFOLD_MAILBOX_CA_FILE: {exc}") from exc
        return Options(
            poll_s=self.poll_s,
            idle_s=self.idle_s,
            max_resets=self.max_resets,
            timeout_s=self.timeout_s,
            backoff_max_s=self.backoff_max_s,
            rescan_days=self.rescan_days,
            use_condstore=self.use_condstore,
            tls_context=context,
        )


async def ensure_topology(js: JetStreamContext, *, replicas: int) -> None:
    """The service's bucket with `replicas` (`mailfold topology`, `dev --cluster`); a copy
    starting creates it with one when missing."""
    await bus.kv(js, store_adapter.BUCKET, replicas=replicas)


async def configured_mailboxes(orgs: KeyValue) -> dict[tuple[str, str], IncomingSettings]:
    """Every mailbox with an incoming side, by (org, user)."""
    found: dict[tuple[str, str], IncomingSettings] = {}
    for key, raw in (await bus.entries(orgs, "*.mailbox.*")).items():
        org_id, _, token = key.split(".", 2)
        if not raw:
            continue
        try:
            mailbox = _mailbox_dec.decode(raw)
        except msgspec.DecodeError:
            log.warning("mailbox settings unreadable", key=key)
            continue
        if mailbox.incoming is not None:
            user = store_adapter.untoken(token)
            found[(org_id, user)] = mailbox.incoming
    return found


PUBLISHES: Final = (EmailReceived, EmailCaptured, EmailSent, EmailBounced, EmailDeleted)


def declare(broker: NatsBroker) -> NatsBroker:
    """What the mailbox sync publishes, on `broker` (what the AsyncAPI document shows)."""
    declare_publishers(broker, "mailbox", PUBLISHES)
    return broker


@dataclass
class Service:
    """A running mailbox service."""

    broker: NatsBroker
    coordinator: Coordinator
    http: HttpServer
    addresses: AddressCache
    exporter: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self.http.port

    async def stop(self) -> None:
        """Stop answering, stop every sync and give the leases back, disconnect."""
        await self.http.stop()
        await self.addresses.stop()
        if self.exporter is not None:
            self.exporter.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.exporter
        await self.coordinator.stop()
        await broker_close(self.broker)
        log.info("mailbox stopped")


async def _export_board() -> None:
    """With workers (PROMETHEUS_MULTIPROC_DIR set), keep the sync board in the shared gauges."""
    while True:
        metrics.BOARD.export()
        await asyncio.sleep(metrics.EXPORT_INTERVAL_S)


async def build_ports(
    js: JetStreamContext,
    orgs: KeyValue,
    dir_kv: KeyValue,
    addresses: AddressCache,
    *,
    timeout_s: float,
) -> Ports:
    """The sync's ports on NATS: the shared publisher, the address index, the state bucket."""
    store = store_adapter.MailboxStore(await bus.kv(js, store_adapter.BUCKET))

    async def publish(events: Sequence[Event]) -> None:
        for error in await bus.publish_batch(js, events, ack_timeout_s=timeout_s):
            if error is not None:
                raise error

    return Ports(
        store=store,
        publish=publish,
        records_for=partial(addresses.records_of_all, dir_kv),
        # Read once per batch of messages: a changed setting applies from the next batch.
        org_settings=partial(directory.load_settings, orgs),
        save_status=partial(directory.save_mailbox_status, orgs),
        parse_bounce=failed_recipients,
    )


async def start(settings: Settings) -> Service:
    """Connect to NATS, lease and sync mailboxes, serve HTTP; port 0 picks a free port."""
    options = settings.options()
    broker = declare(new_broker(settings.nats_url, service="mailbox", auth=settings.nats_auth))
    nc = await broker.connect()
    coordinator: Coordinator | None = None

    def rescan(org_id: str) -> None:
        # A record gained (or lost) an address: the org's mailboxes re-read recent mail.
        if coordinator is not None:
            coordinator.rescan(org_id)

    addresses = AddressCache(nc, on_change=rescan)
    try:
        js = nc.jetstream()
        await bus.ensure_topology(js)
        orgs = await bus.kv(js, bus.BUCKET_ORGS)
        dir_kv = await bus.kv(js, bus.BUCKET_DIRECTORY)
        await addresses.start()
        ports = await build_ports(js, orgs, dir_kv, addresses, timeout_s=settings.timeout_s)
        metrics.BOARD.limit = settings.metric_mailboxes
        owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        coordinator = Coordinator(
            ports,
            lambda: configured_mailboxes(orgs),
            options,
            owner=owner,
            lease_s=settings.lease_s,
        )
        coordinator.start()

        async def load_incoming(org_id: str, user: str) -> IncomingSettings | None:
            mailbox = await directory.load_mailbox(orgs, org_id, user)
            return None if mailbox is None else mailbox.incoming

        async def health() -> dict[str, object]:
            return {"nats": "ok" if nc.is_connected else "disconnected"}

        app = mailbox_app(
            partial(delete_email, ports, load_incoming, options),
            TokenVerifier(orgs),
            health,
            asyncapi=asyncapi_document(broker, "mailbox"),
        )
        http = HttpServer(app, settings.host, settings.port)
        await http.start()
    except BaseException:
        if coordinator is not None:
            await coordinator.stop()
        await addresses.stop()
        await broker_close(broker)
        raise
    log.info("mailbox listening", host=settings.host, port=http.port, owner=owner)
    exporter = (
        asyncio.create_task(_export_board()) if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else None
    )
    return Service(broker, coordinator, http, addresses, exporter)


def main() -> None:
    """`mailfold serve mailbox`: run until SIGINT or SIGTERM."""
    common = CommonSettings.from_env()
    configure_logging("mailbox", level=common.log_level, json=common.log_json)
    run_until_signalled(lambda: start(Settings.from_env()))
