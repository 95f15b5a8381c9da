"""The service shell: one FastStream NatsBroker per service, its codec, metrics and dead letters.

Every service builds its broker here, declares its subscribers and publishers on it (so the
AsyncAPI document says who publishes and who consumes each channel), and gets the same three
things on every consumer: a msgspec codec for the event union, FastStream's Prometheus message
metrics, and one dead-lettering middleware that parks what no handler can use in MAIL_DLQ.

Costs found in FastStream 0.7.8 and avoided here (figures in docs/decisions.md):
- a sync parser, decoder, filter or handler is wrapped by `to_async`, which runs it in a thread
  pool for every message: the codec and the handlers here are coroutines;
- `apply_types=True` validates each handler argument through pydantic: the brokers here are built
  with `apply_types=False`, the codec already returns a typed msgspec Struct.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Final

import msgspec
import nats.errors
import structlog
from faststream import BaseMiddleware, StreamMessage
from faststream.message.message import AckStatus
from faststream.nats import JStream, NatsBroker, NatsMessage
from faststream.nats.prometheus import NatsPrometheusMiddleware
from faststream.nats.security import NatsSecurity, NatsUserPassword
from faststream.specification import AsyncAPI
from nats.aio.msg import Msg
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from pydantic import PlainValidator, WithJsonSchema

from mailfold.events import (
    DLQ_STREAM,
    STREAM,
    AnyEvent,
    Event,
    decode,
    dlq_subject,
    encode,
    subject_for,
)
from mailfold.runtime.bus import MAX_OUTSTANDING_PINGS, PING_INTERVAL_S, endpoint
from mailfold.runtime.settings import NatsAuth

_MAX_HEADER: Final = 1000
UNCONNECTED_URL: Final = "nats://127.0.0.1:4222"  # of brokers built only to be described
log = structlog.get_logger("mailfold.runtime")

DEAD_LETTERS = Counter(
    "mailfold_dead_letters_total", "Messages parked in MAIL_DLQ, by consumer.", ["consumer"]
)


class Poison(Exception):
    """Raised by a handler for a message no retry can fix; it is dead-lettered with `reason`."""


class EventCodec:
    """msgspec both ways for the event union, as coroutines (a sync codec costs a thread hop)."""

    async def decode(self, msg: StreamMessage[Any]) -> Any:
        """One event; a msgspec error here dead-letters the message."""
        return decode(msg.body)

    async def decode_batch(self, msg: StreamMessage[Sequence[Any]]) -> list[AnyEvent | Poison]:
        """Each message of a batch on its own: a bad one is a Poison item, the rest go on."""
        out: list[AnyEvent | Poison] = []
        for raw in msg.raw_message:
            try:
                out.append(decode(raw.data))
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                out.append(Poison(f"not a valid event: {exc}"))
        return out

    async def encode(self, msg: Any, serializer: Any = None) -> tuple[bytes, str | None]:
        """Events as their JSON, bytes as they are (a dead letter's body), anything else as JSON."""
        if isinstance(msg, bytes):
            return msg, None
        data = encode(msg) if isinstance(msg, Event) else msgspec.json.encode(msg)
        return data, "application/json"

    async def encode_batch(
        self, msgs: Sequence[Any], serializer: Any = None
    ) -> list[tuple[bytes, str | None]]:
        """Each message as `encode` does it."""
        return [await self.encode(m) for m in msgs]


CODEC: Final = EventCodec()


def _header(text: str) -> str:
    return " ".join(text.split())[:_MAX_HEADER]


def deliveries(raw: Msg) -> int:
    """How many times JetStream has handed this message out (1 for a core NATS message)."""
    try:
        return int(raw.metadata.num_delivered)
    except nats.errors.Error:  # not a JetStream message: a core one, or one from TestNatsBroker
        return 1


async def dead_letter(broker: NatsBroker, raw: Msg, reason: str, *, consumer: str = "") -> None:
    """Publish a message to `mail.dlq.<consumer>` in MAIL_DLQ with why, then acknowledge it.

    The Nats-Msg-Id is derived from the consumer, stream position and body, so parking the same
    message twice (a crash between publish and ack) keeps one copy.
    """
    try:
        meta = raw.metadata
        consumer, stream, seq = consumer or meta.consumer, meta.stream, meta.sequence.stream
    except nats.errors.Error:  # not from JetStream (TestNatsBroker hands out core messages)
        stream, seq = "", 0
    consumer = consumer or "unknown"
    digest = hashlib.sha256(raw.data).hexdigest()[:16]
    headers = {
        "Nats-Msg-Id": f"{consumer}:{stream}:{seq}:{digest}",
        "Mailfold-Error": _header(reason),
        "Mailfold-Consumer": consumer,
        "Mailfold-Subject": raw.subject,
        "Mailfold-Stream": stream,
        "Mailfold-Stream-Seq": str(seq),
    }
    await broker.publish(
        raw.data, dlq_subject(consumer), headers=headers, stream=DLQ_STREAM, timeout=10
    )
    DEAD_LETTERS.labels(consumer).inc()
    log.error("message sent to the dead-letter queue", error=reason, subject=raw.subject)
    await raw.ack()


def dead_letters(broker_ref: Callable[[], NatsBroker]) -> type[BaseMiddleware]:
    """The one dead-lettering middleware: an undecodable message or a Poison goes to MAIL_DLQ.

    Any other exception propagates, so the subscriber's ack policy redelivers the message. A
    batch subscriber gets its undecodable messages as Poison items (EventCodec.decode_batch) and
    parks them itself with `dead_letter`; a Poison raised for a whole batch parks all of it.
    """

    class DeadLetters(BaseMiddleware):
        async def consume_scope(
            self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]
        ) -> Any:
            try:
                return await call_next(msg)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                reason = f"not a valid event: {exc}"
            except Poison as exc:
                reason = str(exc)
            subscriber = self.context.get_local("handler_")
            durable = getattr(getattr(subscriber, "config", None), "durable_name", None)
            raw = msg.raw_message
            # A batch handler that gives up on its batch parks every message of it: none is
            # acknowledged without being handled or parked.
            for one in raw if isinstance(raw, list) else [raw]:
                if isinstance(one, Msg):
                    await dead_letter(broker_ref(), one, reason, consumer=durable or "")
            # Settled here: FastStream's ack policy must not ack or nak it again.
            msg.committed = AckStatus.ACKED
            return None

    return DeadLetters


