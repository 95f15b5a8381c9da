"""Faults on the cluster under load: node loss (SIGKILL) and a partition (SIGSTOP) of the node
leading MAIL_EVENTS, while ingest, tracker and projector serve a steady load.

What is asserted, and why:
- Every request the load made was acknowledged in the end (2xx / 250 / the pixel and redirect):
  its client retried through the fault the way the API and SMTP ask (same Idempotency-Key, same
  message), and two nodes of three keep a quorum.
- Each acknowledged request has exactly one event in MAIL_EVENTS (found by the key it carries in
  the email's subject or the browser's User-Agent; a compose's event also by the email id ingest
  answered), and the stream holds each event id once.
- A request that was answered 503/451 or lost its connection may still have been stored: the
  publish may have reached the stream leader whose acknowledgement never came back. So the
  assertion for a failed attempt is not "no event" but "its retries add none": one key, at most
  one event. And no event exists that no request asked for.
- PostgreSQL holds each event once (events table), one row per email, and each email's opens and
  clicks count exactly the opens and clicks in the stream; `mailfold replay --verify` passes.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import asyncpg
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.api import StreamInfo
from tests.integration.cluster.load import Load, event_key
from tests.polling import eventually

from mailfold.cli.embedded import EmbeddedNats, EmbeddedNatsCluster
from mailfold.events import (
    STREAM,
    AnyEvent,
    EmailClicked,
    EmailComposed,
    EmailOpened,
    EmailReceived,
    decode,
)
from mailfold.runtime import bus

if TYPE_CHECKING:
    from tests.integration.cluster.conftest import ClusterStack

pytestmark = [
    pytest.mark.timeout(170),
    # nats-py leaves the socket of a reconnect attempt that got no INFO (a node stopped by
    # SIGSTOP accepts connections and says nothing) unclosed when it tries the next server.
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <function StreamWriter.__del__"
        ":pytest.PytestUnraisableExceptionWarning"
    ),
]


async def stream_info(nc: Client) -> StreamInfo:
    return await nc.jetstream(timeout=2).stream_info(STREAM)


async def wait_stream_healthy(nc: Client, running: int = 3) -> str:
    """Until MAIL_EVENTS has a leader and `running - 1` current replicas; the leader's name."""

    async def healthy() -> str | None:
        try:
            info = await stream_info(nc)
        except Exception:  # no leader to answer yet
            return None
        cluster = info.cluster
        if cluster is None or not cluster.leader:
            return None
        current = [p for p in cluster.replicas or [] if p.current and not p.offline]
        return cluster.leader if len(current) >= running - 1 else None

    leader: str = await eventually(healthy, timeout=60, interval=0.2)
    return leader


async def read_stream(nc: Client) -> list[tuple[str | None, AnyEvent]]:
    """Every message of MAIL_EVENTS: its Nats-Msg-Id and its event."""
    js = nc.jetstream(timeout=5)
    last = int((await stream_info(nc)).state.last_seq or 0)
    sub = await js.pull_subscribe("mail.events.>", stream=STREAM)
    found: list[tuple[str | None, AnyEvent]] = []
    try:
        seq = 0
        while seq < last:
            for msg in await sub.fetch(200, timeout=5):
                seq = msg.metadata.sequence.stream
                found.append(((msg.headers or {}).get("Nats-Msg-Id"), decode(msg.data)))
                await msg.ack()
    finally:
        await sub.unsubscribe()
    return found


def key_of(event: AnyEvent) -> str | None:
    if isinstance(event, EmailComposed | EmailReceived):
        return event_key(event.subject)
    if isinstance(event, EmailOpened | EmailClicked):
        return event_key(event.user_agent)
    return None


async def run_fault(stack: ClusterStack, fault: Callable[[Client], Awaitable[None]]) -> None:
    """The load from before the fault until after it, the checks once the projector caught up."""
    nc = await bus.connect(stack.cluster.url, "fault-test")
    load = Load(stack)
    stop = asyncio.Event()
    try:
        await wait_stream_healthy(nc)
        loading = asyncio.create_task(load.run(stop))
        try:
            await asyncio.sleep(3)  # steady before the fault
            await fault(nc)
            await asyncio.sleep(3)  # and after it
        finally:
            stop.set()
            await loading
        print(f"load under the fault:\n{load.summary()}")  # in the test's output on failure
        report = f"\nload:\n{load.summary()}\n{stack.logs()}"
        await check(stack, nc, load, report)
    finally:
        await bus.close(nc)


