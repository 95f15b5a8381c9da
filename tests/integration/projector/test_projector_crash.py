"""Exactly once: the projector SIGKILLed while events flow ends equal to one clean pure fold."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from nats.aio.client import Client

from mailfold.events import AnyEvent, new_id
from mailfold.runtime import bus

if TYPE_CHECKING:
    from tests.integration.projector.conftest import Mail, ProjectorProcess

from tests.integration.projector.conftest import (
    assert_folded_once,
    last_seq,
    publish_again,
    wait_for_position,
)

POISON = (b"\xffgarbage", b'{"type": "email_sent", "org_id": "acme"}', b'{"type": "email_warped"}')


async def test_killed_at_random_points_the_projection_still_equals_the_pure_fold(
    nc: Client,
    mail: Mail,
    database_url: str,
    projector_process: Callable[..., ProjectorProcess],
) -> None:
    rng = random.Random()
    js = nc.jetstream()
    distinct: list[AnyEvent] = []
    for n in range(240):
        distinct.extend(mail.life(new_id(), n))
    rng.shuffle(distinct)  # facts before their origins, late bounces, opens before deliveries
    repeats = rng.sample(distinct, 60)

    # Small batches: many commits, so that kills land between commit and ack too.
    projector = projector_process(MAILFOLD_PROJECTOR_MAX_BATCH="40", MAILFOLD_LOG_LEVEL="warning")
    projector.start()

    async def produce() -> None:
        for i in range(0, len(distinct), 60):
            for event in distinct[i : i + 60]:
                await bus.publish_event(js, event)
            # Within the duplicate window: JetStream drops these.
            for event in repeats[i // 60 :: 20]:
                await bus.publish_event(js, event)
            await asyncio.sleep(rng.uniform(0.2, 0.6))
        # Beyond it (another message id): the stream holds these twice.
        for event in repeats:
            await publish_again(js, event)
        for n, data in enumerate(POISON):
            await js.publish(f"mail.events.{mail.org_id}.email_sent", data, headers={"n": str(n)})

    producing = asyncio.create_task(produce())
    for _ in range(4):
        # Killed while consuming: once it serves, at a random moment of folding or committing.
        await projector.wait_healthy()
        await asyncio.sleep(rng.uniform(0.05, 0.8))
        projector.kill()
        projector.start()
    await producing
    await projector.wait_healthy()

    stream_end = await last_seq(js)
    assert stream_end == len(distinct) + len(repeats) + len(POISON)
    await wait_for_position(database_url, stream_end)
    assert projector.stop() == 0

    await assert_folded_once(js, database_url, distinct, POISON)
