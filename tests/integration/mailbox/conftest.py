"""A real Dovecot (IMAP and POP3), the mailbox service on the session's nats-server, helpers."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import TypeVar

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from tests.nats_users import service_auth

from mailfold.cli.dovecot import MISSING_HINT, Dovecot, dovecot_binary
from mailfold.events import STREAM, AnyEvent, Module, decode
from mailfold.mailbox.bootstrap import Service, Settings, start
from mailfold.runtime import bus, directory
from mailfold.runtime.directory import IncomingSettings, MailboxSettings, RecordEntry
from mailfold.runtime.orgs import create_org

MAIL_DOMAIN = "mailfold.localhost"


def dovecot_folder() -> Path:
    """A folder the mail account can reach: under root, Dovecot's mail processes are not root,
    and pytest's own temporary folders are closed to other users."""
    folder = Path(tempfile.mkdtemp(prefix="mailfold-dovecot-"))
    folder.chmod(0o711)
    return folder


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """One Dovecot for the session; each test has users of its own."""
    if dovecot_binary() is None:
        pytest.fail(MISSING_HINT)
    folder = dovecot_folder()
    try:
        with Dovecot(folder) as server:
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def nats_client(nats_url: str) -> AsyncIterator[Client]:
    nc = await bus.connect(nats_url, "mailbox-tests", reconnect=False)
    await bus.ensure_topology(nc.jetstream())
    yield nc
    await bus.close(nc)


@pytest.fixture
def js(nats_client: Client) -> JetStreamContext:
    return nats_client.jetstream()


