"""Partitioned projectors under SIGKILL: 4 partitions over 2 `mailfold serve projector` processes,
one of them killed at random points 10 times while events flow. Leases move to the survivor, and
the tables end equal to the pure fold of the stream; `replay --verify` agrees."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from nats.aio.client import Client
from tests.integration.projector.conftest import (
    assert_folded_once,
    last_seq,
    position,
    publish_again,
)
from tests.polling import eventually

from mailfold.cli.embedded import EmbeddedNats
from mailfold.cli.main import main as mailfold
from mailfold.events import AnyEvent, new_id
from mailfold.projector.domain.partitions import layout
from mailfold.runtime import bus

if TYPE_CHECKING:
    from tests.integration.projector.conftest import Mail, ProjectorProcess

POISON = (b"\xffgarbage", b'{"type": "email_sent", "org_id": "acme"}', b'{"type": "email_warped"}')
PARTITIONS = 4
KILLS = 10

pytestmark = pytest.mark.timeout(300)


async def consuming(process: ProjectorProcess) -> list[int] | None:
    """The partitions the process consumes, from its /healthz (None while it does not answer)."""
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            body = (await client.get(f"http://127.0.0.1:{process.port}/healthz")).json()
    except (httpx.TransportError, ValueError):
        return None
    held: list[int] = body["partitions"]["consuming"]
    return held


async def test_four_partitions_over_two_processes_survive_ten_kills_and_equal_the_pure_fold(
    nc: Client,
    mail: Mail,
    database_url: str,
    fresh_nats: EmbeddedNats,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    projector_process: Callable[..., ProjectorProcess],
) -> None:
    rng = random.Random()
    js = nc.jetstream()
    distinct: list[AnyEvent] = []
    for n in range(400):
        distinct.extend(mail.life(new_id(), n))
    rng.shuffle(distinct)  # facts before their origins, late bounces, opens before deliveries
    repeats = rng.sample(distinct, 60)

    env = {
        "MAILFOLD_PROJECTOR_PARTITIONS": str(PARTITIONS),
        "MAILFOLD_PROJECTOR_LEASE_POLL_S": "0.2",
        # Small batches: many commits, so that kills land between commit and ack too.
        "MAILFOLD_PROJECTOR_MAX_BATCH": "40",
        "MAILFOLD_LOG_LEVEL": "warning",
    }
    processes = [projector_process(**env), projector_process(**env)]
    for process in processes:
        process.start()

    async def two_and_two() -> bool:
        held = [await consuming(p) for p in processes]
        if any(h is None for h in held):
            return False
        every = sorted(i for h in held for i in h or [])
        return every == list(range(PARTITIONS)) and all(len(h or []) == 2 for h in held)

    await eventually(two_and_two, timeout=60)

    stop_producing = asyncio.Event()

    async def produce() -> None:
        chunk = 40
        for i in range(0, len(distinct), chunk):
            for event in distinct[i : i + chunk]:
                await bus.publish_event(js, event)
            # Within the duplicate window: JetStream drops these.
            for event in repeats[i // chunk :: 25]:
                await bus.publish_event(js, event)
            if not stop_producing.is_set():
                await asyncio.sleep(rng.uniform(0.2, 0.8))
        # Beyond it (another message id): the stream holds these twice.
        for event in repeats:
            await publish_again(js, event)
        for n, data in enumerate(POISON):
            await js.publish(f"mail.events.{mail.org_id}.email_sent", data, headers={"n": str(n)})

    producing = asyncio.create_task(produce())
    for _ in range(KILLS):
        victim = rng.choice(processes)
        survivor = processes[1 - processes.index(victim)]
        # Killed while consuming: at a random moment of folding, committing or acknowledging.
        await asyncio.sleep(rng.uniform(0.05, 1.0))
        victim.kill()
        # Its session went with it: the survivor takes every partition.
        await eventually(
            partial(_holds, survivor, list(range(PARTITIONS))), timeout=60, interval=0.1
        )
        victim.start()
        await eventually(two_and_two, timeout=60, interval=0.1)
    stop_producing.set()
    await producing

    stream_end = await last_seq(js)
    assert stream_end == len(distinct) + len(repeats) + len(POISON)

    async def caught_up() -> bool:
        names = [p.consumer for p in layout("projector", PARTITIONS)]
        return all([await position(database_url, name) == stream_end for name in names])

    await eventually(caught_up, timeout=90)
    for process in processes:
        assert process.stop() == 0

    # Only its partition files a poison message, once.
    await assert_folded_once(js, database_url, distinct, POISON)

    monkeypatch.setenv("MAILFOLD_NATS_URL", fresh_nats.url)
    monkeypatch.setenv("MAILFOLD_DATABASE_URL", database_url)
    monkeypatch.setenv("MAILFOLD_DATA_DIR", str(tmp_path / "no-dev-stack"))
    assert await asyncio.to_thread(mailfold, ["replay", "--verify"]) == 0


async def _holds(process: ProjectorProcess, partitions: list[int]) -> bool:
    return await consuming(process) == partitions
