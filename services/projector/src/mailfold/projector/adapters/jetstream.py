"""JetStream for the projector: the durable pull consumer, its puller, dead letters, lag.

The puller keeps one pull request open and collects deliveries in a callback, so messages keep
arriving while a batch folds or commits; `fetch` hands over what has arrived. Under load a batch
fills at once (up to the maximum); when idle the first message is handed over after a short
linger, so latency stays low.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
from typing import Final

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from mailfold.events import dlq_subject
from mailfold.projector.adapters.raw_replay import RawPullReader, RawUnavailable
from mailfold.projector.domain.messages import RawMessage, Unusable
from mailfold.runtime.service import wait_set

ACK_PREFIX: Final = "$JS.ACK."
_TERMINAL_STATUSES: Final = frozenset({"404", "408", "409"})
_MAX_HEADER: Final = 1000


def stream_seq(reply: str) -> int:
    """The stream sequence in a JetStream delivery's reply subject (v1 and v2 ack formats)."""
    return delivery(reply)[0]


def consumer_seq(reply: str) -> int:
    """The consumer's delivery sequence in a delivery's reply subject: one more for every
    delivery the consumer makes, so a jump means deliveries that never arrived."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[6])
    if len(tokens) >= 11:
        return int(tokens[8])
    raise ValueError(f"not a JetStream ack subject: {reply!r}")


def delivery(reply: str) -> tuple[int, int]:
    """(stream sequence, messages pending after this one) from a delivery's reply subject."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[8])
    if len(tokens) >= 11:
        return int(tokens[7]), int(tokens[10])
    raise ValueError(f"not a JetStream ack subject: {reply!r}")


async def seat_consumer(
    js: JetStreamContext,
    *,
    stream: str,
    name: str,
    filter_subject: str,
    start_seq: int,
    max_ack_pending: int,
    ack_wait: float = 30.0,
) -> None:
    """(Re)create the durable consumer so that it delivers from `start_seq`, in order.

    PostgreSQL holds the authoritative position; the consumer is re-seated there on every start,
    so messages delivered but not committed before a crash come again at once and in order
    (rather than after the ack wait, behind newer ones).
    """
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(stream, name)
    await js.add_consumer(
        stream,
        ConsumerConfig(
            name=name,
            durable_name=name,
            description="mailfold projector: folds events into PostgreSQL",
            filter_subject=filter_subject,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, start_seq),
            # One ack per committed batch acknowledges everything up to it.
            ack_policy=AckPolicy.ALL,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
            max_deliver=-1,
        ),
    )


async def consumer_lag(js: JetStreamContext, stream: str, name: str) -> int:
    """Messages not yet delivered plus delivered but not acknowledged."""
    info = await js.consumer_info(stream, name)
    return int(info.num_pending or 0) + int(info.num_ack_pending or 0)


async def stream_last_seq(js: JetStreamContext, stream: str) -> int:
    """The stream's last sequence (0 when empty)."""
    info = await js.stream_info(stream)
    return int(info.state.last_seq or 0)


