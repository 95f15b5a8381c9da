"""FastStream against bare nats-py: the same handler consuming and publishing the same events.

An embedded nats-server holds N EmailOpened events in MAIL_EVENTS. Each run binds a fresh durable
pull consumer and times decoding, handling (a coroutine that counts) and acknowledging all N:
- bare: nats-py `fetch(batch=64)` in a loop, decode, handle, `ack()` each (the loop a service would
  hand-write);
- FastStream per message: `PullSub(batch_size=64)` with the handler called once per message;
- FastStream batch: `PullSub(batch_size=64, batch=True)` with the handler called once per batch.
Both FastStream runs use the brokers the services use (`mailfold.runtime.broker.new_broker`:
msgspec codec, Prometheus and dead-letter middlewares). Publishing is compared too: N events one
after another, each waiting for its ack, through nats-py's `publish_async` and through a
FastStream publisher, and with a batch of 512 in flight at once (the tracker's way). The projector's shape is
timed too: batches of 2000 acknowledged once (AckPolicy.ALL), bare and on FastStream's batch
subscriber. Replay's read is timed as well: the N events from sequence 1 without a durable
consumer, through the projector's ReplaySource (its wire reader on an ack-less ephemeral
consumer) and through a FastStream batch subscriber on an ack-less ephemeral consumer of its own
(no acks, events left undecoded as replay takes them). Rounds alternate; each figure is the
median of the rounds, as a ratio to bare.
Usage: `uv run --frozen python bench/faststream.py`.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# faststream package: look the package up without it.
_HERE = (
    sys.path.pop(0)
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).parent.resolve()
    else None
)
from faststream import StreamMessage  # noqa: E402
from faststream.middlewares import AckPolicy as Ack  # noqa: E402
from faststream.nats import JStream, NatsBroker, PullSub  # noqa: E402

if _HERE is not None:
    sys.path.insert(0, _HERE)
from nats.aio.msg import Msg  # noqa: E402
from nats.js import JetStreamContext  # noqa: E402
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from _results import record  # noqa: E402
from mailfold.cli.embedded import EmbeddedNats  # noqa: E402
from mailfold.events import (  # noqa: E402
    STREAM,
    AnyEvent,
    EmailOpened,
    Event,
    decode,
    encode,
    event_subject,
    new_id,
    publish_headers,
    subject_for,
)
from mailfold.projector.adapters.jetstream import ReplaySource, stream_seq  # noqa: E402
from mailfold.runtime import bus  # noqa: E402
from mailfold.runtime.broker import Poison, current_message, new_broker  # noqa: E402
from mailfold.runtime.logging import configure_logging  # noqa: E402

N = 20_000
N_PUBLISH = 3_000
PUBLISH_BATCH = 512
FOLD_BATCH = 2000
ROUNDS = 3
BATCH = 64
FILTER = subject_for("*", "email_opened")


class Undecoded:
    """Replay's way: a batch handed over as nats-py's messages, undecoded (replay decodes what it
    folds itself)."""

    async def decode(self, msg: StreamMessage[Any]) -> Any:
        return msg.raw_message

    async def decode_batch(self, msg: StreamMessage[Sequence[Any]]) -> list[Msg]:
        return list(msg.raw_message)

    async def encode(self, msg: Any, serializer: Any = None) -> tuple[bytes, str | None]:
        raise TypeError("nothing is published through this codec")

    async def encode_batch(
        self, msgs: Sequence[Any], serializer: Any = None
    ) -> list[tuple[bytes, str | None]]:
        raise TypeError("nothing is published through this codec")


class Counter:
    """The handler every variant calls: counts events, wakes the runner when all have come."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.seen = 0
        self.done = asyncio.Event()

    async def handle(self, event: AnyEvent) -> None:
        if event.event_type != "email_opened":
            raise ValueError(event.event_type)
        self.seen += 1
        if self.seen >= self.total:
            self.done.set()


