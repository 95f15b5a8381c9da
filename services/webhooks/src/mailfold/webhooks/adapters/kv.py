"""Endpoints, delivery records and the per-email fold, kept in NATS KV buckets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Final

import msgspec
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from mailfold.events import AnyEvent
from mailfold.runtime import bus
from mailfold.runtime.bus import key_token
from mailfold.runtime.logging import get_logger
from mailfold.webhooks.domain.deliveries import Delivery
from mailfold.webhooks.domain.endpoints import Endpoint
from mailfold.webhooks.domain.payload import EmailFold, fold_in

log = get_logger(__name__)

BUCKET_ENDPOINTS: Final = "mailfold_webhooks"  # <org>.<endpoint_id> -> Endpoint
BUCKET_DELIVERIES: Final = "mailfold_webhook_deliveries"  # <org>.<endpoint_id>.<event> -> Delivery
BUCKET_FOLDS: Final = "mailfold_webhook_emails"  # <org>.<email> -> EmailFold
# Delivery records and folds are kept 30 days: replay beyond that still works from the stream
# (the body then carries the fold's status from a fresh start).
RECORD_TTL_S: Final = 30 * 24 * 3600.0
FOLDS_REMEMBERED: Final = 10_000  # emails whose latest fold (and revision) a copy keeps in memory

_ENDPOINT = msgspec.json.Decoder(Endpoint)
_DELIVERY = msgspec.json.Decoder(Delivery)
_FOLD = msgspec.msgpack.Decoder(EmailFold)
_JSON = msgspec.json.Encoder()
_MSGPACK = msgspec.msgpack.Encoder()


class Endpoints:
    """Every org's endpoints, cached in memory and kept current by a KV watch.

    Every copy of the service sees every change within milliseconds; a copy that changed an
    endpoint sees its own change at once.
    """

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._by_key: dict[str, Endpoint] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[str, Endpoint | None], None]] = []
        self.ready = asyncio.Event()

    def on_change(self, listener: Callable[[str, Endpoint | None], None]) -> None:
        """Call `listener(endpoint_id, endpoint or None when deleted)` on every change."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Load every endpoint, then follow changes."""
        watcher = await self._kv.watchall()
        self._watcher = asyncio.create_task(self._follow(watcher))
        await self.ready.wait()

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        try:
            async for entry in watcher:
                if entry is None:  # the end of the initial values
                    self.ready.set()
                    continue
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    self._apply(entry.key, None)
                else:
                    try:
                        self._apply(entry.key, _ENDPOINT.decode(entry.value))
                    except msgspec.DecodeError:
                        log.error("unreadable endpoint", key=entry.key)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _apply(self, key: str, endpoint: Endpoint | None) -> None:
        endpoint_id = key.rsplit(".", 1)[-1]
        previous = self._by_key.get(key)
        if endpoint is None:
            self._by_key.pop(key, None)
        else:
            if previous is not None and previous.updated_at > endpoint.updated_at:
                return  # an older write seen after our own newer one
            self._by_key[key] = endpoint
        for listener in self._listeners:
            listener(endpoint_id, endpoint)

    async def stop(self) -> None:
        """Stop following changes."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    def of_org(self, org_id: str) -> list[Endpoint]:
        """The org's endpoints, oldest first."""
        prefix = f"{org_id}."
        found = [e for k, e in self._by_key.items() if k.startswith(prefix)]
        return sorted(found, key=lambda e: e.endpoint_id)

    def all(self) -> list[Endpoint]:
        """Every endpoint of every org."""
        return list(self._by_key.values())

    def get(self, org_id: str, endpoint_id: str) -> Endpoint | None:
        """One endpoint of one org (another org's id is not found)."""
        return self._by_key.get(f"{org_id}.{endpoint_id}")

    async def put(self, endpoint: Endpoint) -> None:
        """Store an endpoint (create or replace)."""
        key = f"{endpoint.org_id}.{endpoint.endpoint_id}"
        await self._kv.put(key, _JSON.encode(endpoint))
        self._apply(key, endpoint)

    async def delete(self, org_id: str, endpoint_id: str) -> None:
        """Remove an endpoint."""
        key = f"{org_id}.{endpoint_id}"
        await self._kv.delete(key)
        self._apply(key, None)


