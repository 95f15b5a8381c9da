"""The ports on NATS JetStream: MAIL_EVENTS, the KV buckets and the content object store."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from mailfold.events import ContentRef, Event, RecordRef
from mailfold.ingest.domain.template import Template
from mailfold.ingest.metrics import EVENTS_PUBLISHED, PUBLISH_FAILURES
from mailfold.ingest.service_layer.ports import IdempotencyClaim
from mailfold.runtime import bus, directory
from mailfold.runtime.content import put_content
from mailfold.runtime.directory import MailboxSettings, OrgSettings, RecordEntry

_template_dec: Final = msgspec.json.Decoder(Template)
_settings_dec: Final = msgspec.json.Decoder(OrgSettings)
_claim_dec: Final = msgspec.json.Decoder(IdempotencyClaim)
_enc: Final = msgspec.json.Encoder()
_CHUNK: Final = 128 * 1024  # the object store's default chunk size


def template_key(org_id: str, template_id: str) -> str:
    """`<org>.template.<id>` in mailfold_directory."""
    return f"{org_id}.template.{bus.key_token(template_id)}"


def idempotency_key(org_id: str, key: str) -> str:
    """`<org>.<key>` in mailfold_idempotency: keys are per org."""
    return f"{org_id}.{bus.key_token(key)}"


async def _get(bucket: KeyValue, key: str) -> bytes | None:
    try:
        entry = await bucket.get(key)
    except KeyNotFoundError:
        return None
    return entry.value or None


class JetStreamPublisher:
    """Publishes to MAIL_EVENTS with Nats-Msg-Id = event_id, waiting for the stream's ack."""

    def __init__(self, nc: Client, *, timeout: float = 5.0) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._timeout = timeout

    async def publish(self, event: Event) -> None:
        """Publish one event; raises when JetStream did not acknowledge it in time.

        While the connection is down the client would buffer the publish and send it after
        reconnecting, after the caller was told it failed; refusing it at once keeps "failed"
        meaning "not published" (a retry publishes the same event id anyway).
        """
        try:
            if not self._nc.is_connected:
                raise ConnectionError("not connected to NATS")
            await bus.publish_event(self._js, event, timeout=self._timeout)
        except Exception:
            PUBLISH_FAILURES.inc()
            raise
        EVENTS_PUBLISHED.labels(event.event_type).inc()


class ObjectContentStore:
    """The content object store, addressed by SHA-256."""

    def __init__(self, store: ObjectStore, js: JetStreamContext) -> None:
        self._store = store
        self._js = js

    async def put(self, data: bytes, content_type: str, *, fresh: bool = False) -> ContentRef:
        """Store bytes once under their SHA-256.

        `fresh` says the bytes are most likely not stored yet (a raw message that just arrived):
        they are then written without first asking whether they exist, the chunks and the
        metadata in one pipelined batch (the client library's put takes four sequential round
        trips). The layout is the object store's own, so any object-store client reads it.
        """
        if not fresh:
            return await put_content(self._store, data, content_type)
        digest = hashlib.sha256(data)
        name = digest.hexdigest()
        nuid = uuid.uuid4().hex
        chunk_subject = f"$O.{bus.OBJECT_STORE}.C.{nuid}"
        chunks = [data[i : i + _CHUNK] for i in range(0, len(data), _CHUNK)]
        info = api.ObjectInfo(
            name=name,
            bucket=bus.OBJECT_STORE,
            nuid=nuid,
            size=len(data),
            chunks=len(chunks),
            mtime=datetime.now(UTC).isoformat(),
            digest="SHA-256=" + base64.urlsafe_b64encode(digest.digest()).decode(),
            options=api.ObjectMetaOptions(max_chunk_size=_CHUNK),
        )
        meta_subject = f"$O.{bus.OBJECT_STORE}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
        # Published in this order on one connection, so the stream stores the chunks before the
        # metadata that makes them visible; every ack is awaited before the caller goes on.
        await asyncio.gather(
            *(self._js.publish(chunk_subject, chunk) for chunk in chunks),
            self._js.publish(
                meta_subject, json.dumps(info.as_dict()).encode(), headers={"Nats-Rollup": "sub"}
            ),
        )
        return ContentRef(sha256=name, size=len(data), content_type=content_type)


