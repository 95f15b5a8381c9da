"""Resets and crashes: a UIDVALIDITY change or a SIGKILL mid-sync loses and doubles nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from prometheus_client import REGISTRY
from tests.nats_users import service_env

from mailfold.events import STREAM, EmailDeleted, EmailReceived, Module

if TYPE_CHECKING:
    from tests.integration.mailbox.conftest import MessageFactory, Org


def _published(kind: str) -> float:
    return (
        REGISTRY.get_sample_value("mailfold_mailbox_events_published_total", {"type": kind}) or 0.0
    )


def _resets() -> float:
    return REGISTRY.get_sample_value("mailfold_mailbox_uidvalidity_resets_total") or 0.0


@pytest.mark.usefixtures("mailbox_service")
async def test_a_uidvalidity_reset_rekeys_by_message_id_and_publishes_nothing_again(
    org: Org, mail: MessageFactory
) -> None:
    await org.record("contact-1", Module.CONTACTS, "bob@customer.example")
    login = await org.mailbox("ann")
    for n in range(3):
        org.dovecot.deliver(login, mail("bob@customer.example", "ann@acme.example", f"m{n}"))
    first = await org.wait_for(EmailReceived, 3)
    published, resets = _published("email_received"), _resets()
    await asyncio.sleep(1.1)  # UIDVALIDITY is a time in seconds: make the new one differ

    org.dovecot.reset_uidvalidity(login)
    org.dovecot.deliver(login, mail("bob@customer.example", "ann@acme.example", "after"))
    everything = await org.wait_for(EmailReceived, 4)

    assert _resets() >= resets + 1
    assert _published("email_received") == published + 1  # only "after" was new
    assert {e.email_id for e in everything} == {e.email_id for e in first} | {
        next(e.email_id for e in everything if e.subject == "after")
    }
    assert [e for e in await org.events() if isinstance(e, EmailDeleted)] == []


async def _stored(org: Org) -> int:
    """How many events of the org the stream holds (cheap: one stream info request)."""
    info = await org.js.stream_info(STREAM, subjects_filter=f"mail.events.{org.org_id}.>")
    return sum((info.state.subjects or {}).values())


def _serve(nats_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MAILFOLD_NATS_URL": nats_url,
        **service_env("mailbox"),
        "MAILFOLD_MAILBOX_PORT": "0",
        "MAILFOLD_MAILBOX_LEASE_S": "2",
        "MAILFOLD_MAILBOX_POLL_S": "0.5",
        "MAILFOLD_MAILBOX_IDLE_S": "0.5",
        "MAILFOLD_LOG_LEVEL": "warning",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mailfold.cli.main", "serve", "mailbox"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.slow
async def test_sigkill_mid_sync_then_restart_loses_and_doubles_nothing(
    org: Org, mail: MessageFactory, nats_url: str, tmp_path: Path
) -> None:
    total = 5000
    await org.record("contact-1", Module.CONTACTS, "bob@customer.example")
    login = await org.mailbox("ann")
    for n in range(total):
        org.dovecot.write(login, mail("bob@customer.example", "ann@acme.example", f"bulk {n}"))

    first = _serve(nats_url, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if await _stored(org) > 0:
                break
            await asyncio.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    at_kill = len([e for e in await org.events() if isinstance(e, EmailReceived)])
    assert 0 < at_kill < total, f"the kill was not mid-sync ({at_kill} of {total})"

    second = _serve(nats_url, tmp_path / "second.log")
    try:
        received = await org.wait_for(EmailReceived, total, timeout=90)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(15)
    await asyncio.sleep(1)  # anything doubled would be in the stream by now
    received = [e for e in await org.events() if isinstance(e, EmailReceived)]
    assert len(received) == total
    assert len({e.email_id for e in received}) == total
    assert Counter(e.subject for e in received) == Counter(f"bulk {n}" for n in range(total))
