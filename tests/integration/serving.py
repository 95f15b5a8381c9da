"""`mailfold serve` as a real subprocess: start it, wait for /healthz, read /metrics, stop it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from nats.js.errors import NotFoundError

from mailfold.events import STREAM, AnyEvent, decode
from mailfold.runtime import bus


def serve(
    service: str, env: dict[str, str], log: Path, *args: str, new_session: bool = False
) -> subprocess.Popen[bytes]:
    """`mailfold serve <service> <args>` with `env` over this environment, output into `log`;
    `new_session`: in a process group of its own, as a terminal's foreground job."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mailfold.cli", "serve", service, *args],
            env={**os.environ, "MAILFOLD_LOG_JSON": "true", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )


async def healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Return once /healthz on `port` answers 200; fail if `proc` exits first."""
    async with asyncio.timeout(timeout), httpx.AsyncClient() as http:
        while True:
            assert proc.poll() is None, f"the service exited with {proc.returncode}"
            try:
                if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)


async def metric_sum(port: int, name: str) -> float:
    """The sum of every sample of `name` (all label sets) on one scrape of /metrics."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    pattern = rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$"
    return sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))


def terminate(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """SIGTERM, wait (SIGKILL past `timeout`), the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


async def org_events(nats_url: str, org_id: str) -> list[AnyEvent]:
    """Every event of one org in MAIL_EVENTS, in stream order (direct gets, no consumer)."""
    nc = await bus.connect(nats_url, "serving-test-reader", reconnect=False)
    found: list[AnyEvent] = []
    try:
        js, seq = nc.jetstream(), 1
        while True:
            try:
                msg = await js.get_msg(
                    STREAM, seq=seq, subject=f"mail.events.{org_id}.>", next=True
                )
            except NotFoundError:
                return found
            found.append(decode(msg.data or b""))
            seq = (msg.seq or seq) + 1
    finally:
        await bus.close(nc)