class OrgCache:
    """Which orgs exist and their settings, held in memory and kept current by two KV watches.

    Every message the SMTP server takes needs both; reading them from the bucket each time
    would cost two or three round trips per message. A watch delivers every change within
    milliseconds; this service's own writes go in at once. An org not (yet) seen by the watch
    is looked up in the bucket, so a new org is never refused for being new; until both watches
    have delivered their initial values, and after one stops, every lookup goes to the bucket.
    """

    def __init__(self, orgs: KeyValue) -> None:
        self._orgs = orgs
        self._settings: dict[str, tuple[int, OrgSettings]] = {}
        self._known: dict[str, int] = {}
        self._watchers: list[KeyValue.KeyWatcher] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._ready: set[str] = set()

    @property
    def live(self) -> bool:
        """True while both watches follow the bucket."""
        return len(self._ready) == 2 and all(not t.done() for t in self._tasks)

    async def start(self) -> None:
        """Start both watches; returns at once, the cache goes live when they caught up."""
        for pattern in ("*.settings", "*.token"):
            watcher = await self._orgs.watch(pattern)
            self._watchers.append(watcher)
            self._tasks.append(asyncio.create_task(self._follow(pattern, watcher)))

    async def stop(self) -> None:
        """Stop both watches."""
        for watcher in self._watchers:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._ready.clear()

    async def _follow(self, pattern: str, watcher: KeyValue.KeyWatcher) -> None:
        try:
            async for entry in watcher:
                if entry is None:
                    self._ready.add(pattern)
                    continue
                org_id, _, kind = entry.key.rpartition(".")
                gone = entry.operation in ("DEL", "PURGE") or not entry.value
                revision = entry.revision or 0
                if kind == "token":
                    self._apply_token(org_id, revision, gone)
                elif gone:
                    self.remember(org_id, revision, OrgSettings())
                else:
                    with contextlib.suppress(msgspec.DecodeError):
                        self.remember(org_id, revision, _settings_dec.decode(entry.value or b""))
        finally:
            self._ready.discard(pattern)

    def _apply_token(self, org_id: str, revision: int, gone: bool) -> None:
        if revision < self._known.get(org_id, 0):
            return
        if gone:
            self._known.pop(org_id, None)
        else:
            self._known[org_id] = revision

    def remember(self, org_id: str, revision: int, settings: OrgSettings) -> None:
        """Keep the settings of this revision, unless a later one is already known."""
        current = self._settings.get(org_id)
        if current is None or current[0] < revision:
            self._settings[org_id] = (revision, settings)

    def known(self, org_id: str) -> bool:
        """True when the watch has seen the org's token."""
        return org_id in self._known

    def settings(self, org_id: str) -> OrgSettings | None:
        """The org's settings as last seen, None when the cache cannot say."""
        if not self.live:
            return None
        current = self._settings.get(org_id)
        return OrgSettings() if current is None else current[1]


class KvDirectory:
    """Orgs and settings in mailfold_orgs; records, addresses and templates in mailfold_directory."""

    def __init__(self, orgs: KeyValue, records: KeyValue, cache: OrgCache | None = None) -> None:
        self._orgs = orgs
        self._records = records
        self._cache = cache

    async def org_exists(self, org_id: str) -> bool:
        """True when the org has an API token."""
        if self._cache is not None and self._cache.live and self._cache.known(org_id):
            return True
        return await _get(self._orgs, f"{org_id}.token") is not None

    async def load_settings(self, org_id: str) -> OrgSettings:
        """The org's settings, defaults where none were set."""
        cached = self._cache.settings(org_id) if self._cache is not None else None
        if cached is not None:
            return cached
        return await directory.load_settings(self._orgs, org_id)

    async def save_settings(self, org_id: str, settings: OrgSettings) -> None:
        """Replace the org's settings (in the cache too, at once)."""
        revision = await self._orgs.put(directory.settings_key(org_id), _enc.encode(settings))
        if self._cache is not None:
            self._cache.remember(org_id, revision, settings)

    async def load_mailbox(self, org_id: str, user: str) -> MailboxSettings | None:
        """A user's integrated mailbox, if configured."""
        return await directory.load_mailbox(self._orgs, org_id, user)

    async def save_mailbox(self, org_id: str, user: str, mailbox: MailboxSettings) -> None:
        """Replace a user's integrated mailbox."""
        await directory.save_mailbox(self._orgs, org_id, user, mailbox)

    async def load_record(self, org_id: str, record_id: str) -> RecordEntry | None:
        """One record, if it exists."""
        return await directory.load_record(self._records, org_id, record_id)

    async def put_record(self, org_id: str, record: RecordEntry) -> None:
        """Create or replace a record and its entries in the address index."""
        await directory.put_record(self._records, org_id, record)

    async def delete_record(self, org_id: str, record_id: str) -> bool:
        """Delete a record; False when it did not exist."""
        return await directory.delete_record(self._records, org_id, record_id)

    async def records_for_addresses(
        self, org_id: str, addresses: Sequence[str]
    ) -> tuple[RecordRef, ...]:
        """Every record that has one of these addresses, each once."""
        return await directory.records_for_addresses(self._records, org_id, tuple(addresses))

    async def load_template(self, org_id: str, template_id: str) -> Template | None:
        """A template, if it exists."""
        raw = await _get(self._records, template_key(org_id, template_id))
        return None if raw is None else _template_dec.decode(raw)

    async def save_template(self, org_id: str, template: Template) -> None:
        """Create or replace a template."""
        await self._records.put(template_key(org_id, template.template_id), _enc.encode(template))


class KvIdempotency:
    """Idempotency keys in mailfold_idempotency, claimed with a KV create (first writer wins)."""

    def __init__(self, bucket: KeyValue) -> None:
        self._bucket = bucket

    async def get(self, org_id: str, key: str) -> IdempotencyClaim | None:
        """The claim on a key, if any."""
        raw = await _get(self._bucket, idempotency_key(org_id, key))
        return None if raw is None else _claim_dec.decode(raw)

    async def claim(self, org_id: str, key: str, claim: IdempotencyClaim) -> IdempotencyClaim:
        """Claim a key; returns `claim` when it was free, else the claim already there."""
        kv_key = idempotency_key(org_id, key)
        for _ in range(10):
            try:
                await self._bucket.create(kv_key, _enc.encode(claim))
            except KeyWrongLastSequenceError:
                existing = await self.get(org_id, key)
                if existing is not None:
                    return existing
                continue  # deleted between the create and the read: try again
            return claim
        raise RuntimeError(f"idempotency key {key!r} kept changing")

    async def complete(self, org_id: str, key: str, claim: IdempotencyClaim) -> None:
        """Mark the key's email as published."""
        await self._bucket.put(idempotency_key(org_id, key), _enc.encode(claim))
