"""Real servers for the sender's integration tests: scripted SMTP servers on the test's own loop,
a nats-server of the test's own, and helpers to publish EmailComposed and read the events back."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from tests.nats_users import service_auth

from mailfold.cli.embedded import EmbeddedNats
from mailfold.events import (
    AnyEvent,
    AttachmentRef,
    EmailComposed,
    Keyring,
    Source,
    TrackingClaims,
    Transport,
    decode,
    new_id,
)
from mailfold.runtime import bus
from mailfold.runtime.content import put_content
from mailfold.runtime.directory import (
    MailboxSettings,
    OrgSettings,
    load_verp_record,
    save_mailbox,
    save_settings,
)
from mailfold.runtime.settings import CommonSettings
from mailfold.sender.bootstrap import Clock, Service, Settings, start, utc_now
from mailfold.sender.domain.delivery import RetryPolicy
from mailfold.sender.domain.routes import Hop, Routes

TRACKING_KEYS = "t1:sender-integration-tests-key"
KEYRING = Keyring.parse(TRACKING_KEYS)
TRACKER_URL = "https://track.example.net"
MAIL_DOMAIN = "mail.example.net"


@dataclass
class Received:
    """One message as an SMTP server got it."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool = False

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    def html(self) -> str | None:
        part = self.message.get_body(("html",))
        return None if part is None else str(part.get_content())


@dataclass
class MxHandler:
    """An aiosmtpd handler that answers RCPT and DATA as scripted, per recipient address."""

    rcpt_script: dict[str, list[str]] = field(default_factory=dict)
    data_reply: str = "250 2.0.0 Ok: queued as 4F2A"
    hold_data: asyncio.Event | None = None  # when set, DATA for the addresses in hold_once waits
    hold_once: set[str] = field(default_factory=set)
    received: list[Received] = field(default_factory=list)
    rcpt_attempts: dict[str, int] = field(default_factory=dict)
    data_started: asyncio.Event = field(default_factory=asyncio.Event)
    logins: list[tuple[str, str]] = field(default_factory=list)
    connections: int = 0

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        key = address.lower()
        self.rcpt_attempts[key] = self.rcpt_attempts.get(key, 0) + 1
        script = self.rcpt_script.get(key)
        if script:
            answer = script.pop(0) if len(script) > 1 else script[0]
            if not answer.startswith("250"):
                return answer
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        tls = session.ssl is not None
        self.received.append(
            Received(str(envelope.mail_from), list(envelope.rcpt_tos), content, tls)
        )
        held = {r.lower() for r in envelope.rcpt_tos} & self.hold_once
        if held and self.hold_data is not None:
            self.hold_once -= held
            self.data_started.set()
            await self.hold_data.wait()
        return self.data_reply

    def count_for(self, address: str) -> int:
        """How many messages this server took for one recipient."""
        return sum(address.lower() in (r.lower() for r in m.rcpt_tos) for m in self.received)


@dataclass
class MxServer:
    """A running scripted SMTP server."""

    handler: MxHandler
    server: asyncio.Server

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])


MxFactory = Callable[..., Awaitable[MxServer]]


