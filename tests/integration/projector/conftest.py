"""Fixtures for the projector against its own nats-server and a fresh PostgreSQL database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from tests.nats_users import service_auth, service_env
from tests.processes import ServiceProcess

from mailfold.cli.embedded import EmbeddedNats, free_port
from mailfold.events import (
    AnyEvent,
    AttachmentRef,
    BounceKind,
    EmailBounced,
    EmailClicked,
    EmailComposed,
    EmailDeleted,
    EmailDelivered,
    EmailOpened,
    EmailReceived,
    EmailSent,
    Module,
    RecordRef,
    Source,
    Transport,
    Verdict,
    decisions,
    encode,
    event_subject,
    fold,
    new_id,
)
from mailfold.events.fold import decode_state, encode_state
from mailfold.events.subjects import DLQ_STREAM, dlq_subject
from mailfold.projector.bootstrap import Service, Settings, start
from mailfold.projector.domain.rows import EMAIL_COLUMNS, email_row, record_rows
from mailfold.runtime import bus

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
IGNORED_COLUMNS = {"state", "updated_seq"}


class Mail:
    """Builds the events of emails of one org, each email with its own UUIDv7 id."""

    def __init__(self, org_id: str) -> None:
        self.org_id = org_id

    def env(self, email_id: str, minutes: float, org_id: str | None = None) -> dict[str, Any]:
        return {
            "event_id": new_id(),
            "org_id": org_id or self.org_id,
            "email_id": email_id,
            "occurred_at": T0 + timedelta(minutes=minutes),
            "producer": "test",
        }

    def composed(
        self,
        email_id: str,
        *,
        record: str = "lead-1",
        source: Source = Source.INDIVIDUAL,
        to: tuple[str, ...] = ("ann@example.org",),
        minutes: float = 0,
        subject: str = "Quarterly review",
        attachments: tuple[AttachmentRef, ...] = (),
        transport: Transport = Transport.CRM_SERVERS,
    ) -> EmailComposed:
        return EmailComposed(
            **self.env(email_id, minutes),
            source=source,
            transport=transport,
            from_addr="rep@crm.example",
            to=to,
            subject=subject,
            attachments=attachments,
            records=(RecordRef(record_id=record, module=Module.LEADS),),
        )

    def received(
        self, email_id: str, *, record: str = "lead-1", minutes: float = 0
    ) -> EmailReceived:
        return EmailReceived(
            **self.env(email_id, minutes),
            source=Source.IMAP,
            from_addr="ann@example.org",
            to=("rep@crm.example",),
            subject="Re: review",
            records=(RecordRef(record_id=record, module=Module.LEADS),),
        )

    def sent(self, email_id: str, minutes: float = 1) -> EmailSent:
        return EmailSent(**self.env(email_id, minutes), recipients=("ann@example.org",))

    def delivered(self, email_id: str, minutes: float = 2) -> EmailDelivered:
        return EmailDelivered(**self.env(email_id, minutes), recipient="ann@example.org")

    def bounced(self, email_id: str, minutes: float = 3) -> EmailBounced:
        return EmailBounced(
            **self.env(email_id, minutes),
            recipient="ann@example.org",
            kind=BounceKind.HARD,
            status="5.1.1",
            reply_code=550,
            reason="user_unknown",
            diagnostic="550 5.1.1 no such user",
        )

    def opened(
        self, email_id: str, minutes: float = 4, verdict: Verdict = Verdict.HUMAN
    ) -> EmailOpened:
        return EmailOpened(
            **self.env(email_id, minutes), recipient="ann@example.org", verdict=verdict
        )

    def clicked(
        self, email_id: str, minutes: float = 5, verdict: Verdict = Verdict.HUMAN
    ) -> EmailClicked:
        return EmailClicked(
            **self.env(email_id, minutes),
            recipient="ann@example.org",
            url="https://example.org/offer",
            verdict=verdict,
        )

    def deleted(self, email_id: str, minutes: float = 9) -> EmailDeleted:
        return EmailDeleted(**self.env(email_id, minutes))

    def life(self, email_id: str, n: int) -> list[AnyEvent]:
        """A varied history chosen by `n`: delivered and read, bounced, multi-recipient (whose
        open is a violation), received, deleted."""
        kind = n % 5
        if kind == 0:
            return [
                self.composed(email_id, minutes=n),
                self.sent(email_id, n + 1),
                self.delivered(email_id, n + 2),
                self.opened(email_id, n + 3),
                self.opened(email_id, n + 4, Verdict.MACHINE),
                self.clicked(email_id, n + 5),
            ]
        if kind == 1:
            return [
                self.composed(email_id, minutes=n),
                self.sent(email_id, n + 1),
                self.bounced(email_id, n + 2),
            ]
        if kind == 2:
            return [
                self.composed(email_id, minutes=n, to=("a@example.org", "b@example.org")),
                self.sent(email_id, n + 1),
                self.delivered(email_id, n + 2),
                self.opened(email_id, n + 3),
            ]
        if kind == 3:
            return [self.received(email_id, minutes=n), self.opened(email_id, n + 1)]
        return [
            self.composed(email_id, minutes=n, source=Source.MASS_EMAIL),
            self.sent(email_id, n + 1),
            self.deleted(email_id, n + 2),
        ]


@pytest.fixture
def mail(org_id: str) -> Mail:
    """Event builder for the test's org."""
    return Mail(org_id)


async def publish(js: JetStreamContext, events: Sequence[AnyEvent]) -> None:
    """Publish with Nats-Msg-Id = event id, as every producer does."""
    for event in events:
        await bus.publish_event(js, event)


