"""Projector throughput, replay throughput and memory, each next to a bare NATS baseline.

One fresh stream of a realistic mix: every email an origin, then sent, delivered (or bounced or
deferred first), opens and clicks by people and machines, interleaved in time order as they would
arrive. Measured on it:

- the projector (a subprocess, `mailfold serve projector`) folding 200k events into PostgreSQL,
  next to a bare nats-py pull-and-ack loop (`fetch` with the same batch size, one ack per message)
  over the same stream;
- replay into a scratch schema, next to a bare nats-py ordered consumer (callback) that only counts,
  in three rounds of both, the round with the median ratio recorded;
- the projector's peak RSS at 200k events and again after 800k more (1M), which should stay flat;
- partitions (`projector.partitions_2`): the same 200k events folded into fresh databases by 2
  partitions in 2 processes, over 1 partition in 1 process, with the CPU each used.

MAILFOLD_BENCH_PROJECTOR_FIRST / _TOTAL / _BATCH change the sizes (200k, 1M, 2000) for quick runs.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import psutil
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from _results import record
from mailfold.cli.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from mailfold.events import (
    STREAM,
    AnyEvent,
    BounceKind,
    EmailBounced,
    EmailCaptured,
    EmailClicked,
    EmailComposed,
    EmailDeferred,
    EmailDelivered,
    EmailOpened,
    EmailReceived,
    EmailSent,
    Module,
    RecordRef,
    Source,
    Verdict,
    encode,
    event_subject,
)
from mailfold.events.ids import new_id
from mailfold.projector.bootstrap import tune_gc
from mailfold.projector.cli import replay
from mailfold.projector.domain.partitions import layout
from mailfold.runtime import bus

FIRST = int(os.environ.get("MAILFOLD_BENCH_PROJECTOR_FIRST", "200000"))
TOTAL = int(os.environ.get("MAILFOLD_BENCH_PROJECTOR_TOTAL", "1000000"))
EVENTS_PER_EMAIL = 10
BATCH = int(os.environ.get("MAILFOLD_BENCH_PROJECTOR_BATCH", "2000"))
REPLAY_ROUNDS = 3
ORG = "bench"
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
CRM_SOURCES = (Source.INDIVIDUAL, Source.MASS_EMAIL, Source.WORKFLOW_ALERT, Source.CADENCE)

Published = tuple[str, bytes, str]  # subject, data, Nats-Msg-Id


def _email_events(rng: random.Random, n: int, start: datetime) -> list[AnyEvent]:
    """One email's events: an origin, then what happened to it."""
    email_id = new_id(int(start.timestamp() * 1000))

    def env(seconds: float) -> dict[str, Any]:
        at = start + timedelta(seconds=seconds)
        return {
            "event_id": new_id(int(at.timestamp() * 1000)),
            "org_id": ORG,
            "email_id": email_id,
            "occurred_at": at,
            "producer": "bench",
        }

    to = f"contact{n}@example.org"
    records = (RecordRef(record_id=f"rec-{n % 5000}", module=Module.CONTACTS),)
    kind = rng.random()
    if kind < 0.04:
        return [
            EmailReceived(
                **env(0),
                source=Source.IMAP,
                from_addr=to,
                to=("rep@crm.example",),
                subject=f"Re: proposal {n}",
                records=records,
            )
        ]
    if kind < 0.08:
        return [
            EmailCaptured(
                **env(0),
                source=Source.BCC_DROPBOX,
                from_addr="rep@crm.example",
                to=(to,),
                subject=f"Notes {n}",
                records=records,
            ),
            EmailSent(**env(1), recipients=(to,)),
        ]
    events: list[AnyEvent] = [
        EmailComposed(
            **env(0),
            source=rng.choice(CRM_SOURCES),
            from_addr="rep@crm.example",
            to=(to,),
            subject=f"Quarterly review {n}",
            records=records,
        ),
        EmailSent(**env(2), recipients=(to,), message_id=f"<{email_id}@crm.example>"),
    ]
    fate = rng.random()
    if fate < 0.06:
        events.append(
            EmailBounced(
                **env(5),
                recipient=to,
                kind=BounceKind.HARD,
                status="5.1.1",
                reply_code=550,
                reason="user_unknown",
                diagnostic="550 5.1.1 user unknown",
            )
        )
        return events
    if fate < 0.1:
        events.append(EmailDeferred(**env(4), recipient=to, reply_code=451, status="4.7.1"))
    events.append(EmailDelivered(**env(6), recipient=to, reply_code=250, reply="250 2.0.0 OK"))
    if rng.random() < 0.3:
        events.append(EmailOpened(**env(8), recipient=to, verdict=Verdict.MACHINE, label="proxy"))
    spread = rng.expovariate(1 / 3600)
    for _ in range(rng.randint(3, 6)):
        events.append(
            EmailOpened(
                **env(10 + rng.random() * spread),
                recipient=to,
                user_agent="Mozilla/5.0 (Macintosh)",
                ip="203.0.113.0",
            )
        )
    for _ in range(rng.randint(0, 3)):
        events.append(
            EmailClicked(
                **env(20 + rng.random() * spread),
                recipient=to,
                url="https://example.org/offer",
                ip="203.0.113.0",
            )
        )
    return events