def _in_process_gauge(registry: CollectorRegistry) -> None:
    """FastStream's gauge of messages being handled, declared before its middleware (which
    takes a metric already in the registry) so that the workers of `serve --workers N` add up."""
    with contextlib.suppress(ValueError):  # declared already by an earlier broker
        Gauge(
            "mailfold_received_messages_in_process",
            "Gauge of received messages in process by broker and handler",
            ["app_name", "broker", "handler"],
            registry=registry,
            multiprocess_mode="livesum",
        )


def connection(url: str, auth: NatsAuth | None = None) -> dict[str, Any]:
    """NatsBroker's `servers` and `security` for `url` and `auth` (see bus.endpoint)."""
    where = endpoint(url, auth)
    security: NatsSecurity | None = None
    if where.user is not None:
        security = NatsUserPassword(where.user, where.password or "", ssl_context=where.tls)
    elif where.tls is not None:
        security = NatsSecurity(ssl_context=where.tls)
    return {"servers": where.servers, "security": security}


def new_broker(
    url: str,
    *,
    service: str,
    registry: CollectorRegistry = REGISTRY,
    graceful_timeout: float = 10.0,
    auth: NatsAuth | None = None,
) -> NatsBroker:
    """A broker that keeps reconnecting while NATS restarts, with metrics and dead letters,
    connected as `auth`'s user (or the URL's; see bus.endpoint)."""
    broker: NatsBroker

    def current() -> NatsBroker:
        return broker

    _in_process_gauge(registry)
    broker = NatsBroker(
        **connection(url, auth),
        name=f"mailfold-{service}",
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,  # type: ignore[arg-type]  # nats-py takes float seconds
        connect_timeout=5,
        ping_interval=PING_INTERVAL_S,
        max_outstanding_pings=MAX_OUTSTANDING_PINGS,
        graceful_timeout=graceful_timeout,
        apply_types=False,
        # FastStream's own lines go through the service's structlog configuration (JSON off a
        # terminal); its access log (two lines per message) at debug: it costs more than a handler.
        logger=structlog.get_logger("mailfold.broker"),
        log_level=logging.DEBUG,
        codec=CODEC,
        middlewares=(
            NatsPrometheusMiddleware(
                registry=registry, app_name=service, metrics_prefix="mailfold"
            ),
            dead_letters(current),
        ),
    )
    return broker