async def check(stack: ClusterStack, nc: Client, load: Load, report: str) -> None:
    requests = {r.key: r for r in load.requests}
    assert requests, report
    unanswered = [f"{r.key}: {r.answers}" for r in requests.values() if not r.acknowledged]
    assert not unanswered, f"requests never acknowledged: {unanswered}{report}"

    # The tracker answers before it publishes (its buffer retries): wait for its last events.
    async def all_published() -> list[tuple[str | None, AnyEvent]] | None:
        try:
            messages = await read_stream(nc)
        except (nats.errors.Error, TimeoutError):  # the cluster is still settling: read again
            return None
        keys = {key_of(event) for _, event in messages}
        return messages if keys >= set(requests) else None

    messages = await eventually(all_published, timeout=60, interval=1)

    # The stream: each event once, each request once, nothing no request asked for.
    ids = [event.event_id for _, event in messages]
    assert all(msg_id == event.event_id for msg_id, event in messages), report
    assert len(ids) == len(set(ids)), f"duplicates: {_repeated(ids)}{report}"
    keys = [key_of(event) for _, event in messages]
    assert None not in keys, f"events no request made: {messages}{report}"
    assert len(keys) == len(set(keys)), f"requests with several events: {_repeated(keys)}{report}"
    assert set(keys) == set(requests), report
    kinds: dict[type, str] = {EmailComposed: "compose", EmailReceived: "inbound"}
    kinds |= {EmailOpened: "open", EmailClicked: "click"}
    for _, event in messages:
        request = requests[str(key_of(event))]
        assert kinds.get(type(event)) == request.kind, (request, event)
        if request.kind == "compose":  # the email id ingest answered is the event's
            assert event.email_id == request.email_id, (request, event)

    # PostgreSQL: once the projector has folded every event, each event once and every
    # email's counts as the stream says.
    conn = await asyncpg.connect(stack.database_url)
    try:

        async def caught_up() -> bool:
            return int(await conn.fetchval("SELECT count(*) FROM events")) >= len(ids)

        try:
            await eventually(caught_up, timeout=60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await _projection_state(nc, conn)}{report}") from exc
        stored = await conn.fetch("SELECT event_id, email_id FROM events")
        emails = {
            r["email_id"]: r
            for r in await conn.fetch(
                "SELECT email_id, opens_human + opens_machine AS opens,"
                " clicks_human + clicks_machine AS clicks FROM emails"
            )
        }
    finally:
        await conn.close()
    assert sorted(r["event_id"] for r in stored) == sorted(ids), report
    origins = {e.email_id for _, e in messages if isinstance(e, EmailComposed | EmailReceived)}
    assert set(emails) == origins, report
    opens = collections.Counter(e.email_id for _, e in messages if isinstance(e, EmailOpened))
    clicks = collections.Counter(e.email_id for _, e in messages if isinstance(e, EmailClicked))
    for email_id, row in emails.items():
        assert (row["opens"], row["clicks"]) == (opens[email_id], clicks[email_id]), email_id

    verified = stack.cli("replay", "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


async def _projection_state(nc: Client, conn: asyncpg.Connection) -> str:
    """Where the projector is, for a failure message."""
    positions = await conn.fetch("SELECT * FROM consumer_positions")
    folded = await conn.fetchval("SELECT count(*) FROM events")
    js = nc.jetstream(timeout=5)
    try:
        consumers = repr(
            [
                (c.name, c.num_pending, c.num_ack_pending, c.delivered, c.ack_floor, c.cluster)
                for c in await js.consumers_info(STREAM)
            ]
        )
    except (nats.errors.Error, TimeoutError) as exc:
        consumers = repr(exc)
    return f"events folded {folded}; positions {positions}; consumers {consumers}"


def _repeated(values: list[str | None]) -> list[str | None]:
    return [v for v, n in collections.Counter(values).items() if n > 1]


async def test_killing_the_stream_leader_then_another_node_loses_and_repeats_nothing(
    cluster_stack: ClusterStack,
) -> None:
    cluster = cluster_stack.cluster

    async def node_loss(nc: Client) -> None:
        killed: list[str] = []
        for _ in range(2):
            leader = await wait_stream_healthy(nc)
            # The second time, the node leading now (never the one just restarted).
            name = leader if leader not in killed else _other(cluster, killed)
            node = cluster.node_named(name)
            await asyncio.to_thread(node.kill)
            killed.append(name)
            await asyncio.sleep(10)
            await asyncio.to_thread(node.start)
        await asyncio.to_thread(cluster.wait_meta_leader)

    await run_fault(cluster_stack, node_loss)


async def test_a_partitioned_stream_leader_loses_and_repeats_nothing(
    cluster_stack: ClusterStack, resumed_cluster: EmbeddedNatsCluster
) -> None:
    async def partition(nc: Client) -> None:
        node = resumed_cluster.node_named(await wait_stream_healthy(nc))
        node.pause()
        try:
            await asyncio.sleep(20)
        finally:
            node.resume()
        await wait_stream_healthy(nc)
        await asyncio.to_thread(resumed_cluster.wait_meta_leader)

    await run_fault(cluster_stack, partition)


def _other(cluster: EmbeddedNatsCluster, excluded: list[str]) -> str:
    nodes: list[EmbeddedNats] = [n for n in cluster.nodes if n.server_name not in excluded]
    return nodes[0].server_name