def generate(count: int, *, seed: int, first_email: int) -> Iterator[list[Published]]:
    """`count` events in the order they happen, in chunks; an email starts every 4 s."""
    rng = random.Random(seed)
    produced = 0
    n = first_email
    pending: list[tuple[datetime, AnyEvent]] = []
    while produced < count:
        for _ in range(500):
            start = T0 + timedelta(seconds=4 * n)
            pending.extend((e.occurred_at, e) for e in _email_events(rng, n, start))
            n += 1
        pending.sort(key=lambda pair: pair[0])
        # No email still to come has an event before its start: everything earlier can go.
        horizon = T0 + timedelta(seconds=4 * n)
        ready = 0
        while ready < len(pending) and pending[ready][0] < horizon and produced + ready < count:
            ready += 1
        chunk = [(event_subject(e), encode(e), e.event_id) for _, e in pending[:ready]]
        del pending[:ready]
        produced += ready
        if chunk:
            yield chunk


async def publish(js: JetStreamContext, chunks: Iterator[list[Published]]) -> int:
    """Publish with many acks in flight; returns how many were published."""
    total = 0
    for chunk in chunks:
        for start in range(0, len(chunk), 2000):
            futures = [
                await js.publish_async(subject, data, headers={"Nats-Msg-Id": msg_id})
                for subject, data, msg_id in chunk[start : start + 2000]
            ]
            await asyncio.gather(*futures)
        total += len(chunk)
    return total


async def bare_pull(js: JetStreamContext, count: int) -> float:
    """A plain nats-py pull consumer: fetch a batch, ack each message; events/s."""
    config = ConsumerConfig(durable_name="bare", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1)
    sub = await js.pull_subscribe("mail.events.>", durable="bare", stream=STREAM, config=config)
    started = time.perf_counter()
    seen = 0
    while seen < count:
        for msg in await sub.fetch(BATCH, timeout=5):
            await msg.ack()
            seen += 1
    rate = count / (time.perf_counter() - started)
    await sub.unsubscribe()
    await js.delete_consumer(STREAM, "bare")
    return rate


async def bare_ordered(js: JetStreamContext, count: int) -> float:
    """A plain nats-py ordered consumer whose callback only counts; events/s."""
    done = asyncio.Event()
    seen = 0

    async def on_message(_: Any) -> None:
        nonlocal seen
        seen += 1
        if seen >= count:
            done.set()

    started = time.perf_counter()
    sub = await js.subscribe(
        "mail.events.>",
        ordered_consumer=True,
        cb=on_message,
        pending_msgs_limit=1_000_000,
        pending_bytes_limit=1 << 30,
    )
    await done.wait()
    rate = count / (time.perf_counter() - started)
    await sub.unsubscribe()
    return rate


