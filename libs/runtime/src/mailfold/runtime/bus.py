"""NATS JetStream plumbing: connections, the streams, buckets and object store, event publishing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import itertools
import ssl
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import msgspec
import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from mailfold.events import Event, encode, event_subject, publish_headers
from mailfold.events.subjects import DLQ_STREAM, DLQ_SUBJECTS, STREAM, STREAM_SUBJECTS
from mailfold.runtime.settings import ConfigError, NatsAuth

T = TypeVar("T")

DUPLICATE_WINDOW_S: Final = 120.0
# A client pings its server this often and leaves it after this many pings go unanswered: a
# server that stopped answering (a partition, a stopped process) is left within ~6 s for
# another node of the cluster, not after nats-py's default of minutes.
PING_INTERVAL_S: Final = 2
MAX_OUTSTANDING_PINGS: Final = 2

# KV buckets and what they hold (keys are documented in docs/operations.md).
BUCKET_ORGS: Final = "mailfold_orgs"  # <org>.token -> sha256 of the API token; <org>.settings
BUCKET_DIRECTORY: Final = "mailfold_directory"  # records and the address index
BUCKET_SENDER: Final = "mailfold_sender"  # daily counters, delivery marks, mass-email dedup
BUCKET_IDEMPOTENCY: Final = "mailfold_idempotency"  # Idempotency-Key -> email id
OBJECT_STORE: Final = "mailfold_content"  # bodies, attachments, raw messages by SHA-256
BUCKETS: Final = (BUCKET_ORGS, BUCKET_DIRECTORY, BUCKET_SENDER, BUCKET_IDEMPOTENCY)
# Idempotency keys are kept a week (clients retry within minutes; the IETF draft suggests 24 h+).
# The sender's marks and counters outlive its longest retry (4 days by default) with room to spare.
BUCKET_TTL_S: Final = {BUCKET_IDEMPOTENCY: 7 * 24 * 3600.0, BUCKET_SENDER: 8 * 24 * 3600.0}


@dataclass(frozen=True, slots=True)
class NatsEndpoint:
    """Where and as whom to connect: the servers without credentials, who, and the TLS context."""

    servers: list[str]
    user: str | None
    password: str | None
    tls: ssl.SSLContext | None

    def options(self) -> dict[str, Any]:
        """Keyword arguments for nats.connect."""
        return {
            "servers": self.servers,
            "user": self.user,
            "password": self.password,
            "tls": self.tls,
        }

    def __repr__(self) -> str:
        return f"NatsEndpoint(servers={self.servers!r}, user={self.user!r}, tls={self.tls is not None})"


def endpoint(url: str, auth: NatsAuth | None = None) -> NatsEndpoint:
    """`url` (comma-separated for a cluster) and `auth` as connection options.

    Credentials travel as connect options rather than in the URLs: a client of a cluster also
    reconnects to servers it discovered, whose URLs carry none. Without `auth.user`, the first
    URL that names a user gives them.
    """
    auth = auth or NatsAuth()
    user, password = auth.user, auth.password
    servers: list[str] = []
    for raw in url.split(","):
        raw = raw.strip()
        if not raw:
            continue
        parts = urlsplit(raw if "://" in raw else f"nats://{raw}")
        if parts.hostname is None:
            raise ConfigError(f"not a NATS server address: {redact(raw)!r}")
        if parts.username is not None and user is None:
            user, password = unquote(parts.username), unquote(parts.password or "")
        host = parts.netloc.rpartition("@")[2]
        servers.append(urlunsplit((parts.scheme, host, parts.path, "", "")))
    if not servers:
        raise ConfigError("no NATS server address given")
    tls = None
    if auth.tls or any(server.startswith("tls://") for server in servers):
        tls = ssl.create_default_context(cafile=auth.tls_ca_file)
        if auth.tls_cert_file is not None:
            tls.load_cert_chain(auth.tls_cert_file, auth.tls_key_file)
    return NatsEndpoint(servers, user, password, tls)


def redact(url: str) -> str:
    """`url` (or a comma-separated list) with any password replaced by `***`."""
    out = []
    for raw in url.split(","):
        head, at, host = raw.rpartition("@")
        if at and ":" in head.partition("://")[2]:
            scheme, sep, userinfo = head.rpartition("://")
            raw = f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{host}"
        out.append(raw)
    return ",".join(out)


async def connect(
    url: str, name: str, *, reconnect: bool = True, auth: NatsAuth | None = None
) -> Client:
    """A connection that keeps reconnecting while the server restarts (or any cluster node
    answers), as `auth`'s user or the one in the URL."""
    return await nats.connect(
        **endpoint(url, auth).options(),
        name=name,
        allow_reconnect=reconnect,
        max_reconnect_attempts=-1 if reconnect else 0,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        ping_interval=PING_INTERVAL_S,
        max_outstanding_pings=MAX_OUTSTANDING_PINGS,
    )