@pytest.fixture
async def mx() -> AsyncIterator[MxFactory]:
    """Starts scripted SMTP servers (aiosmtpd on this loop) on free loopback ports."""
    servers: list[asyncio.Server] = []

    async def factory(
        handler: MxHandler | None = None,
        *,
        auth: dict[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        idle_timeout: float = 300.0,
    ) -> MxServer:
        handler = handler or MxHandler()
        loop = asyncio.get_running_loop()

        def authenticator(
            server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            assert auth is not None
            if not isinstance(data, LoginPassword):
                return AuthResult(success=False, handled=False)
            login, password = (
                v.decode() if isinstance(v, bytes) else str(v) for v in (data.login, data.password)
            )
            ok = auth.get(login) == password
            if ok:
                handler.logins.append((mechanism, login))
            return AuthResult(success=ok, handled=False)

        def protocol() -> SMTP:
            handler.connections += 1
            if auth is None:
                return SMTP(
                    handler,
                    hostname="mx.test",
                    tls_context=tls_context,
                    timeout=idle_timeout,
                    loop=loop,
                )
            return SMTP(
                handler,
                hostname="submit.test",
                authenticator=authenticator,
                auth_require_tls=False,
                loop=loop,
            )

        server = await loop.create_server(protocol, "127.0.0.1", 0)
        servers.append(server)
        return MxServer(handler, server)

    yield factory
    for server in servers:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)


@pytest.fixture
async def dropping_server() -> AsyncIterator[int]:
    """A server that accepts a connection and closes it at once, saying nothing."""

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


@dataclass
class Bus:
    """A connection to the test's own nats-server, with the topology in place."""

    nc: Client
    js: JetStreamContext
    url: str
    keys: Keyring = KEYRING
    tracker_url: str = TRACKER_URL
    mail_domain: str = MAIL_DOMAIN

    async def verp_claims(self, mail_from: str) -> TrackingClaims:
        """The claims of a return path's short VERP token, through the record the sender wrote."""
        local = mail_from.partition("@")[0]
        assert local.lower().startswith("bounce+")
        ticket = self.keys.open_verp(local[len("bounce+") :])
        assert ticket is not None, f"{mail_from} carries no short VERP token"
        assert len(local) <= 64
        sender_kv = await bus.kv(self.js, bus.BUCKET_SENDER)
        return self.keys.verify_verp_ticket(ticket, await load_verp_record(sender_kv, ticket.ref))

    async def settings(self, org_id: str, **fields: Any) -> None:
        orgs = await bus.kv(self.js, bus.BUCKET_ORGS)
        await save_settings(orgs, org_id, OrgSettings(mail_domain=MAIL_DOMAIN, **fields))

    async def mailbox(self, org_id: str, user: str, mailbox: MailboxSettings) -> None:
        orgs = await bus.kv(self.js, bus.BUCKET_ORGS)
        await save_mailbox(orgs, org_id, user, mailbox)

    async def content(self, data: bytes, content_type: str) -> tuple[str, int]:
        ref = await put_content(await bus.objects(self.js), data, content_type)
        return ref.sha256, ref.size

    async def compose(
        self,
        org_id: str,
        *,
        to: tuple[str, ...] = (),
        cc: tuple[str, ...] = (),
        bcc: tuple[str, ...] = (),
        html: str | None = None,
        text: str | None = "Hello",
        source: Source = Source.INDIVIDUAL,
        transport: Transport = Transport.CRM_SERVERS,
        attachments: tuple[AttachmentRef, ...] = (),
        publish: bool = True,
        **fields: Any,
    ) -> EmailComposed:
        """Store the bodies, build an EmailComposed and (by default) publish it."""
        store = await bus.objects(self.js)
        html_ref = None if html is None else await put_content(store, html.encode(), "text/html")
        text_ref = None if text is None else await put_content(store, text.encode(), "text/plain")
        fields.setdefault("subject", "Quarterly update")
        fields.setdefault("from_addr", "sales@crm.example.com")
        event = EmailComposed(
            event_id=new_id(),
            org_id=org_id,
            email_id=new_id(),
            occurred_at=datetime.now(UTC),
            producer="ingest",
            source=source,
            transport=transport,
            to=to,
            cc=cc,
            bcc=bcc,
            html=html_ref,
            text=text_ref,
            attachments=attachments,
            **fields,
        )
        if publish:
            await bus.publish_event(self.js, event)
        return event

    async def events(
        self,
        org_id: str,
        until: Callable[[list[AnyEvent]], bool],
        *,
        timeout: float = 30.0,
        settle: float = 0.0,
    ) -> list[AnyEvent]:
        """The org's events on MAIL_EVENTS, read from the start until `until` holds.

        With `settle`, keep reading that many seconds more, so that an extra event would show.
        """
        sub = await self.js.subscribe(
            f"mail.events.{org_id}.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        seen: list[AnyEvent] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while not until(seen):
                left = deadline - loop.time()
                if left <= 0:
                    kinds = [e.event_type for e in seen]
                    raise AssertionError(f"condition not met in {timeout}s; events: {kinds}")
                with contextlib.suppress(TimeoutError):
                    msg = await sub.next_msg(timeout=min(left, 1.0))
                    seen.append(decode(msg.data))
            end = loop.time() + settle
            while (left := end - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    msg = await sub.next_msg(timeout=min(left, 0.5))
                    seen.append(decode(msg.data))
        finally:
            await sub.unsubscribe()
        return seen


@pytest.fixture
async def nats_bus(fresh_nats: EmbeddedNats) -> AsyncIterator[Bus]:
    """A connection to a nats-server of this test's own (the sender consumes every email on it)."""
    nc = await bus.connect(fresh_nats.url, "sender-tests")
    js = nc.jetstream()
    await bus.ensure_topology(js)
    yield Bus(nc, js, fresh_nats.url)
    await bus.close(nc)


def sender_settings(
    nats_url: str,
    routes: dict[str, int] | None = None,
    *,
    retry: RetryPolicy | None = None,
    **fields: Any,
) -> Settings:
    """Settings for a sender in a test: port 0, routes to local servers, quick retries."""
    table = {domain: Hop("127.0.0.1", port) for domain, port in (routes or {}).items()}
    fields.setdefault("ack_wait_s", 5.0)
    fields.setdefault("smtp_timeout_s", 20.0)
    return Settings(
        common=CommonSettings(
            nats_url=nats_url,
            nats_auth=service_auth("sender"),
            log_level="warning",
            log_json=None,
            tracking_keys=TRACKING_KEYS,
            public_tracker_url=TRACKER_URL,
        ),
        http_port=0,
        routes=Routes(table),
        retry=retry or RetryPolicy(base_s=0.2, factor=2.0, cap_s=1.0, max_age_s=60.0),
        helo_name="sender.test",
        **fields,
    )


SenderFactory = Callable[..., Awaitable[Service]]


@pytest.fixture
async def sender(nats_bus: Bus) -> AsyncIterator[SenderFactory]:
    """Starts sender services on the test's nats-server; all are stopped after the test."""
    services: list[Service] = []

    async def factory(
        routes: dict[str, int] | None = None,
        *,
        clock: Clock = utc_now,
        retry: RetryPolicy | None = None,
        **fields: Any,
    ) -> Service:
        service = await start(
            sender_settings(nats_bus.url, routes, retry=retry, **fields), clock=clock
        )
        services.append(service)
        return service

    yield factory
    for service in services:
        await service.stop()
