"""Replay's two stream readers (its own wire-protocol connection, nats-py's) read the same."""

from __future__ import annotations

import pytest
from nats.aio.client import Client

from mailfold.cli.embedded import EmbeddedNats
from mailfold.events import STREAM
from mailfold.projector.adapters.jetstream import ReplaySource
from mailfold.projector.domain.messages import RawMessage
from mailfold.projector.entrypoints.consumer import FILTER_SUBJECT
from mailfold.runtime import bus


async def read(nc: Client, *, direct: bool, from_seq: int, to_seq: int) -> list[list[RawMessage]]:
    source = ReplaySource(
        nc,
        stream=STREAM,
        filter_subject=FILTER_SUBJECT,
        from_seq=from_seq,
        to_seq=to_seq,
        batch=7,
        direct=direct,
    )
    async with source:
        return [batch async for batch in source]


@pytest.fixture
async def nc(fresh_nats: EmbeddedNats) -> Client:
    client = await bus.connect(fresh_nats.url, "test-replay-source", reconnect=False)
    await bus.ensure_topology(client.jetstream())
    return client


@pytest.mark.parametrize(
    ("from_seq", "to_seq"), [(1, 2**63 - 1), (1, 40), (5, 23), (38, 2**63 - 1), (50, 60)]
)
async def test_both_readers_hand_over_the_same_messages_of_a_range(
    nc: Client, from_seq: int, to_seq: int
) -> None:
    js = nc.jetstream()
    try:
        for n in range(1, 41):
            # Some without headers, as a plain publish stores them.
            headers = {"Nats-Msg-Id": f"m{n}"} if n % 3 else None
            await js.publish(f"mail.events.o.email_sent_{n}", b"x" * n, headers=headers)
        await js.delete_msg(STREAM, 10)  # a hole in the middle
        await js.delete_msg(STREAM, 23)  # a range's last message gone

        direct = await read(nc, direct=True, from_seq=from_seq, to_seq=to_seq)
        pulled = await read(nc, direct=False, from_seq=from_seq, to_seq=to_seq)

        expected = [
            (seq, f"mail.events.o.email_sent_{seq}", b"x" * seq)
            for seq in range(from_seq, min(to_seq, 40) + 1)
            if seq not in (10, 23)
        ]
        assert [m for batch in direct for m in batch] == expected
        assert [m for batch in pulled for m in batch] == expected
        assert all(batch for batch in direct)
        assert not (await js.consumers_info(STREAM))  # the ephemeral consumers are gone
    finally:
        await nc.close()