def stream_config(*, replicas: int = 1) -> StreamConfig:
    """MAIL_EVENTS: every fact about every email, kept, file storage, duplicate publishes dropped."""
    return StreamConfig(
        name=STREAM,
        subjects=list(STREAM_SUBJECTS),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=replicas,
        max_msg_size=1024 * 1024,
        allow_direct=True,
    )


def dlq_config(*, replicas: int = 1) -> StreamConfig:
    """MAIL_DLQ: messages a consumer could not use, with the reason in headers."""
    return StreamConfig(
        name=DLQ_STREAM,
        subjects=list(DLQ_SUBJECTS),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
    )


async def _replicas_of(js: JetStreamContext, stream: str) -> int | None:
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return None
    return int(info.config.num_replicas or 1)


async def topology_replicas(js: JetStreamContext) -> int:
    """The replicas of MAIL_EVENTS (1 before it exists): what a bucket or stream created later
    by a service gets, so that one `mailfold topology --replicas 3` decides for every one."""
    return await _replicas_of(js, STREAM) or 1


async def ensure_stream(
    js: JetStreamContext, config: StreamConfig, *, keep_replicas: bool = False
) -> None:
    """Create the stream, or bring an existing one to this configuration.

    With `keep_replicas` an existing stream keeps its number of replicas: a service starting
    on a cluster must not scale down what `mailfold topology --replicas 3` set up.
    """
    name = config.name or ""
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        await js.add_stream(config)
    else:
        if keep_replicas:
            config = dataclasses.replace(config, num_replicas=info.config.num_replicas)
        await js.update_stream(config)


async def tune(js: JetStreamContext, stream: str, *, replicas: int | None = None) -> None:
    """Bring an existing stream (a KV bucket's) to `replicas` replicas when given, and let every
    replica answer direct reads: a bucket read then goes on while its leader is being elected
    (a read waiting for the leader times out for the whole election)."""
    config = (await js.stream_info(stream)).config
    wanted = dataclasses.replace(
        config,
        num_replicas=replicas if replicas is not None else config.num_replicas,
        allow_direct=True,
    )
    if wanted != config:
        await js.update_stream(wanted)


async def ensure_topology(js: JetStreamContext, *, replicas: int | None = None) -> None:
    """Streams, KV buckets and the object store, created idempotently.

    Without `replicas` (a service starting) what exists keeps its replicas and what is missing
    gets those of MAIL_EVENTS, or 1. With `replicas` (`mailfold topology --replicas N`) every
    stream, bucket and the object store is created with or scaled to N.
    """
    keep = replicas is None
    count = replicas if replicas is not None else await topology_replicas(js)
    await ensure_stream(js, stream_config(replicas=count), keep_replicas=keep)
    await ensure_stream(js, dlq_config(replicas=count), keep_replicas=keep)
    for bucket in BUCKETS:
        await kv(js, bucket, replicas=count)
        await tune(js, f"KV_{bucket}", replicas=replicas)
    await objects(js, replicas=count)
    if not keep:
        info = await js.stream_info(f"OBJ_{OBJECT_STORE}")
        if info.config.num_replicas != count:
            await js.update_stream(dataclasses.replace(info.config, num_replicas=count))