class Projector:
    """`mailfold serve projector` as a child process, its RSS sampled."""

    def __init__(self, nats_url: str, database_url: str, logs: Path, **extra: str) -> None:
        self.port = free_port()
        env = dict(
            os.environ,
            MAILFOLD_NATS_URL=nats_url,
            MAILFOLD_DATABASE_URL=database_url,
            MAILFOLD_PROJECTOR_PORT=str(self.port),
            MAILFOLD_PROJECTOR_MAX_BATCH=str(BATCH),
            MAILFOLD_LOG_LEVEL="warning",
            MAILFOLD_LOG_JSON="true",
            **extra,
        )
        self._log = logs.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailfold.cli", "serve", "projector"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._ps = psutil.Process(self.proc.pid)
        self.peak_rss = 0

    def sample(self) -> None:
        self.peak_rss = max(self.peak_rss, self._ps.memory_info().rss)

    async def wait_healthy(self) -> None:
        async with httpx.AsyncClient() as client:
            for _ in range(600):
                try:
                    if (
                        await client.get(f"http://127.0.0.1:{self.port}/healthz")
                    ).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError("projector did not become healthy")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self._log.close()


async def consuming(projector: Projector) -> list[int]:
    """The partitions the projector consumes, from its /healthz."""
    async with httpx.AsyncClient() as client:
        try:
            body = (await client.get(f"http://127.0.0.1:{projector.port}/healthz")).json()
        except (httpx.TransportError, ValueError):
            return []
    held: list[int] = body["partitions"]["consuming"]
    return held


@dataclass(frozen=True)
class PartitionedRun:
    """One layout's throughput over the stream and the CPU it used meanwhile."""

    rate: float
    process_cpu: list[float]  # percent of one core, per projector process
    machine_cpu: float  # percent of all cores


async def partitioned(
    nats_url: str, postgres: EmbeddedPostgres, root: Path, count: int, target: int
) -> PartitionedRun:
    """`count` partitions in `count` processes folding the stream's first `target` events into a
    fresh database: events/s from the moment every partition is consumed (each by its own
    process) until every partition has committed `target`."""
    database_url = postgres.create_database(f"bench_partitions_{count}")
    # Durable consumers of their own: the main projector's `projector` stays where it is.
    base = f"partitions{count}"
    extra = {
        "MAILFOLD_PROJECTOR_CONSUMER": base,
        "MAILFOLD_PROJECTOR_PARTITIONS": str(count),
        "MAILFOLD_PROJECTOR_LEASE_POLL_S": "0.1",
    }
    projectors = [
        Projector(nats_url, database_url, root / f"partitions-{count}-{i}.log", **extra)
        for i in range(count)
    ]
    conn: asyncpg.Connection | None = None
    try:
        for projector in projectors:
            await projector.wait_healthy()
        while True:
            held = [await consuming(p) for p in projectors]
            if all(len(h) == 1 for h in held) and len({h[0] for h in held}) == count:
                break
            await asyncio.sleep(0.01)
        conn = await asyncpg.connect(database_url)
        names = [p.consumer for p in layout(base, count)]
        query = "SELECT last_seq FROM consumer_positions WHERE consumer = ANY($1)"
        processes = [psutil.Process(p.proc.pid) for p in projectors]
        for process in processes:
            process.cpu_percent(None)
        psutil.cpu_percent(None)
        started = time.perf_counter()
        at_start = [int(r[0]) for r in await conn.fetch(query, names)]
        while True:
            positions = [int(r[0]) for r in await conn.fetch(query, names)]
            if len(positions) == count and min(positions) >= target:
                break
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        machine = psutil.cpu_percent(None) * (psutil.cpu_count() or 1)
        cpu = [process.cpu_percent(None) for process in processes]
    finally:
        if conn is not None:
            await conn.close()
        for projector in projectors:
            projector.stop()
    done = target - sum(at_start) / max(len(at_start), 1)
    return PartitionedRun(rate=done / elapsed, process_cpu=cpu, machine_cpu=machine)


def describe(run: PartitionedRun) -> str:
    """The rate and the CPU seen, for a person."""
    per_process = " + ".join(f"{c:.0f}%" for c in run.process_cpu)
    cores = psutil.cpu_count() or 1
    return (
        f"{run.rate:,.0f} events/s, projector CPU {per_process} of one core, "
        f"machine {run.machine_cpu:.0f}% of {cores * 100}%"
    )