class Deliveries:
    """One record per (endpoint, event): its outcome and latest attempts."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @staticmethod
    def _key(org_id: str, endpoint_id: str, event_id: str) -> str:
        return f"{org_id}.{endpoint_id}.{key_token(event_id)}"

    async def get(self, org_id: str, endpoint_id: str, event_id: str) -> Delivery | None:
        """The record, or None when the event was never attempted for the endpoint."""
        try:
            entry = await self._kv.get(self._key(org_id, endpoint_id, event_id))
        except KeyNotFoundError:  # kv.get raises it for a deleted key too
            return None
        return None if not entry.value else _DELIVERY.decode(entry.value)

    async def put_many(self, deliveries: Sequence[Delivery]) -> list[BaseException | None]:
        """Store several records at once; one outcome per record (None: stored)."""
        items = [
            (self._key(d.org_id, d.endpoint_id, d.event_id), _JSON.encode(d)) for d in deliveries
        ]
        return await bus.kv_put_many(self._kv, items)

    async def of_endpoint(self, org_id: str, endpoint_id: str) -> list[Delivery]:
        """Every record of the endpoint, in stream order (one watch, not a read per key)."""
        found = await bus.entries(self._kv, f"{org_id}.{endpoint_id}.*")
        records = [_DELIVERY.decode(raw) for raw in found.values() if raw]
        return sorted(records, key=lambda d: (d.stream_seq, d.event_id))

    async def drop_endpoint(self, org_id: str, endpoint_id: str) -> None:
        """Forget every record of a deleted endpoint."""
        for delivery in await self.of_endpoint(org_id, endpoint_id):
            with contextlib.suppress(KeyNotFoundError):
                await self._kv.purge(self._key(org_id, endpoint_id, delivery.event_id))


class Folds:
    """The per-email fold the bodies' status and sequence come from, updated compare-and-set.

    A copy remembers the fold and revision it last wrote per email (bounded), so an event costs
    one write; a revision another copy moved on fails the write and the fold is read again.
    """

    def __init__(self, kv: KeyValue, *, remember: int = FOLDS_REMEMBERED) -> None:
        self._kv = kv
        self._known: dict[str, tuple[EmailFold, int]] = {}
        self._remember = remember

    @staticmethod
    def _key(org_id: str, email_id: str) -> str:
        return f"{org_id}.{key_token(email_id)}"

    async def _read(self, key: str) -> tuple[EmailFold | None, int]:
        """The stored fold and its revision (None and 0, or the tombstone's, when none)."""
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError as gone:  # a deleted key's error carries its tombstone
            return None, int(gone.entry.revision or 0) if gone.entry is not None else 0
        if not entry.value or entry.revision is None:
            return None, int(entry.revision or 0)
        return _FOLD.decode(entry.value), entry.revision

    async def get(self, org_id: str, email_id: str) -> EmailFold | None:
        """The email's fold, or None when no event of it was seen."""
        return (await self._read(self._key(org_id, email_id)))[0]

    async def apply(self, event: AnyEvent) -> tuple[EmailFold, int]:
        """Fold one event in (copies of the service race safely); the fold and its sequence."""
        key = self._key(event.org_id, event.email_id)
        known = self._known.get(key)
        current, revision = known if known is not None else (None, 0)
        while True:
            updated, number = fold_in(current, event)
            if updated is current:
                return updated, number
            try:
                # Compare-and-set on the revision this copy knows (0: only if nothing is stored).
                revision = await bus.kv_put(self._kv, key, _MSGPACK.encode(updated), last=revision)
            except KeyWrongLastSequenceError:
                # Another copy (or an earlier run) wrote it: fold into what is stored.
                self._known.pop(key, None)
                current, revision = await self._read(key)
                continue
            if len(self._known) >= self._remember:
                self._known.pop(next(iter(self._known)))  # the oldest remembered
            self._known.pop(key, None)
            self._known[key] = (updated, revision)
            return updated, number