def _event(i: int) -> EmailOpened:
    return EmailOpened(
        event_id=new_id(),
        org_id="org-bench",
        email_id=new_id(),
        producer="bench",
        occurred_at=datetime.now(UTC),
        recipient=f"r{i}@example.org",
    )


def _config(durable: str) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=durable,
        filter_subject=FILTER,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        max_ack_pending=10_000,
    )


async def bare_consume(url: str, durable: str) -> float:
    nc = await bus.connect(url, "bench-bare", reconnect=False)
    js = nc.jetstream()
    counter = Counter(N)
    await js.add_consumer(STREAM, _config(durable))
    sub = await js.pull_subscribe_bind(durable, stream=STREAM)
    start = time.perf_counter()
    while not counter.done.is_set():
        try:
            msgs = await sub.fetch(batch=BATCH, timeout=1.0)
        except TimeoutError:
            continue
        for msg in msgs:
            await counter.handle(decode(msg.data))
            await msg.ack()
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()  # a status left by the last pull would hold the drain up
    await bus.close(nc)
    return N / elapsed


async def faststream_consume(url: str, durable: str, *, batch: bool) -> float:
    broker = new_broker(url, service="bench", registry=CollectorRegistry())
    counter = Counter(N)
    stream = JStream(STREAM, declare=False)
    if batch:

        @broker.subscriber(
            FILTER,
            stream=stream,
            durable=durable,
            config=_config(durable),
            pull_sub=PullSub(batch_size=BATCH, timeout=0.05, batch=True),
        )
        async def on_batch(events: list[AnyEvent | Poison]) -> None:
            for event in events:
                if not isinstance(event, Poison):
                    await counter.handle(event)

    else:

        @broker.subscriber(
            FILTER,
            stream=stream,
            durable=durable,
            config=_config(durable),
            pull_sub=PullSub(batch_size=BATCH, timeout=1.0),
        )
        async def on_event(event: AnyEvent) -> None:
            await counter.handle(event)

    start = time.perf_counter()
    await broker.start()
    await counter.done.wait()
    elapsed = time.perf_counter() - start
    await broker.stop()
    return N / elapsed


def _config_all(durable: str) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=durable,
        filter_subject=FILTER,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.ALL,
        max_ack_pending=10 * FOLD_BATCH,
    )


async def bare_fold(url: str, durable: str) -> float:
    """The projector's shape: big batches, one acknowledgement (AckPolicy.ALL) per batch."""
    nc = await bus.connect(url, "bench-bare-fold", reconnect=False)
    js = nc.jetstream()
    counter = Counter(N)
    await js.add_consumer(STREAM, _config_all(durable))
    sub = await js.pull_subscribe_bind(durable, stream=STREAM)
    start = time.perf_counter()
    while not counter.done.is_set():
        try:
            msgs = await sub.fetch(batch=FOLD_BATCH, timeout=0.05)
        except TimeoutError:
            continue
        for msg in msgs:
            await counter.handle(decode(msg.data))
        await msgs[-1].ack()
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()  # a status left by the last pull would hold the drain up
    await bus.close(nc)
    return N / elapsed


async def faststream_fold(url: str, durable: str) -> float:
    """The same on FastStream's batch subscriber, acknowledging the last message by hand."""
    broker = new_broker(url, service="bench-fold", registry=CollectorRegistry())
    counter = Counter(N)

    @broker.subscriber(
        FILTER,
        stream=JStream(STREAM, declare=False),
        durable=durable,
        config=_config_all(durable),
        pull_sub=PullSub(batch_size=FOLD_BATCH, timeout=0.05, batch=True),
        ack_policy=Ack.MANUAL,
    )
    async def on_batch(events: list[AnyEvent | Poison]) -> None:
        for event in events:
            if not isinstance(event, Poison):
                await counter.handle(event)
        raw: list[Msg] = current_message(broker).raw_message  # type: ignore[assignment]
        await raw[-1].ack()

    start = time.perf_counter()
    await broker.start()
    await counter.done.wait()
    elapsed = time.perf_counter() - start
    await broker.stop()
    return N / elapsed


