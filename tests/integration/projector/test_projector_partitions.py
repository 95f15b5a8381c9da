"""Partitioned projectors: fair shares across processes, verify across partitions at different
positions, and changing the number of partitions with `mailfold repartition`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import pytest
from nats.aio.client import Client
from tests.integration.projector.conftest import (
    assert_projection_is_the_fold,
    last_seq,
    position,
    publish,
)
from tests.polling import eventually

from mailfold.cli.embedded import EmbeddedNats
from mailfold.cli.main import main as mailfold
from mailfold.events import AnyEvent, new_id
from mailfold.projector.adapters import postgres
from mailfold.projector.adapters.leases import PgLeases
from mailfold.projector.bootstrap import Service
from mailfold.projector.domain.partitions import Partition, layout, partition_of
from mailfold.projector.entrypoints.consumer import ConsumerSettings, PartitionWorker
from mailfold.runtime.settings import ConfigError

if TYPE_CHECKING:
    from tests.integration.projector.conftest import Mail, ProjectorProcess, StartProjector


@pytest.fixture(autouse=True)
def environment(
    monkeypatch: pytest.MonkeyPatch, fresh_nats: EmbeddedNats, database_url: str, tmp_path: Path
) -> None:
    """The CLI finds the test's servers in the environment (and no dev stack's runtime file)."""
    monkeypatch.setenv("MAILFOLD_NATS_URL", fresh_nats.url)
    monkeypatch.setenv("MAILFOLD_DATABASE_URL", database_url)
    monkeypatch.setenv("MAILFOLD_DATA_DIR", str(tmp_path / "no-dev-stack"))


async def run(*argv: str) -> int:
    """`mailfold <argv>` in a thread (the commands run their own event loop)."""
    return await asyncio.to_thread(mailfold, list(argv))


def partitioned(count: int, **overrides: Any) -> ConsumerSettings:
    return ConsumerSettings(partitions=count, lease_poll=0.1, max_batch=25, **overrides)


def histories(mail: Mail, emails: int) -> list[AnyEvent]:
    events: list[AnyEvent] = []
    for n in range(emails):
        events.extend(mail.life(new_id(), n))
    return events


async def wait_for_layout(database_url: str, count: int, target: int) -> None:
    """Until every partition of the layout has committed up to `target`."""

    async def done() -> bool:
        names = [p.consumer for p in layout("projector", count)]
        return all([await position(database_url, name) >= target for name in names])

    await eventually(done, timeout=60, interval=0.05)


async def shares(services: list[Service]) -> list[list[int]]:
    """The partitions each service consumes, as its /healthz shows them."""
    held = []
    async with httpx.AsyncClient() as client:
        for service in services:
            body = (await client.get(f"http://127.0.0.1:{service.port}/healthz")).json()
            assert body["partitions"]["count"] == 4
            held.append(body["partitions"]["consuming"])
    return held


def settled(*sizes: int) -> Any:
    """A check that the services consume every partition once, in shares of these sizes."""

    async def check(services: list[Service]) -> list[list[int]] | None:
        held = await shares(services)
        every = sorted(i for h in held for i in h)
        return (
            held if sorted(len(h) for h in held) == list(sizes) and every == [0, 1, 2, 3] else None
        )

    return check


async def test_two_processes_settle_at_two_and_two_and_a_third_gets_its_share(
    nc: Client, mail: Mail, database_url: str, start_projector: StartProjector
) -> None:
    js = nc.jetstream()
    first, second = histories(mail, 30), histories(mail, 30)
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(start_projector(consumer=partitioned(4)))
        assert await eventually(lambda: settled(4)([a]), timeout=30) == [[0, 1, 2, 3]]
        b = await stack.enter_async_context(start_projector(consumer=partitioned(4)))
        await eventually(lambda: settled(2, 2)([a, b]), timeout=30)
        await publish(js, first)
        await wait_for_layout(database_url, 4, await last_seq(js))

        c = await stack.enter_async_context(start_projector(consumer=partitioned(4)))
        await eventually(lambda: settled(1, 1, 2)([a, b, c]), timeout=30)
        await publish(js, second)
        await wait_for_layout(database_url, 4, await last_seq(js))
    await assert_projection_is_the_fold(database_url, [*first, *second])
    assert await run("replay", "--verify") == 0


async def test_verify_compares_each_partitions_emails_at_its_own_position(
    nc: Client,
    mail: Mail,
    database_url: str,
    start_projector: StartProjector,
    fresh_nats: EmbeddedNats,
    capsys: pytest.CaptureFixture[str],
) -> None:
    js = nc.jetstream()
    before = histories(mail, 20)
    async with start_projector(consumer=partitioned(2)):
        await publish(js, before)
        await wait_for_layout(database_url, 2, await last_seq(js))
    behind = await last_seq(js)
    after = histories(mail, 20)
    await publish(js, after)
    # Only partition 0 folds on: partition 1 stays behind, at the earlier position.
    settings = partitioned(2)
    pool = await postgres.create_pool(database_url)
    worker = PartitionWorker(
        nc, js, pool, database_url, settings, Partition("projector", 0, 2), lambda: None
    )
    task = asyncio.create_task(worker.run())
    try:
        end = await last_seq(js)
        await eventually(lambda: _at(database_url, "projector-p0-of-2", end), timeout=30)
    finally:
        worker.stop()
        await task
        await pool.close()
    assert await position(database_url, "projector-p1-of-2") == behind
    ahead = [e for e in after if partition_of(e.email_id, 2) == 0]
    assert 0 < len(ahead) < len(after)
    await assert_projection_is_the_fold(database_url, [*before, *ahead])
    capsys.readouterr()
    assert await run("replay", "--verify") == 0
    assert "verify: the live projection equals the rebuild" in capsys.readouterr().out

    # A change to an email of the partition that is behind is still found.
    conn = await asyncpg.connect(database_url)
    try:
        lagging = next(e.email_id for e in before if partition_of(e.email_id, 2) == 1)
        await conn.execute("UPDATE emails SET subject = 'altered' WHERE email_id = $1", lagging)
    finally:
        await conn.close()
    assert await run("replay", "--verify") == 1
    assert f"emails {lagging} subject: live='altered'" in capsys.readouterr().out


async def _at(database_url: str, consumer: str, target: int) -> bool:
    return await position(database_url, consumer) >= target


async def test_repartition_moves_the_projection_to_another_number_of_partitions(
    nc: Client,
    mail: Mail,
    database_url: str,
    start_projector: StartProjector,
    capsys: pytest.CaptureFixture[str],
) -> None:
    js = nc.jetstream()
    one, three, two = histories(mail, 15), histories(mail, 15), histories(mail, 15)
    async with start_projector():
        await publish(js, one)
        await wait_for_layout(database_url, 1, await last_seq(js))
        # Refused while a projector holds its lease.
        assert await run("repartition", "3") == 1
        assert "stop every projector first" in capsys.readouterr().err
    at = await last_seq(js)

    # Started with another N before repartitioning: refused, naming the command to run.
    with pytest.raises(ConfigError, match="mailfold repartition 3"):
        async with start_projector(consumer=partitioned(3)):
            pass

    assert await run("repartition", "3") == 0
    assert f"each starting after sequence {at}" in capsys.readouterr().out
    stored = await _positions(database_url)
    assert stored == {p.consumer: at for p in layout("projector", 3)}
    async with start_projector(consumer=partitioned(3)):
        await publish(js, three)
        await wait_for_layout(database_url, 3, await last_seq(js))
    assert await run("replay", "--verify") == 0

    # And down again to 2 (partitions at different positions: each starts at the lowest).
    assert await run("repartition", "2") == 0
    assert set(await _positions(database_url)) == {p.consumer for p in layout("projector", 2)}
    async with start_projector(consumer=partitioned(2)):
        await publish(js, two)
        await wait_for_layout(database_url, 2, await last_seq(js))
    await assert_projection_is_the_fold(database_url, [*one, *three, *two])
    assert await run("replay", "--verify") == 0
    # The old layouts' durable consumers are gone.
    names = {c.name async for c in _consumers(nc)}
    assert names == {p.consumer for p in layout("projector", 2)}
    assert await run("repartition", "0") == 2


async def _positions(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        return await postgres.positions(conn)
    finally:
        await conn.close()


async def _consumers(nc: Client) -> Any:
    for info in await nc.jetstream().consumers_info("MAIL_EVENTS"):
        yield info.config


async def test_leases_are_seen_by_a_role_without_privileges(database_url: str) -> None:
    """Counting live processes and holders reads pg_locks, which every role may read."""
    role = f"projector_{new_id().replace('-', '')[:12]}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER")
        dsn = database_url.replace("postgres@", f"{role}@", 1)
        assert dsn != database_url
        parts = layout("projector", 4)
        sessions = [await asyncpg.connect(dsn) for _ in range(2)]
        try:
            leases = [
                PgLeases(conn, schema="public", base="projector", partitions=parts)
                for conn in sessions
            ]
            for lease in leases:
                await lease.join()
            assert await leases[0].try_take(1)
            assert await leases[1].try_take(2)
            assert not await leases[1].try_take(1)
            seen = await leases[1].picture()
            assert seen.members == sorted(lease.me for lease in leases)
            assert seen.holders == {1: leases[0].me, 2: leases[1].me}
            await sessions[0].close()  # the process is gone: so are its leases
            seen = await leases[1].picture()
            assert seen.members == [leases[1].me]
            assert seen.holders == {2: leases[1].me}
            assert await leases[1].try_take(1)
        finally:
            for conn in sessions:
                if not conn.is_closed():
                    await conn.close()
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


async def test_a_process_logs_and_shows_its_partitions(
    projector_process: Callable[..., ProjectorProcess],
) -> None:
    process = projector_process(
        MAILFOLD_PROJECTOR_PARTITIONS="2", MAILFOLD_PROJECTOR_LEASE_POLL_S="0.1"
    )
    process.start()
    await process.wait_healthy()

    async def both() -> dict[str, Any] | None:
        async with httpx.AsyncClient() as client:
            body: dict[str, Any] = (
                await client.get(f"http://127.0.0.1:{process.port}/healthz")
            ).json()
        return body if body["partitions"]["consuming"] == [0, 1] else None

    health = await eventually(both, timeout=30)
    assert health["partitions"] == {
        "count": 2,
        "held": [0, 1],
        "consuming": [0, 1],
        "live_processes": 1,
    }
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"http://127.0.0.1:{process.port}/metrics")).text
    assert 'mailfold_projector_partition_leader{partition="0"} 1.0' in metrics
    assert 'mailfold_projector_partition_leader{partition="1"} 1.0' in metrics
    assert "mailfold_projector_partitions_held 2.0" in metrics
    assert process.stop() == 0
    lines = [
        json.loads(line) for line in process.log.read_text().splitlines() if line.startswith("{")
    ]
    took = {line["partition"] for line in lines if line.get("event") == "took a partition"}
    consuming = {
        (line["partition"], line["consumer"]) for line in lines if line.get("event") == "consuming"
    }
    assert took == {0, 1}
    assert consuming == {(0, "projector-p0-of-2"), (1, "projector-p1-of-2")}
