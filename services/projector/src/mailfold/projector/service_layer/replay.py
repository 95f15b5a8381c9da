"""Replay: the stream folded again, from any position, into a scratch copy of the projection.

The fold is the live projector's (same Projection, same Pipeline); what differs is the source (an
ordered consumer, no acks), bigger batches, and write-behind: emails are written once, when they
leave the cache or at the end, instead of after every batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass

from mailfold.projector.domain.messages import RawMessage
from mailfold.projector.service_layer.pipeline import Pipeline
from mailfold.projector.service_layer.ports import BatchWriter, StateReader
from mailfold.projector.service_layer.projection import Projection

REPLAY_BATCH = 5000
REPLAY_CACHE = 200_000
REPLAY_FLUSH_CHUNK = 2000


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What a replay read and wrote."""

    messages: int
    events: int
    poison: int
    last_seq: int
    seconds: float


async def rebuild(
    batches: AsyncIterable[list[RawMessage]],
    reader: StateReader,
    writer: BatchWriter,
    *,
    start_seq: int,
    cache_size: int = REPLAY_CACHE,
    flush_chunk: int = REPLAY_FLUSH_CHUNK,
    look_up_ids: bool = False,
) -> ReplayReport:
    """Fold every batch into the (empty) store behind `writer`; returns what was done.

    Raises DuplicateEventIds when an event id comes under two emails; do it again with
    `look_up_ids` (slower) into a fresh store.
    """
    started = time.perf_counter()
    projection = Projection(
        reader,
        position=start_seq,
        capacity=cache_size,
        store_empty=True,
        write_behind=True,
        look_up_ids_until=2**63 - 1 if look_up_ids else 0,
    )
    pipeline = Pipeline(projection, writer, record_metrics=False)
    messages = 0
    try:
        async for batch in batches:
            messages += len(batch)
            await pipeline.submit(batch)
        await pipeline.drain()  # flushing reads the cache as every commit left it
        for writes in projection.flush_chunks(flush_chunk):
            await pipeline.submit_writes(writes)
            await asyncio.sleep(0)  # let the write start before the next chunk is built
        await pipeline.drain()
    finally:
        await pipeline.close()
    return ReplayReport(
        messages=messages,
        events=pipeline.committed_events,
        poison=pipeline.poisoned,
        last_seq=projection.position,
        seconds=time.perf_counter() - started,
    )