async def raw_replay_read(url: str) -> float:
    """Replay's reader: the first N events, as (seq, subject, data), without a durable consumer."""
    nc = await bus.connect(url, "bench-replay-raw", reconnect=False)
    source = ReplaySource(
        nc, stream=STREAM, filter_subject=FILTER, from_seq=1, to_seq=N, batch=FOLD_BATCH
    )
    seen = 0
    start = time.perf_counter()
    async with source:
        async for batch in source:
            seen += len(batch)
    elapsed = time.perf_counter() - start
    await bus.close(nc)
    if seen != N:
        raise RuntimeError(f"replay read {seen} of {N}")
    return N / elapsed


async def faststream_replay_read(url: str) -> float:
    """The same on a FastStream batch subscriber of an ack-less ephemeral consumer."""
    broker = new_broker(url, service="bench-replay", registry=CollectorRegistry())
    done = asyncio.Event()
    read: list[tuple[int, str, bytes]] = []

    @broker.subscriber(
        FILTER,
        stream=JStream(STREAM, declare=False),
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        ),
        pull_sub=PullSub(batch_size=FOLD_BATCH, timeout=0.05, batch=True),
        ack_policy=Ack.MANUAL,
        codec=Undecoded(),
    )
    async def on_batch(messages: list[Msg]) -> None:
        read.extend((stream_seq(m.reply), m.subject, m.data) for m in messages)
        if len(read) >= N:
            done.set()

    start = time.perf_counter()
    await broker.start()
    await done.wait()
    elapsed = time.perf_counter() - start
    await broker.stop()
    return N / elapsed


async def bare_publish_batch(url: str) -> float:
    """The tracker's shape: a batch of events in flight at once, then their acks."""
    nc = await bus.connect(url, "bench-bare-pub-batch", reconnect=False)
    js = nc.jetstream()
    events = [_event(i) for i in range(N_PUBLISH)]
    start = time.perf_counter()
    for i in range(0, N_PUBLISH, PUBLISH_BATCH):
        acks = [await _bare_start(js, e) for e in events[i : i + PUBLISH_BATCH]]
        await asyncio.gather(*acks)
    elapsed = time.perf_counter() - start
    await bus.close(nc)
    return N_PUBLISH / elapsed


async def _bare_start(js: JetStreamContext, event: Event) -> asyncio.Future[PubAck]:
    """nats-py's own asynchronous publish, with the subject, body and headers of bus'."""
    return await js.publish_async(
        event_subject(event), encode(event), headers=publish_headers(event)
    )


async def faststream_publish_batch(url: str) -> float:
    broker: NatsBroker = new_broker(url, service="bench-pub-b", registry=CollectorRegistry())
    publisher = broker.publisher(FILTER, stream=JStream(STREAM, declare=False))
    await broker.start()
    events = [_event(i) for i in range(N_PUBLISH)]
    start = time.perf_counter()
    for i in range(0, N_PUBLISH, PUBLISH_BATCH):
        await asyncio.gather(
            *(
                publisher.publish(e, event_subject(e), headers=publish_headers(e))
                for e in events[i : i + PUBLISH_BATCH]
            )
        )
    elapsed = time.perf_counter() - start
    await broker.stop()
    return N_PUBLISH / elapsed


async def bare_publish(url: str) -> float:
    nc = await bus.connect(url, "bench-bare-pub", reconnect=False)
    js = nc.jetstream()
    events = [_event(i) for i in range(N_PUBLISH)]
    start = time.perf_counter()
    for event in events:
        await asyncio.wait_for(await _bare_start(js, event), 5)
    elapsed = time.perf_counter() - start
    await bus.close(nc)
    return N_PUBLISH / elapsed


async def faststream_publish(url: str) -> float:
    broker: NatsBroker = new_broker(url, service="bench-pub", registry=CollectorRegistry())
    publisher = broker.publisher(FILTER, stream=JStream(STREAM, declare=False))
    await broker.start()
    events = [_event(i) for i in range(N_PUBLISH)]
    start = time.perf_counter()
    for event in events:
        await publisher.publish(event, event_subject(event), headers=publish_headers(event))
    elapsed = time.perf_counter() - start
    await broker.stop()
    return N_PUBLISH / elapsed


