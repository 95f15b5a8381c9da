"""A sender killed in the middle of a delivery and started again sends no recipient twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from tests.nats_users import service_env

from mailfold.cli.embedded import free_port
from mailfold.events import AnyEvent, EmailDelivered, EmailSent

if TYPE_CHECKING:
    from tests.integration.sender.conftest import Bus, MxFactory

Spawn = Callable[[], Awaitable[tuple[asyncio.subprocess.Process, int]]]


def _only(events: list[AnyEvent], kind: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


@pytest.fixture
async def sender_process(nats_bus: Bus, tmp_path: Path) -> AsyncIterator[Callable[[int], Spawn]]:
    """`python -m mailfold.cli serve sender` as a child process, routed to a test server."""
    children: list[asyncio.subprocess.Process] = []
    logs: list[Path] = []

    def configure(mx_port: int) -> Spawn:
        async def spawn() -> tuple[asyncio.subprocess.Process, int]:
            http_port = free_port()
            env = {
                **os.environ,
                "MAILFOLD_NATS_URL": nats_bus.url,
                **service_env("sender"),
                "MAILFOLD_SMTP_ROUTES": f"example.org=127.0.0.1:{mx_port}",
                "MAILFOLD_SENDER_PORT": str(http_port),
                "MAILFOLD_SENDER_ACK_WAIT_S": "2",
                "MAILFOLD_SENDER_HELO_NAME": "sender.test",
                "MAILFOLD_TRACKING_KEYS": "t1:sender-integration-tests-key",
                "MAILFOLD_LOG_JSON": "true",
            }
            log = tmp_path / f"sender-{len(logs)}.log"
            logs.append(log)
            with log.open("wb") as out:
                child = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "mailfold.cli", "serve", "sender",
                    env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                )  # fmt: skip
            children.append(child)
            async with httpx.AsyncClient() as client:
                for _ in range(300):
                    if child.returncode is not None:
                        raise AssertionError(f"sender exited: {log.read_text()}")
                    with contextlib.suppress(httpx.HTTPError):
                        reply = await client.get(f"http://127.0.0.1:{http_port}/healthz")
                        if reply.status_code == 200:
                            return child, http_port
                    await asyncio.sleep(0.1)
            raise AssertionError(f"sender never became healthy: {log.read_text()}")

        return spawn

    yield configure
    for child in children:
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.wait(), 20)
            except TimeoutError:
                child.kill()
                await child.wait()


async def test_a_sender_killed_mid_delivery_and_restarted_sends_no_recipient_twice(
    nats_bus: Bus, mx: MxFactory, sender_process: Callable[[int], Spawn], org_id: str
) -> None:
    server = await mx()
    hold = asyncio.Event()
    server.handler.hold_data = hold
    server.handler.hold_once = {"r1@example.org"}
    await nats_bus.settings(org_id)
    spawn = sender_process(server.port)
    recipients = ("r0@example.org", "r1@example.org", "r2@example.org", "r3@example.org")

    first, _ = await spawn()
    await nats_bus.compose(org_id, to=recipients[:1], cc=recipients[1:], html="<p>Hello</p>")
    # r0 is delivered; r1's server has the message and is slow to answer when the sender dies.
    await asyncio.wait_for(server.handler.data_started.wait(), 30)
    first.kill()
    await first.wait()
    assert server.handler.count_for("r0@example.org") == 1
    hold.set()

    _, port = await spawn()
    events = await nats_bus.events(
        org_id, lambda es: len(_only(es, EmailDelivered)) >= 3, timeout=60, settle=3.0
    )

    assert {r: server.handler.count_for(r) for r in recipients} == dict.fromkeys(recipients, 1)
    delivered = sorted(e.recipient for e in _only(events, EmailDelivered))
    # r1's outcome is unknown (the reply never reached the sender): no event, and no resend.
    assert delivered == ["r0@example.org", "r2@example.org", "r3@example.org"]
    assert len(_only(events, EmailSent)) == 1
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    assert "mailfold_sender_unknown_outcomes_total 1.0" in metrics