class PullSource:
    """Batches from a durable pull consumer, with one pull request always open."""

    def __init__(
        self,
        nc: Client,
        *,
        stream: str,
        consumer: str,
        max_batch: int,
        idle_wait: float = 1.0,
        linger: float = 0.005,
    ) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._max_batch = max_batch
        self._idle_wait = idle_wait
        self._linger = linger
        self._buffer: list[Msg] = []
        self._first_at = 0.0
        self._open = 0  # messages the open request may still deliver; 0 when none is open
        self._open_until = 0.0
        self._arrived = asyncio.Event()
        self._inbox = ""
        self._sub: Subscription | None = None
        self.conflict: str | None = None  # a 409 from the server (e.g. the consumer was deleted)
        self._interrupted = False

    async def start(self) -> None:
        """Subscribe the delivery inbox."""
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(
            self._inbox,
            cb=self._on_message,
            pending_msgs_limit=4 * self._max_batch + 1000,
            pending_bytes_limit=256 * 1024 * 1024,
        )

    async def stop(self) -> None:
        """Unsubscribe; deliveries still in flight are dropped (they come again after re-seating)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._buffer.clear()

    async def _on_message(self, msg: Msg) -> None:
        reply = msg.reply
        if reply and reply.startswith(ACK_PREFIX):
            if not self._buffer:
                self._first_at = time.monotonic()
            self._buffer.append(msg)
            if self._open:
                self._open -= 1
            self._arrived.set()
            return
        status = (msg.headers or {}).get("Status")
        if status in _TERMINAL_STATUSES:
            self._open = 0
            if status == "409":
                self.conflict = (msg.headers or {}).get("Description", "conflict")
            self._arrived.set()

    async def _request(self) -> None:
        self._open = self._max_batch
        self._open_until = time.monotonic() + self._idle_wait + 1.0
        request = {"batch": self._max_batch, "expires": int(self._idle_wait * 1e9)}
        await self._nc.publish(self._next_subject, json.dumps(request).encode(), reply=self._inbox)

    def _take(self) -> list[Msg]:
        batch = self._buffer[: self._max_batch]
        del self._buffer[: self._max_batch]
        if self._buffer:
            self._first_at = time.monotonic()
        return batch

    def interrupt(self) -> None:
        """Make a waiting `fetch` return what it has at once (the consumer is stopping)."""
        self._interrupted = True
        self._arrived.set()

    async def fetch(self) -> list[Msg]:
        """Up to `max_batch` messages: at once under load, after a short linger when trickling,
        or none after `idle_wait` when idle."""
        deadline = time.monotonic() + self._idle_wait
        while True:
            if self._interrupted:
                return self._take()
            now = time.monotonic()
            if self._open and now > self._open_until:
                self._open = 0  # its end status was lost (say, across a reconnect)
            if not self._open and len(self._buffer) < self._max_batch:
                await self._request()
            if len(self._buffer) >= self._max_batch:
                return self._take()
            if self._buffer:
                wait = self._first_at + self._linger - now
                if wait <= 0 or not self._open:
                    return self._take()
            else:
                wait = deadline - now
                if wait <= 0:
                    return []
            self._arrived.clear()
            await wait_set(self._arrived, wait)


async def ack_all(nc: Client, msg: Msg) -> None:
    """Acknowledge a delivery and, under AckPolicy.ALL, every earlier one."""
    await nc.publish(msg.reply, b"+ACK")


def _header_value(text: str) -> str:
    single = " ".join(text.split())
    return single[:_MAX_HEADER]


class JetStreamDeadLetters:
    """Publishes poison messages to MAIL_DLQ on `mail.dlq.<consumer>` with the error in headers."""

    def __init__(self, js: JetStreamContext, *, consumer: str, stream: str) -> None:
        self._js = js
        self._consumer = consumer
        self._stream = stream
        self._subject = dlq_subject(consumer)

    async def send(self, poison: Unusable) -> None:
        digest = hashlib.sha256(poison.data).hexdigest()[:16]
        headers = {
            # A repeat after a crash (before the batch committed) is dropped by JetStream.
            "Nats-Msg-Id": f"{self._consumer}:{self._stream}:{poison.seq}:{digest}",
            "Mailfold-Error": _header_value(poison.error),
            "Mailfold-Consumer": self._consumer,
            "Mailfold-Subject": poison.subject,
            "Mailfold-Stream": self._stream,
            "Mailfold-Stream-Seq": str(poison.seq),
        }
        await self._js.publish(self._subject, poison.data, headers=headers, timeout=10)


class ReplaySource:
    """Batches of the stream from `from_seq` to `to_seq`, through an ephemeral pull consumer
    without acks.

    Use as `async with source: async for batch in source: ...`. Pulling (rather than a pushed
    ordered consumer) bounds what is buffered to two batches however slow the fold is. With
    `direct` (the default) the messages come through RawPullReader on a connection of its own,
    falling back to nats-py's subscription when that reader cannot connect.
    """

    def __init__(
        self,
        nc: Client,
        *,
        stream: str,
        filter_subject: str,
        from_seq: int,
        to_seq: int,
        batch: int,
        direct: bool = True,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._direct = direct
        self._stream = stream
        self._filter = filter_subject
        self._from = max(1, from_seq)
        self._to = to_seq
        self._batch = batch
        self._name = f"replay_{secrets.token_hex(6)}"
        self._source: PullSource | None = None
        self._raw: RawPullReader | None = None
        self._done = False

    async def __aenter__(self) -> ReplaySource:
        last = await stream_last_seq(self._js, self._stream)
        self._to = min(self._to, last)
        if self._to < self._from:
            self._done = True
            return self
        await self._js.add_consumer(
            self._stream,
            ConsumerConfig(
                name=self._name,
                description="mailfold replay",
                filter_subject=self._filter,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self._from,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=300.0,
                mem_storage=True,
                num_replicas=1,
            ),
        )
        if self._direct:
            raw = RawPullReader(
                self._nc,
                stream=self._stream,
                consumer=self._name,
                from_seq=self._from,
                to_seq=self._to,
                batch=self._batch,
            )
            try:
                await raw.open()
            except (RawUnavailable, OSError, TimeoutError):
                pass  # nats-py's reader below: slower, but it speaks everything
            else:
                self._raw = raw
                return self
        self._source = PullSource(
            self._nc, stream=self._stream, consumer=self._name, max_batch=self._batch
        )
        await self._source.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        source, self._source = self._source, None
        raw, self._raw = self._raw, None
        if source is not None:
            await source.stop()
        if raw is not None:
            await raw.close()
        if source is not None or raw is not None:
            with contextlib.suppress(Exception):
                await self._js.delete_consumer(self._stream, self._name)

    def __aiter__(self) -> ReplaySource:
        return self

    async def __anext__(self) -> list[RawMessage]:
        if self._raw is not None:
            return await self._raw.__anext__()
        source = self._source
        if self._done or source is None:
            raise StopAsyncIteration
        while True:
            messages = await source.fetch()
            if source.conflict is not None:
                raise RuntimeError(f"pull request refused: {source.conflict}")
            if messages:
                break
            info = await self._js.consumer_info(self._stream, self._name)
            if not info.num_pending:  # what is left of the range was deleted from the stream
                raise StopAsyncIteration
        batch: list[RawMessage] = []
        for msg in messages:
            seq, pending = delivery(msg.reply)
            if seq > self._to:
                self._done = True
                break
            batch.append((seq, msg.subject, msg.data))
            if seq == self._to or pending == 0:
                self._done = True
                break
        if not batch:
            raise StopAsyncIteration
        return batch