async def kv(
    js: JetStreamContext,
    bucket: str,
    *,
    replicas: int | None = None,
    ttl_s: float | None = None,
) -> KeyValue:
    """The named KV bucket, created on first use (file storage, one value per key, the
    topology's replicas by default, reads answered by any replica)."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=bucket,
                history=1,
                storage=StorageType.FILE,
                replicas=replicas if replicas is not None else await topology_replicas(js),
                ttl=ttl_s or BUCKET_TTL_S.get(bucket),
                direct=True,
            )
        )


class _ApiError(msgspec.Struct, frozen=True):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct, frozen=True):
    seq: int = 0
    error: _ApiError | None = None


_PUB_ACK: Final = msgspec.json.Decoder(_PubAck)
# Publishes awaiting their acknowledgement at once on one connection (nats-py's default too).
MAX_PENDING: Final = 4000
# JetStream's error codes for a failed compare-and-set (as nats-py's KeyValue reads them).
KV_WRONG_LAST_SEQUENCE: Final = frozenset({10071, 10164})


def _refusal(error: _ApiError) -> Exception:
    """The exception nats-py raises for this API error (ServiceUnavailableError for a 503...)."""
    if error.err_code in KV_WRONG_LAST_SEQUENCE:
        return KeyWrongLastSequenceError(description=error.description)
    fields: dict[str, Any] = {
        "code": error.code,
        "err_code": error.err_code,
        "description": error.description,
    }
    try:
        APIError.from_error(fields)  # nats-py's own mapping; it raises the error it builds
    except APIError as exc:
        return exc
    return APIError(**fields)


class AckedPublisher:
    """JetStream publishes that do not wait on each other: every acknowledgement (or refusal)
    arrives on one inbox subscription and resolves its publish's future.

    The same protocol as nats-py's `publish_async`, which leaves the future of a refused
    publish unresolved (nats.py#985); here a refusal raises, a failed compare-and-set as
    KeyWrongLastSequenceError. At most `max_pending` publishes wait for their acknowledgement
    at once (as `publish_async` bounds them); the next waits for one to settle. One per
    connection (`acked_publisher`).
    """

    def __init__(self, nc: Client, *, max_pending: int = MAX_PENDING) -> None:
        self._nc = weakref.ref(nc)  # the connection's registry entry must not keep it alive
        self._prefix = f"{nc.new_inbox()}."
        self._futures: dict[str, asyncio.Future[int]] = {}
        self._tokens = itertools.count()
        self._slots = asyncio.Semaphore(max_pending)
        # The reply inbox subscribed: every publish waits for it (made on the running loop).
        self.ready: asyncio.Future[None] = asyncio.ensure_future(self._start())

    def _client(self) -> Client:
        nc = self._nc()
        if nc is None:
            raise nats.errors.ConnectionClosedError
        return nc

    async def _start(self) -> None:
        await self._client().subscribe(f"{self._prefix}*", cb=self._on_reply)

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> asyncio.Future[int]:
        """Send; the future resolves with the stream sequence once JetStream stored it."""
        await self._slots.acquire()
        token = str(next(self._tokens))
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._futures[token] = future
        future.add_done_callback(lambda _: self._settled(token))
        try:
            await self._client().publish(
                subject, payload, reply=self._prefix + token, headers=headers
            )
        except BaseException:
            future.cancel()
            raise
        return future

    def _settled(self, token: str) -> None:
        self._futures.pop(token, None)
        self._slots.release()

    async def _on_reply(self, msg: Msg) -> None:
        future = self._futures.pop(msg.subject[len(self._prefix) :], None)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(nats.errors.NoRespondersError())
            return
        try:
            ack = _PUB_ACK.decode(msg.data)
        except msgspec.DecodeError as exc:
            future.set_exception(nats.errors.Error(f"unreadable JetStream ack: {exc}"))
            return
        if ack.error is None:
            future.set_result(ack.seq)
        else:
            future.set_exception(_refusal(ack.error))


_PUBLISHERS: Final[weakref.WeakKeyDictionary[Client, AckedPublisher]] = weakref.WeakKeyDictionary()


async def acked_publisher(nc: Client) -> AckedPublisher:
    """The connection's AckedPublisher, started on first use."""
    publisher = _PUBLISHERS.get(nc)
    if publisher is None:
        publisher = _PUBLISHERS[nc] = AckedPublisher(nc)
    ready = publisher.ready
    if ready.done() and not ready.cancelled() and ready.exception() is None:
        return publisher
    try:
        # Callers arriving while the inbox is being subscribed wait for the same start.
        await asyncio.shield(ready)
    except BaseException:
        failed = ready.done() and not ready.cancelled() and ready.exception() is not None
        if failed and _PUBLISHERS.get(nc) is publisher:
            del _PUBLISHERS[nc]  # the next caller starts afresh
        raise
    return publisher


async def _acked(future: asyncio.Future[int], timeout_s: float) -> int:
    """The stream sequence once acknowledged; nats.errors.TimeoutError without an answer in
    time (the future is cancelled either way, freeing its slot)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await future
    except TimeoutError as exc:
        raise nats.errors.TimeoutError from exc
    finally:
        future.cancel()


async def start_kv_put(
    kv: KeyValue, key: str, value: bytes, *, last: int | None = None
) -> asyncio.Future[int]:
    """Send a key's write without waiting (see `kv_put`); the future resolves with its revision."""
    headers = None if last is None else {"Nats-Expected-Last-Subject-Sequence": str(last)}
    publisher = await acked_publisher(kv._js._nc)
    # The bucket's own subject prefix, as its put uses (a JetStream domain changes it).
    return await publisher.publish(f"{kv._pre}{key}", value, headers)


async def kv_put(
    kv: KeyValue, key: str, value: bytes, *, last: int | None = None, timeout_s: float = 5.0
) -> int:
    """Write a key as `KeyValue.put` does, or as `update` does when `last` is given (0: only if
    absent); its revision.

    Sent through the connection's AckedPublisher: about half the client CPU of the request
    `put` and `update` make, which counts where every event writes a key (docs/decisions.md).
    Raises KeyWrongLastSequenceError when `last` is not the key's revision,
    nats.errors.TimeoutError without an answer in time.
    """
    return await _acked(await start_kv_put(kv, key, value, last=last), timeout_s)


async def kv_create(kv: KeyValue, key: str, value: bytes, *, timeout_s: float = 5.0) -> int:
    """Write a key only if it holds no value, as `KeyValue.create` does (a key deleted or
    purged counts as absent), through the AckedPublisher; its revision.

    Raises KeyWrongLastSequenceError when the key holds a value.
    """
    try:
        return await kv_put(kv, key, value, last=0, timeout_s=timeout_s)
    except KeyWrongLastSequenceError:
        try:
            await kv.get(key)
        except KeyNotFoundError as gone:  # a deleted key's error carries its tombstone
            last = gone.entry.revision if gone.entry is not None else 0
            return await kv_put(kv, key, value, last=last or 0, timeout_s=timeout_s)
        raise


async def kv_put_many(
    kv: KeyValue, items: Sequence[tuple[str, bytes]], *, timeout_s: float = 5.0
) -> list[BaseException | None]:
    """Write several keys at once (as `kv_put` without a revision): all are sent, then every
    acknowledgement is awaited, within `timeout_s` together. One outcome per item, in order:
    None when stored, else the error (TimeoutError when no answer came in time)."""
    sent: list[asyncio.Future[int] | BaseException] = []
    for key, value in items:
        try:
            sent.append(await start_kv_put(kv, key, value))
        except nats.errors.Error as exc:  # not sent (a bad key, the connection closed)
            sent.append(exc)
    futures = [f for f in sent if isinstance(f, asyncio.Future)]
    if futures:
        await asyncio.wait(futures, timeout=timeout_s)
    outcomes: list[BaseException | None] = []
    for future in sent:
        if isinstance(future, BaseException):
            outcomes.append(future)
        elif not future.done():
            future.cancel()
            outcomes.append(TimeoutError("no acknowledgement in time"))
        else:
            outcomes.append(None if future.cancelled() else future.exception())
    return outcomes


async def entries(kv: KeyValue, pattern: str, *, values: bool = True) -> dict[str, bytes]:
    """Every live key matching a subject pattern, with its value (filtered by the server)."""
    watcher = await kv.watch(pattern, ignore_deletes=True, meta_only=not values)
    found: dict[str, bytes] = {}
    try:
        async for entry in watcher:
            if entry is None:
                break
            found[entry.key] = entry.value or b""
            if entry.delta == 0:
                break
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return found


async def objects(js: JetStreamContext, *, replicas: int | None = None) -> ObjectStore:
    """The content object store, created on first use (with the topology's replicas by default)."""
    try:
        return await js.object_store(OBJECT_STORE)
    except NotFoundError:
        count = replicas if replicas is not None else await topology_replicas(js)
        return await js.create_object_store(
            OBJECT_STORE, ObjectStoreConfig(storage=StorageType.FILE, replicas=count)
        )


async def start_publish_to(
    js: JetStreamContext, subject: str, payload: bytes, headers: dict[str, str] | None = None
) -> asyncio.Future[int]:
    """Send to a stream without waiting, through the connection's AckedPublisher; the future
    resolves with the stream sequence, or raises the refusal.

    Callers that publish several messages send them all, then await the futures together,
    always with a deadline (a lost acknowledgement never comes).
    """
    publisher = await acked_publisher(js._nc)
    return await publisher.publish(subject, payload, headers)


async def start_publish(js: JetStreamContext, event: Event) -> asyncio.Future[int]:
    """Send one event (Nats-Msg-Id = event_id) without waiting, as `start_publish_to`."""
    return await start_publish_to(js, event_subject(event), encode(event), publish_headers(event))


async def publish_event(js: JetStreamContext, event: Event, *, timeout: float = 5.0) -> int:
    """Publish one event with Nats-Msg-Id = event_id and wait for the ack; its stream sequence.

    Raises nats.errors.TimeoutError without an ack in time, NoRespondersError when no stream
    takes the subject, and the stream's refusal (ServiceUnavailableError while it has no
    leader...), as a JetStream request would (the asynchronous publish is cheaper).
    """
    return await _acked(await start_publish(js, event), timeout)


class AckTimeout(TimeoutError):
    """JetStream did not acknowledge in time; the event may or may not be stored."""


async def publish_batch(
    js: JetStreamContext, events: Sequence[Event], *, ack_timeout_s: float = 5.0
) -> list[BaseException | None]:
    """Send every event (as `start_publish`), then wait, bounded, for all acknowledgements.

    One outcome per event, in order: None when stored, else the error (not sent, AckTimeout,
    no stream). A whole batch in flight costs far less per event than waiting for each
    acknowledgement in turn (docs/decisions.md); a retried event keeps its Nats-Msg-Id.
    """
    outcomes: list[BaseException | None] = [None] * len(events)
    acks: dict[int, asyncio.Future[int]] = {}
    for i, event in enumerate(events):
        try:
            acks[i] = await start_publish(js, event)
        except Exception as exc:  # not sent (closed, buffer full): the caller retries it
            outcomes[i] = exc
    if acks:
        _, late = await asyncio.wait(acks.values(), timeout=ack_timeout_s)
        for ack in late:
            ack.cancel()
    for i, ack in acks.items():
        if ack.cancelled():
            outcomes[i] = AckTimeout(f"no acknowledgement within {ack_timeout_s} s")
        else:
            outcomes[i] = ack.exception()
    return outcomes


# What JetStream answers while a stream has no leader: nothing (a timeout), "no responders",
# or 503 "temporarily unavailable" (a node that just came back).
LEADERLESS: Final = (
    NoStreamResponseError,
    nats.errors.NoRespondersError,
    ServiceUnavailableError,
    TimeoutError,
)


async def through_elections(
    call: Callable[[], Awaitable[T]],
    *,
    within_s: float = 10.0,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """`call()`, tried again while its stream elects a leader, for up to `within_s` seconds.

    On a cluster a stream whose leader was lost takes no writes and answers no leader reads
    for a few seconds. Only for calls that are safe to repeat: a KV create or put of the same
    value, an object of the same bytes, a publish with the same Nats-Msg-Id.
    """
    started = monotonic()
    pause = 0.1
    while True:
        try:
            return await call()
        except LEADERLESS:
            if monotonic() - started + pause >= within_s:
                raise
            await sleep(pause)
            pause = min(pause * 2, 1.0)


def key_token(text: str) -> str:
    """A KV-key-safe token for arbitrary text (addresses hold '@' and '+', which keys may not)."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def close(nc: Client) -> None:
    """Drain and close, ignoring a connection that is already gone."""
    with contextlib.suppress(Exception):
        await nc.drain()
    with contextlib.suppress(Exception):
        await nc.close()
