"""Ingest benchmarks: SMTP messages accepted and published per second, and bounce parsing speed.

`ingest.smtp`: the ingest service runs as its own process (`mailfold serve ingest`) on an
embedded nats-server; the client sends inbound `in+<org>@` messages over a few concurrent
aiosmtplib connections, each reply meaning the message was kept and its event published. The
baseline is a bare aiosmtpd server in its own process that accepts and discards, driven by the
same client in the same run.

`ingest.dsn_parse`: `parse()` over every file of the bounce corpus, against the stdlib alone
(`email.message_from_bytes` with the default policy, walking the parts) over the same files.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiosmtplib

from _results import record

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "fixtures" / "bounces"
ORG = "bench"
CONNECTIONS = 4
MESSAGES = 1500  # per measured round
WARMUP = 300
ROUNDS = 3
PARSE_SECONDS = 4.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _healthy(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
        return bool(response.status == 200)


@contextmanager
def _process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


# --- the bare server (run as `python bench/ingest.py --bare-smtp <port>`) ------------------------


class _Discard:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 OK"


def _bare_smtp(port: int) -> None:
    from aiosmtpd.smtp import SMTP

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(
                _Discard(),
                data_size_limit=25 * 1024 * 1024,
                enable_SMTPUTF8=True,
                hostname="bare",
                loop=loop,
            ),
            "127.0.0.1",
            port,
        )
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


# --- the client ----------------------------------------------------------------------------------


def _message(i: int, run: str) -> bytes:
    return (
        f"From: Customer {i} <customer{i % 50}@example.com>\r\n"
        f"To: rep@acme.example\r\n"
        f"Subject: Question {i} about the quote\r\n"
        f"Message-ID: <{run}.{i}@example.com>\r\n"
        f"Date: Tue, 02 Jan 2024 03:04:05 +0000\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        + ("Hello, I have a question about the quote you sent me last week.\r\n" * 30)
    ).encode()


async def _send_all(port: int, count: int) -> float:
    """Send `count` distinct messages over CONNECTIONS sessions; the elapsed seconds."""
    run = uuid.uuid4().hex
    per_connection = count // CONNECTIONS

    async def session(worker: int) -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60) as client:
            for j in range(per_connection):
                i = worker * per_connection + j
                await client.sendmail(
                    f"customer{i % 50}@example.com", [f"in+{ORG}@in.example"], _message(i, run)
                )

    start = time.perf_counter()
    await asyncio.gather(*(session(w) for w in range(CONNECTIONS)))
    return time.perf_counter() - start


def _rate(port: int, count: int) -> float:
    elapsed = asyncio.run(_send_all(port, count))
    return (count // CONNECTIONS * CONNECTIONS) / elapsed


async def _setup_org(nats_url: str) -> None:
    from mailfold.runtime import bus
    from mailfold.runtime.orgs import OrgExists, create_org

    nc = await bus.connect(nats_url, "bench", reconnect=False)
    try:
        js = nc.jetstream()
        await bus.ensure_topology(js)
        with contextlib.suppress(OrgExists):
            await create_org(await bus.kv(js, bus.BUCKET_ORGS), ORG)
    finally:
        await bus.close(nc)


async def _published(nats_url: str) -> int:
    from mailfold.events import STREAM
    from mailfold.runtime import bus

    nc = await bus.connect(nats_url, "bench", reconnect=False)
    try:
        info = await nc.jetstream().stream_info(STREAM, subjects_filter=f"mail.events.{ORG}.>")
        return sum((info.state.subjects or {}).values())
    finally:
        await bus.close(nc)


def bench_smtp() -> None:
    from mailfold.cli.embedded import EmbeddedNats

    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(Path(tmp) / "nats") as nats_server:
        asyncio.run(_setup_org(nats_server.url))
        http_port, smtp_port, bare_port = _free_port(), _free_port(), _free_port()
        env = {
            **os.environ,
            "MAILFOLD_NATS_URL": nats_server.url,
            "MAILFOLD_INGEST_HTTP_PORT": str(http_port),
            "MAILFOLD_INGEST_SMTP_PORT": str(smtp_port),
            "MAILFOLD_LOG_LEVEL": "warning",
        }
        ingest_cmd = [sys.executable, "-m", "mailfold.cli", "serve", "ingest"]
        bare_cmd = [sys.executable, str(Path(__file__).resolve()), "--bare-smtp", str(bare_port)]
        with _process(ingest_cmd, env), _process(bare_cmd, env):
            _wait_for(lambda: _healthy(http_port), "the ingest service")
            _wait_for(lambda: _listening(bare_port), "the bare SMTP server")
            _rate(smtp_port, WARMUP)
            _rate(bare_port, WARMUP)
            ingest_rates, bare_rates = [], []
            for _ in range(ROUNDS):
                bare_rates.append(_rate(bare_port, MESSAGES))
                ingest_rates.append(_rate(smtp_port, MESSAGES))
            published = asyncio.run(_published(nats_server.url))
    sent = (WARMUP // CONNECTIONS + ROUNDS * (MESSAGES // CONNECTIONS)) * CONNECTIONS
    print(
        f"ingest SMTP: {max(ingest_rates):.0f} msgs/s (rounds {', '.join(f'{r:.0f}' for r in ingest_rates)}); "
        f"bare aiosmtpd: {max(bare_rates):.0f} msgs/s; {published} of {sent} messages published",
        flush=True,
    )
    if published != sent:
        raise SystemExit(f"only {published} of {sent} accepted messages were published")
    record("ingest.smtp", max(ingest_rates), "msgs/s", max(bare_rates))


# --- bounce parsing ------------------------------------------------------------------------------


def _parse_rate(samples: list[bytes], parse_one: Callable[[bytes], object]) -> float:
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < PARSE_SECONDS:
        for raw in samples:
            parse_one(raw)
        done += len(samples)
    return done / (time.perf_counter() - start)


def _stdlib_walk(raw: bytes) -> int:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    return sum(1 for _ in msg.walk())


def bench_dsn_parse() -> None:
    from mailfold.bounces import parse

    samples = [p.read_bytes() for p in sorted(CORPUS.glob("*.eml"))]
    ours = _parse_rate(samples, parse)
    stdlib = _parse_rate(samples, _stdlib_walk)
    print(
        f"bounce parsing over {len(samples)} corpus files: parse() {ours:.0f} msgs/s; "
        f"stdlib message_from_bytes + walk {stdlib:.0f} msgs/s",
        flush=True,
    )
    record("ingest.dsn_parse", ours, "msgs/s", stdlib)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--bare-smtp":
        _bare_smtp(int(sys.argv[2]))
        return
    bench_smtp()
    bench_dsn_parse()


if __name__ == "__main__":
    main()