def described_broker(service: str) -> NatsBroker:
    """A broker built only to be described (its declarations make an AsyncAPI document): never
    connected, its metrics in a registry of its own."""
    return new_broker(UNCONNECTED_URL, service=service, registry=CollectorRegistry())


def current_message(broker: NatsBroker) -> NatsMessage:
    """The message being handled (brokers here do not inject it: `apply_types=False`)."""
    msg: NatsMessage = broker.context.get_local("message")
    return msg


def _inline(node: Any, components: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(components[node["$ref"].rsplit("/", 1)[1]], components)
        return {k: _inline(v, components) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, components) for v in node]
    return node


def documented(tp: Any) -> Any:
    """`tp` annotated with its msgspec JSON Schema, for FastStream's AsyncAPI generator.

    FastStream builds payload schemas through pydantic, which does not know msgspec Structs; the
    annotation hands it the schema msgspec writes (inlined: pydantic cannot follow its $refs)
    and a validator that passes the value through (nothing is validated twice).
    """
    (schema,), components = msgspec.json.schema_components([tp])
    return Annotated[tp, PlainValidator(lambda v: v), WithJsonSchema(_inline(schema, components))]


EVENTS_STREAM: Final = JStream(STREAM, declare=False)  # created by bus.ensure_topology


def declare_publishers(
    broker: NatsBroker, service: str, events: Sequence[type[Event]]
) -> dict[str, Any]:
    """Declare what `service` publishes, one publisher per event type, named `<service>:<type>`.

    The events themselves go out through `bus.publish_event`/`start_publish` on the broker's
    connection (JetStream's asynchronous publish; docs/decisions.md has the figures).
    """
    out: dict[str, Any] = {}
    for tp in events:
        tag = str(tp.__struct_config__.tag)
        out[tag] = broker.publisher(
            subject_for("*", tag),
            stream=EVENTS_STREAM,
            title=f"{service}:{tag}",
            description=(tp.__doc__ or "").strip(),
            schema=documented(tp),
        )
    return out


IDLE_WAIT_S: Final = 5.0


def tune_batch_fetch(subscriber: Any, *, idle_wait_s: float = IDLE_WAIT_S) -> None:
    """Two changes to FastStream 0.7.8's batch pull loop, made on a started subscriber's fetch.

    - The loop fills a batch until `PullSub.timeout` has passed, sending a pull request each
      time, so an idle subscriber would ask every `timeout` seconds (20 times a second at 50
      ms). While nothing is collected yet (a fetch for the whole batch), the fetch here waits up
      to `idle_wait_s` for the first message instead: one lingering request while idle, and a
      lone message handed over as soon as it arrives. Once one arrived, the loop fills the
      batch for what is left of its short timeout, as before.
    - The loop catches `nats.errors.TimeoutError`, but nats-py's fetch raises the plain
      `asyncio.TimeoutError` when a partial batch's deadline runs out between its two requests;
      FastStream then restarts the task and the messages it had collected wait for `ack_wait`.
      The fetch here raises the error the loop expects.

    Subscribers without a pull subscription are left as they are.
    """
    subscription: Any = getattr(subscriber, "subscription", None)
    fetch = getattr(subscription, "fetch", None)
    pull_sub = getattr(subscriber, "pull_sub", None)
    if fetch is None or pull_sub is None:
        return
    full = int(pull_sub.batch_size)

    async def tuned(batch: int = 1, timeout: float | None = 5.0, **kwargs: Any) -> list[Msg]:
        if batch >= full and timeout is not None:
            timeout = max(timeout, idle_wait_s)
        try:
            result: list[Msg] = await fetch(batch, timeout, **kwargs)
        except nats.errors.TimeoutError:
            raise
        except TimeoutError as exc:
            raise nats.errors.TimeoutError from exc
        return result

    subscription.fetch = tuned


async def close(broker: NatsBroker) -> None:
    """Stop the subscribers, drain and close, even when NATS is away (a drain then fails)."""
    try:
        await broker.stop()
    except nats.errors.Error:
        connection = broker._connection  # the drain failed: close without draining
        broker._connection = None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()


def asyncapi_document(broker: NatsBroker, service: str) -> Callable[[], str]:
    """The service's own AsyncAPI document (JSON), built on first request and kept."""
    built: list[str] = []

    def document() -> str:
        if not built:
            spec = AsyncAPI(broker, title=f"mailfold {service}", version="1")
            built.append(spec.to_specification().to_json())
        return built[0]

    return document
