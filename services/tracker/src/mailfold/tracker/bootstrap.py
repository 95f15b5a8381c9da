"""The tracker's composition root: settings from the environment, wiring, start and stop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from faststream.nats import NatsBroker

from mailfold.events import EmailClicked, EmailOpened, Keyring
from mailfold.runtime import bus
from mailfold.runtime.broker import asyncapi_document, declare_publishers, new_broker
from mailfold.runtime.broker import close as broker_close
from mailfold.runtime.logging import configure_logging, get_logger
from mailfold.runtime.ops import HttpServer, ops_app
from mailfold.runtime.service import run_until_signalled
from mailfold.runtime.settings import (
    CommonSettings,
    ConfigError,
    NatsAuth,
    env_str,
    from_env,
    setting,
)
from mailfold.tracker.adapters.publisher import BufferedPublisher
from mailfold.tracker.domain.behaviour import BurstWindow
from mailfold.tracker.domain.network import IPNetwork, NetworkSet, parse_networks
from mailfold.tracker.domain.rules import RULES, Classifier, DetectionRule, apple_egress_rule
from mailfold.tracker.entrypoints.http import tracker_app
from mailfold.tracker.metrics import count_recorded
from mailfold.tracker.service_layer.handlers import Tracker

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the tracker reads from the environment (see docs/tracker.md)."""

    nats_url: str
    tracking_keys: str
    host: str = setting("MAILFOLD_HTTP_HOST", "127.0.0.1")
    port: int = setting("MAILFOLD_TRACKER_PORT", 8002, minimum=0)
    buffer: int = setting("MAILFOLD_TRACKER_BUFFER", 100_000, minimum=1)
    trusted_proxies: tuple[IPNetwork, ...] = ()
    early_click_s: float = setting("MAILFOLD_TRACKER_EARLY_CLICK_S", 5.0)
    flush_timeout_s: float = setting("MAILFOLD_TRACKER_FLUSH_TIMEOUT_S", 10.0)
    publish_timeout_s: float = setting("MAILFOLD_TRACKER_PUBLISH_TIMEOUT_S", 5.0, positive=True)
    apple_egress_file: str = setting("MAILFOLD_TRACKER_APPLE_EGRESS_FILE", "")
    rules: tuple[DetectionRule, ...] = field(default=RULES)
    nats_auth: NatsAuth = field(default_factory=NatsAuth)

    @classmethod
    def from_env(cls) -> Settings:
        """Read MAILFOLD_* variables; a bad value raises ConfigError naming the variable."""
        common = CommonSettings.from_env()
        proxies = env_str("MAILFOLD_TRACKER_TRUSTED_PROXIES", "")
        try:
            trusted = parse_networks(proxies)
        except ValueError as exc:
            raise ConfigError(f"MAILFOLD_TRACKER_TRUSTED_PROXIES: {exc}") from exc
        return from_env(
            cls,
            nats_url=common.nats_url,
            nats_auth=common.nats_auth,
            tracking_keys=common.tracking_keys,
            trusted_proxies=trusted,
        )

    def keyring(self) -> Keyring:
        """The tracking keys, refused with a clear message when malformed."""
        try:
            return Keyring.parse(self.tracking_keys)
        except ValueError as exc:
            raise ConfigError(f"MAILFOLD_TRACKING_KEYS: {exc}") from exc

    def all_rules(self) -> tuple[DetectionRule, ...]:
        """The detection rules, with Apple's egress ranges when a file is configured."""
        if not self.apple_egress_file:
            return self.rules
        try:
            lines = Path(self.apple_egress_file).read_text().splitlines()
            return (*self.rules, apple_egress_rule(lines))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"MAILFOLD_TRACKER_APPLE_EGRESS_FILE: {exc}") from exc


@dataclass
class Service:
    """A running tracker."""

    broker: NatsBroker
    publisher: BufferedPublisher
    tracker: Tracker
    http: HttpServer
    flush_timeout_s: float

    @property
    def port(self) -> int:
        return self.http.port

    async def stop(self) -> None:
        """Stop answering, decide held clicks, publish the buffer (bounded wait), disconnect."""
        await self.http.stop()
        self.tracker.release_held()
        await self.publisher.stop(self.flush_timeout_s)
        await broker_close(self.broker)
        log.info("tracker stopped")


def declare(broker: NatsBroker) -> NatsBroker:
    """What the tracker publishes, on `broker` (what the AsyncAPI document shows)."""
    declare_publishers(broker, "tracker", (EmailOpened, EmailClicked))
    return broker


async def start(settings: Settings) -> Service:
    """Connect to NATS, start the publisher, then serve HTTP; port 0 picks a free port."""
    keyring = settings.keyring()
    classifier = Classifier(settings.all_rules())
    broker = declare(new_broker(settings.nats_url, service="tracker", auth=settings.nats_auth))
    publisher: BufferedPublisher | None = None
    try:
        nc = await broker.connect()
        js = nc.jetstream()
        await bus.ensure_topology(js)

        publisher = BufferedPublisher(
            partial(bus.publish_batch, js, ack_timeout_s=settings.publish_timeout_s),
            capacity=settings.buffer,
        )
        publisher.start()
        tracker = Tracker(
            keyring=keyring,
            classifier=classifier,
            bursts=BurstWindow(),
            emit=count_recorded(publisher.offer),
            later=asyncio.get_running_loop().call_later,
            early_click_s=settings.early_click_s,
        )
        running = publisher

        async def health() -> dict[str, object]:
            return {
                "nats": "ok" if nc.is_connected else "disconnected",
                "publisher": "ok" if running.running else "stopped",
            }

        ops = ops_app(health, asyncapi=asyncapi_document(broker, "tracker"))
        app = tracker_app(tracker, ops, NetworkSet(settings.trusted_proxies))
        http = HttpServer(app, settings.host, settings.port)
        await http.start()
    except BaseException:
        if publisher is not None:
            await publisher.stop(0)
        await broker_close(broker)
        raise
    log.info("tracker listening", host=settings.host, port=http.port, buffer=settings.buffer)
    return Service(broker, publisher, tracker, http, settings.flush_timeout_s)


def main() -> None:
    """`mailfold serve tracker`: run until SIGINT or SIGTERM."""
    common = CommonSettings.from_env()
    configure_logging("tracker", level=common.log_level, json=common.log_json)
    run_until_signalled(lambda: start(Settings.from_env()))
