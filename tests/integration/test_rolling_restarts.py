"""Rolling restarts under steady load: one copy at a time, no request lost, none doubled.

Two copies of ingest (two `mailfold serve ingest` processes sharing the HTTP and SMTP ports
with MAILFOLD_REUSE_PORT) and a tracker with two workers (`serve tracker --workers 2`) take
a bounded, steady load on loopback while each copy and each worker in turn gets SIGTERM and
is started again. The clients behave as real ones should: on a connection error, or a 4xx SMTP
reply / 5xx HTTP answer, they send the same request again (the same Idempotency-Key, the same
message). Every request ends answered, and each answered one has exactly one event.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import httpx
import psutil
import pytest
from tests.integration.serving import healthy, org_events, serve, terminate
from tests.nats_users import service_env
from tests.polling import eventually

from mailfold.cli.embedded import free_ports
from mailfold.events import (
    EmailComposed,
    EmailOpened,
    EmailReceived,
    Keyring,
    TokenKind,
    TrackingClaims,
    new_id,
)
from mailfold.runtime import bus
from mailfold.runtime.orgs import create_org

KEYS = "rr1:rolling-restarts-key-0123456789"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0"
PAUSE_S = 0.05  # between one client's requests: a steady, bounded load
ATTEMPTS = 50  # a request still unanswered after this many tries is lost


@dataclass
class Load:
    """What the clients sent and got answered, and how often they had to try again."""

    composed: list[str] = field(default_factory=list)  # email ids answered 202
    received: list[str] = field(default_factory=list)  # Message-IDs answered 250
    opened: list[str] = field(default_factory=list)  # email ids whose pixel answered 200
    retries: Counter[str] = field(default_factory=Counter)
    running: bool = True


async def until_answered(load: Load, kind: str, attempt: Callable[[], Awaitable[bool]]) -> None:
    """Call `attempt` (True: answered) again after a failure, as a client should."""
    for _ in range(ATTEMPTS):
        if await attempt():
            return
        load.retries[kind] += 1
        await asyncio.sleep(0.1)
    raise AssertionError(f"a {kind} request was never answered")


async def compose_loop(load: Load, port: int, org_id: str, token: str) -> None:
    url = f"http://127.0.0.1:{port}/v1/orgs/{org_id}/emails"
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=30) as http:
        while load.running:
            key = uuid.uuid4().hex
            body: dict[str, object] = {"source": "individual", "from": "rep@acme.example"}
            body |= {"to": ["bob@x.example"]}
            body |= {"subject": f"Hello {key}", "text": "Hello Bob"}

            async def attempt(body: dict[str, object] = body, key: str = key) -> bool:
                try:
                    response = await http.post(url, json=body, headers={"idempotency-key": key})
                except httpx.TransportError:
                    return False
                if response.status_code >= 500:
                    return False
                assert response.status_code == 202, response.text
                load.composed.append(response.json()["email_id"])
                return True

            await until_answered(load, "http", attempt)
            await asyncio.sleep(PAUSE_S)


async def mail_loop(load: Load, port: int, org_id: str) -> None:
    while load.running:
        message = EmailMessage()
        message["From"] = "stranger@y.example"
        message["To"] = f"in+{org_id}@in.example"
        message["Subject"] = "Hello"
        message["Message-ID"] = f"<{new_id()}@y.example>"
        message["Date"] = "Tue, 02 Jan 2024 03:04:05 +0000"
        message.set_content("Hello there.\n")

        async def attempt(message: EmailMessage = message) -> bool:
            code = 250
            try:
                await aiosmtplib.send(message, hostname="127.0.0.1", port=port, timeout=30)
            except aiosmtplib.SMTPResponseException as exc:
                code = exc.code
            except (aiosmtplib.SMTPException, OSError):
                return False
            assert code < 500, f"a permanent refusal: {code}"
            if code >= 400:  # try again later, as the reply says
                return False
            load.received.append(str(message["Message-ID"]))
            return True

        await until_answered(load, "smtp", attempt)
        await asyncio.sleep(PAUSE_S)


async def pixel_loop(load: Load, port: int, org_id: str) -> None:
    keyring = Keyring.parse(KEYS)
    async with httpx.AsyncClient(headers={"user-agent": BROWSER}, timeout=30) as http:
        while load.running:
            email_id = new_id()
            claims = TrackingClaims(TokenKind.OPEN, org_id, email_id, "ann@example.org")
            url = f"http://127.0.0.1:{port}/o/{keyring.sign(claims)}.gif"

            async def attempt(url: str = url, email_id: str = email_id) -> bool:
                try:
                    response = await http.get(url)
                except httpx.TransportError:
                    return False
                if response.status_code >= 500:
                    return False
                assert response.status_code == 200
                load.opened.append(email_id)
                return True

            await until_answered(load, "pixel", attempt)
            await asyncio.sleep(PAUSE_S)


def listening(pid: int, *ports: int) -> bool:
    try:
        sockets = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return False
    bound = {s.laddr.port for s in sockets if s.status == psutil.CONN_LISTEN}
    return set(ports) <= bound


async def until_listening(pid: int, *ports: int) -> None:
    async def check() -> bool:
        return listening(pid, *ports)

    await eventually(check, interval=0.1)


async def progressed(load: Load) -> None:
    """Wait until every client got answers after this point (the load is flowing)."""

    def answered() -> tuple[int, int, int]:
        return len(load.composed), len(load.received), len(load.opened)

    before = answered()

    async def check() -> bool:
        return all(now > then for now, then in zip(answered(), before, strict=True))

    await eventually(check, interval=0.05)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_restarting_each_copy_in_turn_loses_and_doubles_nothing(
    nats_url: str, org_id: str, tmp_path: Path
) -> None:
    nc = await bus.connect(nats_url, "rolling-setup", reconnect=False)
    try:
        await bus.ensure_topology(nc.jetstream())
        token = await create_org(await bus.kv(nc.jetstream(), bus.BUCKET_ORGS), org_id)
    finally:
        await bus.close(nc)
    http_port, smtp_port, tracker_port = free_ports(3)
    common = {"MAILFOLD_NATS_URL": nats_url, "MAILFOLD_TRACKING_KEYS": KEYS}
    ingest_env = (
        common
        | service_env("ingest")
        | {
            "MAILFOLD_INGEST_HTTP_PORT": str(http_port),
            "MAILFOLD_INGEST_SMTP_PORT": str(smtp_port),
            "MAILFOLD_REUSE_PORT": "true",
        }
    )
    tracker_env = common | service_env("tracker") | {"MAILFOLD_TRACKER_PORT": str(tracker_port)}

    def start_ingest(copy: int) -> subprocess.Popen[bytes]:
        return serve("ingest", ingest_env, tmp_path / f"ingest-{copy}.log")

    ingest = [start_ingest(0), start_ingest(1)]
    tracker = serve("tracker", tracker_env, tmp_path / "tracker.log", "--workers", "2")
    load = Load()
    clients: list[asyncio.Task[None]] = []
    try:
        for proc in ingest:
            await until_listening(proc.pid, http_port, smtp_port)
        await healthy(tracker_port, tracker)
        clients = [
            *(asyncio.create_task(compose_loop(load, http_port, org_id, token)) for _ in range(3)),
            *(asyncio.create_task(mail_loop(load, smtp_port, org_id)) for _ in range(2)),
            *(asyncio.create_task(pixel_loop(load, tracker_port, org_id)) for _ in range(3)),
        ]
        await progressed(load)

        # Ingest: one copy at a time, SIGTERM, wait for it to finish, start it again.
        for copy in range(2):
            assert await asyncio.to_thread(terminate, ingest[copy]) == 0
            await progressed(load)  # the other copy carries the load alone
            ingest[copy] = start_ingest(copy)
            await until_listening(ingest[copy].pid, http_port, smtp_port)
            await progressed(load)

        # Tracker: each worker in turn; its parent starts it again.
        parent = psutil.Process(tracker.pid)
        for worker in [c.pid for c in parent.children()]:
            psutil.Process(worker).send_signal(signal.SIGTERM)

            async def replaced(worker: int = worker) -> bool:
                children = [c.pid for c in parent.children()]
                return (
                    len(children) == 2
                    and worker not in children
                    and all(listening(c, tracker_port) for c in children)
                )

            await eventually(replaced, interval=0.1)
            await progressed(load)
        assert tracker.poll() is None  # a worker stopped on purpose is not a failure
    finally:
        load.running = False
        results = await asyncio.gather(*clients, return_exceptions=True)
        for proc in [*ingest, tracker]:
            await asyncio.to_thread(terminate, proc)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    assert ingest[0].returncode == ingest[1].returncode == tracker.returncode == 0

    events = await org_events(nats_url, org_id)
    composed = Counter(e.email_id for e in events if isinstance(e, EmailComposed))
    received = Counter(e.message_id for e in events if isinstance(e, EmailReceived))
    opened = Counter(e.email_id for e in events if isinstance(e, EmailOpened))
    # Each answered request has exactly one event, and no event lacks its answered request.
    assert composed == Counter(load.composed), load.retries
    assert received == Counter(load.received), load.retries
    assert opened == Counter(load.opened), load.retries
    assert set(composed.values()) == set(received.values()) == set(opened.values()) == {1}
    print(f"answered {len(composed)} http, {len(received)} smtp, {len(opened)} pixel requests;")
    print(f"retries after connection errors or refusals: {dict(load.retries)}")