async def publish_again(js: JetStreamContext, event: AnyEvent) -> int:
    """The same event published under another Nats-Msg-Id: the stream really holds it twice."""
    ack = await js.publish(
        event_subject(event), encode(event), headers={"Nats-Msg-Id": f"again-{new_id()}"}
    )
    return int(ack.seq)


async def position(database_url: str, consumer: str = "projector") -> int:
    """The projector's committed stream position (0 before its first batch)."""
    conn = await asyncpg.connect(database_url)
    try:
        with contextlib.suppress(asyncpg.UndefinedTableError):
            value = await conn.fetchval(
                "SELECT last_seq FROM consumer_positions WHERE consumer = $1", consumer
            )
            return int(value or 0)
        return 0
    finally:
        await conn.close()


async def wait_for_position(database_url: str, target: int, timeout: float = 60.0) -> None:
    """Until the projector has committed up to `target`."""
    deadline = time.monotonic() + timeout
    while (at := await position(database_url)) < target:
        if time.monotonic() > deadline:
            raise AssertionError(f"projector at {at}, expected {target}")
        await asyncio.sleep(0.05)


async def last_seq(js: JetStreamContext, stream: str = "MAIL_EVENTS") -> int:
    info = await js.stream_info(stream)
    return int(info.state.last_seq or 0)


@pytest.fixture
async def nc(fresh_nats: EmbeddedNats) -> AsyncIterator[Client]:
    """A connection to the test's own nats-server, with the topology in place."""
    client = await bus.connect(fresh_nats.url, "projector-test")
    await bus.ensure_topology(client.jetstream())
    yield client
    await bus.close(client)


StartProjector = Callable[..., contextlib.AbstractAsyncContextManager[Service]]


@pytest.fixture
def start_projector(fresh_nats: EmbeddedNats, database_url: str) -> StartProjector:
    """Starts the projector in this process (port 0); stopped when the block ends."""

    @contextlib.asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[Service]:
        settings = Settings(
            nats_url=fresh_nats.url,
            nats_auth=service_auth("projector"),
            database_url=database_url,
            port=0,
            **overrides,
        )
        service = await start(settings)
        try:
            yield service
        finally:
            await service.stop()

    return run


class ProjectorProcess(ServiceProcess):
    """`mailfold serve projector` as a child process, to be killed and restarted."""

    def __init__(self, nats_url: str, database_url: str, log: Path, **env: str) -> None:
        self.port = free_port()
        super().__init__(
            "projector",
            dict(
                os.environ,
                MAILFOLD_NATS_URL=nats_url,
                **service_env("projector"),
                MAILFOLD_DATABASE_URL=database_url,
                MAILFOLD_PROJECTOR_PORT=str(self.port),
                MAILFOLD_LOG_JSON="true",
                **env,
            ),
            self.port,
            log,
        )


@pytest.fixture
def projector_process(
    fresh_nats: EmbeddedNats, database_url: str, tmp_path: Path
) -> Iterator[Callable[..., ProjectorProcess]]:
    """Makes projector child processes; any left running is stopped after the test."""
    made: list[ProjectorProcess] = []

    def make(**env: str) -> ProjectorProcess:
        process = ProjectorProcess(
            fresh_nats.url, database_url, tmp_path / f"projector-{len(made)}.log", **env
        )
        made.append(process)
        return process

    yield make
    for process in made:
        process.stop()


async def assert_projection_is_the_fold(database_url: str, distinct: Sequence[AnyEvent]) -> None:
    """The tables hold exactly the pure fold of these distinct events, per email."""
    by_email: dict[str, list[AnyEvent]] = {}
    for event in distinct:
        by_email.setdefault(event.email_id, []).append(event)
    conn = await asyncpg.connect(database_url)
    try:
        emails = {r["email_id"]: r for r in await conn.fetch("SELECT * FROM emails")}
        stored = {
            r["event_id"]: (r["decision"], r["reason"], r["detail"], r["email_id"])
            for r in await conn.fetch("SELECT * FROM events")
        }
        links = {
            (r["email_id"], r["module"], r["record_id"], r["org_id"])
            for r in await conn.fetch("SELECT * FROM email_records")
        }
    finally:
        await conn.close()
    assert set(emails) == set(by_email)
    assert set(stored) == {e.event_id for e in distinct}
    expected_links = set()
    for email_id, history in by_email.items():
        expected = fold(history, email_id)
        assert decode_state(emails[email_id]["state"]) == expected, email_id
        row = email_row(expected, encode_state(expected), 0)
        for i, name in enumerate(EMAIL_COLUMNS):
            if name not in IGNORED_COLUMNS:
                got = emails[email_id][name]
                want = row[i]
                assert (list(got) if isinstance(got, list) else got) == want, (email_id, name)
        for event_id, ruling in decisions(expected).items():
            reason = None if ruling.reason is None else ruling.reason.value
            assert stored[event_id] == (ruling.decision.value, reason, ruling.detail, email_id)
        expected_links.update(record_rows(expected))
    assert links == expected_links


async def assert_folded_once(
    js: JetStreamContext, database_url: str, distinct: Sequence[AnyEvent], poison: Sequence[bytes]
) -> None:
    """After crashes and repeats: the tables are the pure fold of `distinct`, each event stored
    once, and each poison message in the dead-letter stream once, however often it was handled."""
    await assert_projection_is_the_fold(database_url, distinct)
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM events") == len(distinct)
    finally:
        await conn.close()
    dead = await js.pull_subscribe(dlq_subject("projector"), stream=DLQ_STREAM)
    letters = []
    while True:
        try:
            letters.extend(await dead.fetch(50, timeout=1))
        except TimeoutError:  # nats-py raises its own subclass or the builtin
            break
    await dead.unsubscribe()
    assert sorted(m.data for m in letters) == sorted(poison)