def service_settings(nats_url: str, **overrides: object) -> Settings:
    """Quick rounds for tests: a sync a second, short leases, no long backoff."""
    values: dict[str, object] = {
        "nats_url": nats_url,
        "nats_auth": service_auth("mailbox"),
        "port": 0,
        "lease_s": 2.0,
        "poll_s": 0.5,
        "idle_s": 0.5,
        "timeout_s": 10.0,
        "backoff_max_s": 1.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def mailbox_service(nats_client: Client, nats_url: str) -> AsyncIterator[Service]:
    service = await start(service_settings(nats_url))
    yield service
    await service.stop()


StartCopy = Callable[[], Awaitable[Service]]


@pytest.fixture
async def start_copy(nats_client: Client, nats_url: str) -> AsyncIterator[StartCopy]:
    """`await start_copy()`: one more copy of the service; all are stopped after the test."""
    started: list[Service] = []

    async def make() -> Service:
        service = await start(service_settings(nats_url))
        started.append(service)
        return service

    yield make
    for service in started:
        await service.stop()


async def read_events(js: JetStreamContext, org_id: str) -> list[AnyEvent]:
    """Every event of one org in MAIL_EVENTS, in stream order."""
    found: list[AnyEvent] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(STREAM, seq=seq, subject=f"mail.events.{org_id}.>", next=True)
        except NotFoundError:
            return found
        found.append(decode(msg.data or b""))
        seq = (msg.seq or seq) + 1


T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T | None]], timeout: float = 30.0, what: str = "condition"
) -> T:
    """Poll until `check` returns something other than None."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result is not None:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def message(
    sender: str,
    to: str,
    subject: str,
    *,
    message_id: str | None = None,
    body: str = "Hello.",
) -> bytes:
    """A small RFC 5322 message."""
    mid = message_id or f"<{uuid.uuid4().hex}@example.net>"
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n"
        f"Date: {format_datetime(datetime.now(UTC))}\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()


def dsn(original_to: str, original_message_id: str, mailbox_address: str) -> bytes:
    """An RFC 3464 delivery status notification for a message this mailbox sent."""
    boundary = "dsn-" + uuid.uuid4().hex
    return (
        f"From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n"
        f"To: {mailbox_address}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@mx.example.net>\r\n"
        f"Date: {format_datetime(datetime.now(UTC))}\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        f"\r\n--{boundary}\r\nContent-Type: text/plain\r\n\r\n"
        f"I'm sorry to have to inform you that your message could not be delivered.\r\n"
        f"<{original_to}>: host mx.example.org said: 550 5.1.1 <{original_to}>: "
        f"Recipient address rejected: User unknown in virtual mailbox table\r\n"
        f"\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {original_to}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        f"Remote-MTA: dns; mx.example.org\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{original_to}>: Recipient address rejected: "
        f"User unknown in virtual mailbox table\r\n"
        f"\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: {mailbox_address}\r\nTo: {original_to}\r\nSubject: Offer\r\n"
        f"Message-ID: {original_message_id}\r\n"
        f"\r\n--{boundary}--\r\n"
    ).encode()


@dataclass
class Org:
    """A test org with its buckets, records and mailboxes."""

    org_id: str
    token: str
    js: JetStreamContext
    dovecot: Dovecot
    users: list[str] = field(default_factory=list)

    async def record(self, record_id: str, module: Module, *addresses: str) -> None:
        directory_kv = await bus.kv(self.js, bus.BUCKET_DIRECTORY)
        await directory.put_record(
            directory_kv,
            self.org_id,
            RecordEntry(record_id=record_id, module=module, addresses=addresses),
        )

    async def mailbox(
        self,
        user: str,
        *,
        protocol: str = "imap",
        password: str = "secret-pw",
        login_password: str | None = None,
        security: str = "none",
    ) -> str:
        """A Dovecot user and the org's mailbox settings for it; the Dovecot user name.

        `security` is the mailbox's: none, starttls (the plain ports), or tls (IMAPS, POP3S)."""
        login = f"{user}-{self.org_id}"
        self.users.append(user)
        self.dovecot.add_user(login, password)
        d = self.dovecot
        if security == "tls":
            port = d.pop3s_port if protocol == "pop3" else d.imaps_port
        else:
            port = d.pop3_port if protocol == "pop3" else d.imap_port
        orgs = await bus.kv(self.js, bus.BUCKET_ORGS)
        await directory.save_mailbox(
            orgs,
            self.org_id,
            user,
            MailboxSettings(
                smtp_host="127.0.0.1",
                username=login,
                secret=password,
                email=f"{user}@acme.example",
                incoming=IncomingSettings(
                    protocol=protocol,
                    host="127.0.0.1",
                    port=port,
                    security=security,
                    username=login,
                    secret=login_password if login_password is not None else password,
                ),
            ),
        )
        return login

    async def events(self) -> list[AnyEvent]:
        return await read_events(self.js, self.org_id)

    async def wait_for(self, kind: type[T], count: int = 1, timeout: float = 30.0) -> list[T]:
        """The org's events of one type, once there are at least `count` of them."""

        async def check() -> list[T] | None:
            found: list[T] = [e for e in await self.events() if isinstance(e, kind)]
            return found if len(found) >= count else None

        return await eventually(check, timeout, f"{count} {kind.__name__}")

    async def status(self, user: str, state: str) -> directory.MailboxStatus:
        """The mailbox's status, once it is in `state`."""
        orgs = await bus.kv(self.js, bus.BUCKET_ORGS)

        async def check() -> directory.MailboxStatus | None:
            found = await directory.load_mailbox_status(orgs, self.org_id, user)
            return found if found is not None and found.state == state else None

        return await eventually(check, what=f"mailbox {user} {state}")


@pytest.fixture
async def org(js: JetStreamContext, org_id: str, dovecot: Dovecot) -> AsyncIterator[Org]:
    """A new org; its mailboxes are removed afterwards, so later tests' services leave them be."""
    orgs = await bus.kv(js, bus.BUCKET_ORGS)
    token = await create_org(orgs, org_id)
    created = Org(org_id, token, js, dovecot)
    yield created
    for user in created.users:
        await orgs.delete(directory.mailbox_key(org_id, user))


MessageFactory = Callable[..., bytes]
BounceFactory = Callable[[str, str, str], bytes]


@pytest.fixture
def mail() -> MessageFactory:
    """`mail(sender, to, subject, message_id=..., body=...)`: a small message."""
    return message


@pytest.fixture
def bounce_report() -> BounceFactory:
    """`bounce_report(original_to, original_message_id, mailbox_address)`: an RFC 3464 DSN."""
    return dsn