async def follow(projector: Projector, conn: asyncpg.Connection, target: int) -> tuple[float, int]:
    """Sample RSS while the projector catches up to `target`; events/s from its first commit."""
    first: tuple[float, int] | None = None
    while True:
        projector.sample()
        position = await conn.fetchval(
            "SELECT last_seq FROM consumer_positions WHERE consumer = 'projector'"
        )
        now = time.perf_counter()
        if position and first is None:
            first = (now, int(position))
        if position is not None and position >= target:
            assert first is not None
            return (target - first[1]) / max(now - first[0], 1e-9), int(position)
        if projector.proc.poll() is not None:
            raise RuntimeError("the projector exited")
        await asyncio.sleep(0.02)


async def main() -> None:
    tune_gc()  # as `mailfold replay` does (and the projector process, in its main)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with (
            EmbeddedNats(root / "nats") as nats_server,
            EmbeddedPostgres(root / "pg", fast=True) as postgres,
        ):
            database_url = postgres.create_database("bench")
            nc = await nats.connect(nats_server.url)
            js = nc.jetstream(publish_async_max_pending=4000)
            await bus.ensure_topology(js)

            started = time.perf_counter()
            published = await publish(js, generate(FIRST, seed=1, first_email=0))
            print(f"published {published} events in {time.perf_counter() - started:.1f}s")

            pull_rate = await bare_pull(js, FIRST)
            print(f"bare pull-and-ack loop: {pull_rate:,.0f} events/s")

            projector = Projector(nats_server.url, database_url, root / "projector.log")
            conn = await asyncpg.connect(database_url)
            try:
                await projector.wait_healthy()
                fold_rate, _ = await follow(projector, conn, FIRST)
                rss_first = projector.peak_rss
                print(
                    f"projector: {fold_rate:,.0f} events/s committed, peak RSS {rss_first >> 20} MiB"
                )

                # Partitions: the same stream (nothing else is published meanwhile) into fresh
                # databases, one partition in one process, then two in two processes.
                one = await partitioned(nats_server.url, postgres, root, 1, FIRST)
                print(f"1 partition in 1 process: {describe(one)}")
                two = await partitioned(nats_server.url, postgres, root, 2, FIRST)
                print(f"2 partitions in 2 processes: {describe(two)}")

                # Replay next to its baseline, round after round; the round with the median
                # ratio is recorded, so one disturbed round moves nothing.
                rounds: list[tuple[float, float]] = []
                for _ in range(REPLAY_ROUNDS):
                    ordered = await bare_ordered(js, FIRST)
                    report = (await replay(nc, database_url, to_seq=FIRST)).report
                    rounds.append((report.messages / report.seconds, ordered))
                    print(
                        f"replay: {rounds[-1][0]:,.0f} events/s ({report.events} events); "
                        f"bare ordered consumer: {ordered:,.0f} events/s"
                    )
                rounds.sort(key=lambda r: r[0] / r[1])
                replay_rate, ordered_rate = rounds[len(rounds) // 2]

                started = time.perf_counter()
                more = await publish(js, generate(TOTAL - FIRST, seed=2, first_email=FIRST))
                print(f"published {more} more in {time.perf_counter() - started:.1f}s")
                await follow(projector, conn, TOTAL)
                rss_total = projector.peak_rss
                print(f"projector at {TOTAL:,} events: peak RSS {rss_total >> 20} MiB")
            finally:
                await conn.close()
                projector.stop()
                await nc.close()

    record("projector.fold", fold_rate, "events/s", pull_rate)
    record("projector.replay", replay_rate, "events/s", ordered_rate)
    record("projector.rss_growth", rss_total / rss_first, "ratio", 1.0)
    record("projector.partitions_2", two.rate, "events/s", one.rate)
    print(f"  (1 partition: {describe(one)}; 2 partitions: {describe(two)})")


if __name__ == "__main__":
    asyncio.run(main())
