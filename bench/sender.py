"""Sender throughput: emails/s delivered to a local sink MX, next to a bare aiosmtplib loop.

Both runs send the same messages (same bytes: tracked HTML, and the same VERP envelopes) to the
same sink (aiosmtpd accepting and discarding, in a process of its own) with the same
concurrency. The sender runs as `python -m mailfold.cli serve sender` on an embedded
nats-server, with every EmailComposed published before it starts; its rate is measured from its
own events (first EmailSent to last EmailDelivered), so start-up is not counted. The recorded
baseline (`sender.deliver`) is the raw limit: bare aiosmtplib workers that keep their
connections open between emails, as the sender's connection cache does; no NATS, no ledger, no
events. aiosmtplib's `send` in a loop (a connection per email) is recorded beside it as
`sender.deliver_vs_send`.
Rounds alternate sender and bare runs; the round with the median ratio is recorded.
Usage: `uv run --frozen python bench/sender.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
from nats.js.api import DeliverPolicy

from _results import record
from mailfold.cli.embedded import EmbeddedNats, free_port
from mailfold.events import (
    EmailComposed,
    EmailDelivered,
    EmailSent,
    Keyring,
    Source,
    decode,
    new_id,
)
from mailfold.runtime import bus
from mailfold.runtime.content import put_content
from mailfold.runtime.directory import OrgSettings, save_settings
from mailfold.runtime.settings import CommonSettings
from mailfold.sender.domain.message import Body, build, verp_return_path
from mailfold.sender.domain.tracking import track

EMAILS = int(os.environ.get("MAILFOLD_BENCH_SENDER_EMAILS", "1500"))
CONCURRENCY = int(os.environ.get("MAILFOLD_BENCH_SENDER_CONCURRENCY", "16"))
ORG = "bench"
DOMAIN = "mailfold.localhost"  # the default mail domain of an org without settings
HTML = (
    "<html><body><h1>Spring offers</h1>"
    + "".join(
        f'<p>Item {i}: <a href="https://shop.example.com/item/{i}?utm=mail">see it</a></p>'
        for i in range(10)
    )
    + "</body></html>"
)
TEXT = "Spring offers: see https://shop.example.com/ for all items.\n" * 5
ROUNDS = int(os.environ.get("MAILFOLD_BENCH_SENDER_ROUNDS", "3"))
TIME_LIMIT_S = 150.0


def run_sink(port: int, ready: Any) -> None:
    """The sink MX: accepts every message and forgets it (runs in its own process)."""
    from aiosmtpd.smtp import SMTP

    class Discard:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 2.0.0 Ok: discarded"

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(Discard(), hostname="sink.bench", loop=loop), "127.0.0.1", port
        )
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def _composed(i: int, html: Any, text: Any) -> EmailComposed:
    return EmailComposed(
        event_id=new_id(),
        org_id=ORG,
        email_id=new_id(),
        occurred_at=datetime.now(UTC),
        producer="bench",
        source=Source.INDIVIDUAL,
        from_addr="offers@shop.example.com",
        to=(f"customer{i}@example.org",),
        subject=f"Spring offers for you, customer {i}",
        html=html,
        text=text,
    )


async def _prepare(url: str) -> list[EmailComposed]:
    nc = await bus.connect(url, "bench-setup")
    try:
        js = nc.jetstream()
        await bus.ensure_topology(js)
        await save_settings(await bus.kv(js, bus.BUCKET_ORGS), ORG, OrgSettings())
        store = await bus.objects(js)
        html = await put_content(store, HTML.encode(), "text/html; charset=utf-8")
        text = await put_content(store, TEXT.encode(), "text/plain; charset=utf-8")
        emails = [_composed(i, html, text) for i in range(EMAILS)]
        for start in range(0, len(emails), 200):
            await asyncio.gather(*(bus.publish_event(js, e) for e in emails[start : start + 200]))
        return emails
    finally:
        await bus.close(nc)


async def _wait_healthy(port: int, child: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            if child.returncode is not None:
                raise RuntimeError("the sender exited while starting")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError("the sender never became healthy")


async def _sender_rate(url: str, sink_port: int, log_path: Path) -> float:
    """Emails/s from the sender's first EmailSent to its last EmailDelivered."""
    http_port = free_port()
    env = {
        **os.environ,
        "MAILFOLD_NATS_URL": url,
        "MAILFOLD_SMTP_ROUTES": f"*=127.0.0.1:{sink_port}",
        "MAILFOLD_SENDER_PORT": str(http_port),
        "MAILFOLD_SENDER_CONCURRENCY": str(CONCURRENCY),
        "MAILFOLD_SENDER_HELO_NAME": "sender.bench",
        "MAILFOLD_LOG_LEVEL": "warning",
    }
    with log_path.open("wb") as log:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mailfold.cli", "serve", "sender",
            env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
    nc = await bus.connect(url, "bench-observer")
    try:
        await _wait_healthy(http_port, child)
        js = nc.jetstream()
        wanted = EMAILS * 3  # composed, sent, delivered
        deadline = time.monotonic() + TIME_LIMIT_S
        while (await js.stream_info("MAIL_EVENTS")).state.messages < wanted:
            if time.monotonic() > deadline or child.returncode is not None:
                raise RuntimeError(f"the sender did not finish; see {log_path}")
            await asyncio.sleep(0.25)
        first_sent: datetime | None = None
        last_delivered: datetime | None = None
        delivered = 0
        sub = await js.subscribe(
            f"mail.events.{ORG}.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        try:
            for _ in range(wanted):
                event = decode((await sub.next_msg(timeout=10)).data)
                if isinstance(event, EmailSent):
                    at = event.occurred_at
                    first_sent = at if first_sent is None else min(first_sent, at)
                elif isinstance(event, EmailDelivered):
                    delivered += 1
                    at = event.occurred_at
                    last_delivered = at if last_delivered is None else max(last_delivered, at)
        finally:
            await sub.unsubscribe()
    finally:
        if child.returncode is None:
            child.terminate()
            try:
                await asyncio.wait_for(child.wait(), 20)
            except TimeoutError:
                child.kill()
                await child.wait()
        await bus.close(nc)
    if delivered != EMAILS or first_sent is None or last_delivered is None:
        raise RuntimeError(f"expected {EMAILS} deliveries, saw {delivered}")
    return EMAILS / (last_delivered - first_sent).total_seconds()


async def _bare_rate(emails: list[EmailComposed], sink_port: int, *, reuse: bool = False) -> float:
    """Emails/s for aiosmtplib alone sending the same messages with the same concurrency.

    The same messages means the same bytes and envelopes: tracked HTML and a VERP return path
    per recipient, built before the clock starts.
    """
    keys = Keyring.parse(CommonSettings.from_env().tracking_keys)
    now = datetime.now(UTC)
    messages: list[tuple[str, str, bytes]] = []
    for e in emails:
        recipient = e.to[0]
        html = track(
            HTML,
            keys=keys,
            tracker_url="http://127.0.0.1:8002",
            org_id=ORG,
            email_id=e.email_id,
            recipient=recipient,
        )
        body = Body(html=html, text=TEXT)
        return_path = verp_return_path(
            keys,
            org_id=ORG,
            email_id=e.email_id,
            recipient=recipient,
            index=0,
            mail_domain=DOMAIN,
        )
        messages.append((return_path, recipient, build(e, body, mail_domain=DOMAIN, date=now)))
    queue: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue()
    for item in messages:
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            return_path, recipient, message = queue.get_nowait()
            await aiosmtplib.send(
                message,
                sender=return_path,
                recipients=[recipient],
                hostname="127.0.0.1",
                port=sink_port,
                local_hostname="bare.bench",
                start_tls=False,
            )

    async def reusing_worker() -> None:
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=sink_port, local_hostname="bare.bench", start_tls=False
        ) as smtp:
            while not queue.empty():
                return_path, recipient, message = queue.get_nowait()
                await smtp.sendmail(return_path, [recipient], message)

    started = time.perf_counter()
    await asyncio.gather(*((reusing_worker if reuse else worker)() for _ in range(CONCURRENCY)))
    return len(messages) / (time.perf_counter() - started)