async def _fill(url: str) -> None:
    nc = await bus.connect(url, "bench-fill", reconnect=False)
    js = nc.jetstream()
    await bus.ensure_stream(js, bus.stream_config())
    for start in range(0, N, 1000):
        acks = [await bus.start_publish(js, _event(i)) for i in range(start, start + 1000)]
        await asyncio.gather(*acks)
    await bus.close(nc)


async def run(url: str) -> dict[str, list[float]]:
    await _fill(url)
    rates: dict[str, list[float]] = {}
    runs: list[tuple[str, Callable[[int], Awaitable[float]]]] = [
        ("bare", lambda r: bare_consume(url, f"bare-{r}")),
        ("message", lambda r: faststream_consume(url, f"fs-one-{r}", batch=False)),
        ("batch", lambda r: faststream_consume(url, f"fs-batch-{r}", batch=True)),
        ("bare_fold", lambda r: bare_fold(url, f"bare-fold-{r}")),
        ("fold", lambda r: faststream_fold(url, f"fs-fold-{r}")),
        ("raw_replay", lambda r: raw_replay_read(url)),
        ("replay", lambda r: faststream_replay_read(url)),
        ("bare_publish", lambda r: bare_publish(url)),
        ("publish", lambda r: faststream_publish(url)),
        ("bare_publish_batch", lambda r: bare_publish_batch(url)),
        ("publish_batch", lambda r: faststream_publish_batch(url)),
    ]
    for r in range(ROUNDS):
        line = []
        for name, fn in runs:
            rates.setdefault(name, []).append(await fn(r))
            line.append(f"{name} {rates[name][-1]:.0f}/s")
        print("round:", ", ".join(line), flush=True)
    return rates


def main() -> int:
    # Logging as the services configure it: FastStream's access log is at debug, dropped at info.
    configure_logging("bench", level="info", json=True)
    with (
        tempfile.TemporaryDirectory(prefix="mailfold-bench-fs-") as tmp,
        EmbeddedNats(Path(tmp) / "nats") as server,
    ):
        rates = asyncio.run(run(server.url))
    med: dict[str, Any] = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"consume {N} events, medians of {ROUNDS} rounds, msg/s: bare nats-py {med['bare']:.0f}, "
        f"FastStream per message {med['message']:.0f}, FastStream batch {med['batch']:.0f}; "
        f"batches of {FOLD_BATCH} with one ack: bare {med['bare_fold']:.0f}, FastStream "
        f"{med['fold']:.0f}; publish {N_PUBLISH} one by one: bare {med['bare_publish']:.0f}, "
        f"FastStream {med['publish']:.0f}; {PUBLISH_BATCH} in flight: bare "
        f"{med['bare_publish_batch']:.0f}, FastStream {med['publish_batch']:.0f}; replay's "
        f"read from sequence 1: wire reader {med['raw_replay']:.0f}, FastStream "
        f"{med['replay']:.0f} (ratios: per message {med['message'] / med['bare']:.2f}, batch "
        f"{med['batch'] / med['bare']:.2f}, fold batches {med['fold'] / med['bare_fold']:.2f}, "
        f"replay read {med['replay'] / med['raw_replay']:.2f}, publish "
        f"{med['publish'] / med['bare_publish']:.2f}, in flight "
        f"{med['publish_batch'] / med['bare_publish_batch']:.2f})",
        flush=True,
    )
    record("faststream.consume_per_message", med["message"], "msgs/s", med["bare"])
    record("faststream.consume_batch", med["batch"], "msgs/s", med["bare"])
    record("faststream.consume_fold_batches", med["fold"], "msgs/s", med["bare_fold"])
    record("faststream.replay_read", med["replay"], "msgs/s", med["raw_replay"])
    record("faststream.publish", med["publish"], "msgs/s", med["bare_publish"])
    record("faststream.publish_batch", med["publish_batch"], "msgs/s", med["bare_publish_batch"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
