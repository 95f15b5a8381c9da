"""`mailfold serve <service> --workers N`: workers share the port, are kept running, sum metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest
from tests.integration.serving import healthy, metric_sum, org_events, serve, terminate
from tests.nats_users import service_env

from mailfold.cli.embedded import free_port, free_ports
from mailfold.events import EmailOpened, Keyring, TokenKind, TrackingClaims, new_id

KEYS = "wk1:workers-integration-key-0123456"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0"
OPENS = "mailfold_tracker_opens_total"


def pixel(org_id: str, email_id: str) -> str:
    claims = TrackingClaims(TokenKind.OPEN, org_id, email_id, "ann@example.org")
    return f"/o/{Keyring.parse(KEYS).sign(claims)}.gif"


def holds_connection(pid: int, port: int) -> bool:
    """Whether process `pid` has an accepted connection on `port` open."""
    return any(
        c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
        for c in psutil.Process(pid).net_connections(kind="tcp")
    )


def listens(proc: psutil.Process, port: int) -> bool:
    """Whether `proc` is alive and listens on `port`."""
    try:
        sockets = proc.net_connections(kind="tcp")
    except psutil.NoSuchProcess:  # killed and not reaped yet
        return False
    return any(s.laddr.port == port and s.status == psutil.CONN_LISTEN for s in sockets)


async def workers_of(
    parent: psutil.Process, count: int, port: int, *, gone: int | None = None
) -> list[int]:
    """The parent's worker pids, once it has `count` and all of them listen on `port` (and the
    worker `gone`, just killed, is no longer among them: it lingers until reaped)."""
    async with asyncio.timeout(60):
        while True:
            children = [c for c in parent.children() if c.pid != gone]
            if len(children) == count and all(listens(c, port) for c in children):
                return [c.pid for c in children]
            await asyncio.sleep(0.1)


async def opened_email_ids(nats_url: str, org_id: str) -> Counter[str]:
    """How many EmailOpened events each email of the org has in MAIL_EVENTS."""
    events = await org_events(nats_url, org_id)
    assert all(isinstance(e, EmailOpened) for e in events)
    return Counter(e.email_id for e in events)


@pytest.mark.slow
async def test_two_workers_share_the_port_are_restarted_and_drain_on_sigterm(
    nats_url: str, org_id: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "MAILFOLD_NATS_URL": nats_url,
        **service_env("tracker"),
        "MAILFOLD_TRACKER_PORT": str(port),
        "MAILFOLD_TRACKING_KEYS": KEYS,
    }
    proc = serve("tracker", env, tmp_path / "tracker.log", "--workers", "2")
    sent: list[str] = []
    try:
        await healthy(port, proc)
        parent = psutil.Process(proc.pid)
        first = await workers_of(parent, 2, port)
        headers = {"user-agent": BROWSER}

        # Fresh kept-alive connections until each worker has answered on one of them.
        async with contextlib.AsyncExitStack() as stack:
            answered: set[int] = set()
            while answered != set(first):
                assert len(sent) < 500, "the kernel never handed a connection to both workers"
                client = await stack.enter_async_context(
                    httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers)
                )
                sent.append(new_id())
                assert (await client.get(pixel(org_id, sent[-1]))).status_code == 200
                answered |= {pid for pid in first if holds_connection(pid, port)}

            # Whichever worker answers the scrape, it counts the opens of both.
            for _ in range(6):
                assert await metric_sum(port, OPENS) == len(sent)

            # A worker SIGKILLed is started again by the parent; the counts survive it.
            psutil.Process(first[0]).kill()
            second = await workers_of(parent, 2, port, gone=first[0])
            assert first[0] not in second
            assert first[1] in second
            await healthy(port, proc)
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", headers=headers
            ) as client:
                for _ in range(10):
                    sent.append(new_id())
                    assert (await client.get(pixel(org_id, sent[-1]))).status_code == 200
            for _ in range(4):
                assert await metric_sum(port, OPENS) == len(sent)

        # SIGTERM to the parent: every worker drains (publishes what it holds) and all exit 0.
        assert terminate(proc) == 0
        assert not any(psutil.pid_exists(pid) for pid in second)
    finally:
        terminate(proc)
    # Every open answered 200 is in the stream exactly once, the killed worker's included (the
    # tracker answers once the event is in its buffer: those were published before the kill).
    counts = await opened_email_ids(nats_url, org_id)
    assert set(counts) == set(sent)
    assert set(counts.values()) == {1}


async def test_workers_that_keep_dying_stop_the_service_with_a_failure(
    nats_url: str, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "tracker.log"
    env = {
        "MAILFOLD_NATS_URL": nats_url,
        **service_env("tracker"),
        "MAILFOLD_TRACKER_PORT": str(port),
        "MAILFOLD_WORKERS_BACKOFF_S": "0.1",
        "MAILFOLD_WORKERS_MAX_FAILURES": "3",
    }
    # Another program holds the port without SO_REUSEPORT: no worker can bind it.
    with socket.create_server(("127.0.0.1", port)):
        proc = serve("tracker", env, log, "--workers", "2")
        try:
            await asyncio.to_thread(proc.wait, 90)
        finally:
            terminate(proc)
    assert proc.returncode == 1
    assert "worker keeps dying; stopping the service" in log.read_text()


async def test_ctrl_c_in_a_terminal_stops_parent_and_workers_cleanly(
    nats_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {"MAILFOLD_NATS_URL": nats_url, "MAILFOLD_TRACKER_PORT": str(port)}
    env |= service_env("tracker")
    log = tmp_path / "tracker.log"
    # Its own process group, as a terminal's foreground job: Ctrl-C signals the whole group.
    proc = serve("tracker", env, log, "--workers", "2", new_session=True)
    try:
        await healthy(port, proc)
        workers = await workers_of(psutil.Process(proc.pid), 2, port)
        os.killpg(proc.pid, signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 60) == 0
        assert not any(psutil.pid_exists(pid) for pid in workers)
    finally:
        terminate(proc)
    assert log.read_text().count('"event": "tracker stopped"') == 2


LISTENERS = {
    "ingest": ("MAILFOLD_INGEST_HTTP_PORT", "MAILFOLD_INGEST_SMTP_PORT"),
    "sender": ("MAILFOLD_SENDER_PORT",),
    "projector": ("MAILFOLD_PROJECTOR_PORT",),
    "webhooks": ("MAILFOLD_WEBHOOKS_PORT",),
    "mailbox": ("MAILFOLD_MAILBOX_PORT",),
}


@pytest.mark.slow
@pytest.mark.parametrize("service", sorted(LISTENERS))
async def test_every_service_runs_with_two_workers_on_its_ports(
    service: str, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    ports = free_ports(len(LISTENERS[service]))
    env = {"MAILFOLD_NATS_URL": nats_url, "MAILFOLD_DATABASE_URL": database_url}
    env |= service_env(service)
    env |= {name: str(port) for name, port in zip(LISTENERS[service], ports, strict=True)}
    proc = serve(service, env, tmp_path / f"{service}.log", "--workers", "2")
    try:
        await healthy(ports[0], proc)
        parent = psutil.Process(proc.pid)
        for port in ports:
            await workers_of(parent, 2, port)
        async with httpx.AsyncClient() as http:
            for _ in range(4):  # fresh connections, answered by either worker
                response = await http.get(
                    f"http://127.0.0.1:{ports[0]}/metrics", headers={"connection": "close"}
                )
                assert response.status_code == 200
                assert "mailfold_" in response.text
        assert terminate(proc) == 0
    finally:
        terminate(proc)