def _sender_round(sink_port: int) -> tuple[float, list[EmailComposed]]:
    with (
        tempfile.TemporaryDirectory(prefix="mailfold-bench-sender-") as tmp,
        EmbeddedNats(Path(tmp) / "nats") as nats_server,
    ):
        emails = asyncio.run(_prepare(nats_server.url))
        rate = asyncio.run(_sender_rate(nats_server.url, sink_port, Path(tmp) / "sender.log"))
    return rate, emails


def main() -> int:
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Event()
    sink_port = free_port()
    sink = spawn.Process(target=run_sink, args=(sink_port, ready), daemon=True)
    sink.start()
    sender_rates: list[float] = []
    bare_rates: list[float] = []
    reuse_rates: list[float] = []
    started = time.monotonic()
    try:
        if not ready.wait(30):
            raise RuntimeError("the sink MX did not start")
        # Alternating rounds: the machine is shared, and others' load comes and goes.
        for _ in range(ROUNDS):
            rate, emails = _sender_round(sink_port)
            sender_rates.append(rate)
            bare_rates.append(asyncio.run(_bare_rate(emails, sink_port)))
            reuse_rates.append(asyncio.run(_bare_rate(emails, sink_port, reuse=True)))
            print(
                f"round: sender {rate:.1f} emails/s, bare {bare_rates[-1]:.1f} emails/s, "
                f"bare reusing connections {reuse_rates[-1]:.1f} emails/s"
            )
            if time.monotonic() - started > TIME_LIMIT_S / 2:
                break
    finally:
        sink.terminate()
        sink.join(10)
    # Each round's runs are close in time, so its ratio is the fair one; the median round is
    # recorded, so one disturbed round moves nothing.
    rounds = sorted(
        zip(sender_rates, bare_rates, reuse_rates, strict=True), key=lambda r: r[0] / r[2]
    )
    sender_rate, bare_rate, reuse_rate = rounds[len(rounds) // 2]
    print(
        f"sender: {EMAILS} emails, concurrency {CONCURRENCY}: {sender_rate:.1f} emails/s; "
        f"bare aiosmtplib (a connection per email, as aiosmtplib.send does): "
        f"{bare_rate:.1f} emails/s; median of {len(rounds)} rounds",
        flush=True,
    )
    print(
        f"bare aiosmtplib reusing its connections (as the sender's connection cache does): "
        f"{reuse_rate:.1f} emails/s",
        flush=True,
    )
    record("sender.deliver", sender_rate, "emails/s", reuse_rate)
    record("sender.deliver_vs_send", sender_rate, "emails/s", bare_rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
