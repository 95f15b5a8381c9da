"""Shared KV data: org settings, integrated mailboxes, records and the address index.

Ingest writes these; the sender and others read them. Keys (in `mailfold_orgs` and
`mailfold_directory`) are documented in docs/operations.md. Values are JSON (msgspec).
The one the other way round: the sender writes each email's VERP record (`verp.<ref>` in
`mailfold_sender`, kept as long as that bucket keeps its keys) and ingest reads it when a bounce
arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Final

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from mailfold.events import Module, RecordRef, VerpRecord
from mailfold.runtime import bus
from mailfold.runtime.bus import key_token

log = structlog.get_logger("mailfold.runtime")

DEFAULT_MAIL_DOMAIN: Final = "mailfold.localhost"
DEFAULT_MASS_DAILY_LIMIT: Final = 1000
MAX_ADDRESSES_PER_RECORD: Final = 5
MAX_DROPBOX_SENDERS: Final = 10


class OrgSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Per-org settings (`PUT /v1/orgs/{org}/settings`)."""

    time_zone: str = "UTC"
    mass_email_daily_limit: Annotated[int, msgspec.Meta(ge=0)] = DEFAULT_MASS_DAILY_LIMIT
    blacklisted_domains: tuple[str, ...] = ()
    dropbox_senders: Annotated[tuple[str, ...], msgspec.Meta(max_length=MAX_DROPBOX_SENDERS)] = ()
    mail_domain: str = DEFAULT_MAIL_DOMAIN
    # POP3 cannot tell a deletion from a download: a vanished UIDL counts as deleted only when
    # the org says its mailboxes delete on the server (see docs/mailbox.md).
    pop3_vanished_is_deleted: bool = False


class IncomingSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The receiving side of an integrated mailbox, read by the mailbox service.

    `secret` is never logged, published or returned by an API.
    """

    protocol: str  # "imap" | "pop3"
    host: str
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]
    security: str = "tls"  # "tls" | "starttls" | "none"
    username: str
    secret: str
    folders: tuple[str, ...] = ()  # IMAP: watched folders; empty means INBOX and the Sent folder

    def __repr__(self) -> str:
        return (
            f"IncomingSettings(protocol={self.protocol!r}, host={self.host!r}, "
            f"port={self.port}, username={self.username!r}, secret='***')"
        )


class MailboxStatus(msgspec.Struct, frozen=True, kw_only=True):
    """How a mailbox's sync is going, written by the copy of the mailbox service that holds it."""

    state: str = "pending"  # "pending" | "syncing" | "ok" | "failing"
    error_kind: str = ""  # "auth" | "tls" | "unreachable" | "quota" | "timeout" | "protocol" | ...
    last_error: str = ""
    last_sync_at: str = ""  # ISO 8601, UTC
    updated_at: str = ""
    held_by: str = ""


class MailboxSettings(msgspec.Struct, frozen=True, kw_only=True):
    """A user's integrated mailbox: the SMTP submission server the sender uses for their mail.

    `secret` is never logged, published or returned by an API.
    """

    smtp_host: str
    smtp_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 587
    username: str
    secret: str
    security: str = "starttls"  # "starttls" | "tls" | "none"
    email: str = ""
    incoming: IncomingSettings | None = None

    def __repr__(self) -> str:
        return (
            f"MailboxSettings(smtp_host={self.smtp_host!r}, smtp_port={self.smtp_port}, "
            f"username={self.username!r}, secret='***')"
        )


class RecordEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A CRM record with its email addresses (primary first)."""

    record_id: str
    module: Module
    addresses: Annotated[tuple[str, ...], msgspec.Meta(max_length=MAX_ADDRESSES_PER_RECORD)] = ()

    @property
    def ref(self) -> RecordRef:
        """The reference events carry."""
        return RecordRef(record_id=self.record_id, module=self.module)


_settings_dec = msgspec.json.Decoder(OrgSettings)
_mailbox_dec = msgspec.json.Decoder(MailboxSettings)
_status_dec = msgspec.json.Decoder(MailboxStatus)
_record_dec = msgspec.json.Decoder(RecordEntry)
_refs_dec = msgspec.json.Decoder(tuple[RecordRef, ...])
_verp_dec = msgspec.json.Decoder(VerpRecord)
_enc = msgspec.json.Encoder()


def settings_key(org_id: str) -> str:
    """`<org>.settings` in mailfold_orgs."""
    return f"{org_id}.settings"


def mailbox_key(org_id: str, user: str) -> str:
    """`<org>.mailbox.<user>` in mailfold_orgs."""
    return f"{org_id}.mailbox.{key_token(user)}"


def mailbox_status_key(org_id: str, user: str) -> str:
    """`<org>.mailboxstatus.<user>` in mailfold_orgs."""
    return f"{org_id}.mailboxstatus.{key_token(user)}"


def record_key(org_id: str, record_id: str) -> str:
    """`<org>.record.<record_id>` in mailfold_directory."""
    return f"{org_id}.record.{key_token(record_id)}"


def address_key(org_id: str, address: str) -> str:
    """`<org>.addr.<address>` in mailfold_directory; addresses compare case-insensitively."""
    return f"{org_id}.addr.{key_token(address.strip().lower())}"


def verp_key(ref: str) -> str:
    """`verp.<ref>` in mailfold_sender: the email and recipients a VERP reference stands for."""
    return f"verp.{ref}"


async def save_verp_record(bucket: KeyValue, record: VerpRecord) -> None:
    """Record what an email's VERP reference stands for (the same value on every retry)."""
    await bucket.put(verp_key(record.ref), _enc.encode(record))


async def load_verp_record(bucket: KeyValue, ref: str) -> VerpRecord | None:
    """The record of a VERP reference, or None (unknown, expired or unreadable)."""
    raw = await get_value(bucket, verp_key(ref))
    if raw is None:
        return None
    try:
        return _verp_dec.decode(raw)
    except msgspec.DecodeError:
        return None


async def get_value(bucket: KeyValue, key: str) -> bytes | None:
    """A key's value, or None when the key is absent (or deleted)."""
    try:
        entry = await bucket.get(key)
    except KeyNotFoundError:
        return None
    return entry.value or None


async def load_settings(orgs: KeyValue, org_id: str) -> OrgSettings:
    """The org's settings, defaults where none were set."""
    raw = await get_value(orgs, settings_key(org_id))
    return OrgSettings() if raw is None else _settings_dec.decode(raw)


async def save_settings(orgs: KeyValue, org_id: str, settings: OrgSettings) -> None:
    """Replace the org's settings."""
    await orgs.put(settings_key(org_id), _enc.encode(settings))


async def load_mailbox(orgs: KeyValue, org_id: str, user: str) -> MailboxSettings | None:
    """A user's integrated mailbox, if configured."""
    raw = await get_value(orgs, mailbox_key(org_id, user))
    return None if raw is None else _mailbox_dec.decode(raw)


async def save_mailbox(orgs: KeyValue, org_id: str, user: str, mailbox: MailboxSettings) -> None:
    """Replace a user's integrated mailbox."""
    await orgs.put(mailbox_key(org_id, user), _enc.encode(mailbox))


async def load_mailbox_status(orgs: KeyValue, org_id: str, user: str) -> MailboxStatus | None:
    """The sync status of a user's mailbox, if the mailbox service has written one."""
    raw = await get_value(orgs, mailbox_status_key(org_id, user))
    return None if raw is None else _status_dec.decode(raw)


async def save_mailbox_status(
    orgs: KeyValue, org_id: str, user: str, status: MailboxStatus
) -> None:
    """Replace the sync status of a user's mailbox."""
    await orgs.put(mailbox_status_key(org_id, user), _enc.encode(status))


async def load_record(directory: KeyValue, org_id: str, record_id: str) -> RecordEntry | None:
    """One record, if it exists."""
    raw = await get_value(directory, record_key(org_id, record_id))
    return None if raw is None else _record_dec.decode(raw)


async def records_for_address(
    directory: KeyValue, org_id: str, address: str
) -> tuple[RecordRef, ...]:
    """Every record that has this address, primary or secondary."""
    raw = await get_value(directory, address_key(org_id, address))
    return () if raw is None else _refs_dec.decode(raw)


async def records_for_addresses(
    directory: KeyValue, org_id: str, addresses: list[str] | tuple[str, ...]
) -> tuple[RecordRef, ...]:
    """Every record that has any of these addresses, each once, in a stable order."""
    return merge_refs(
        await asyncio.gather(*(records_for_address(directory, org_id, a) for a in addresses))
    )


def merge_refs(lists: Iterable[Sequence[RecordRef]]) -> tuple[RecordRef, ...]:
    """Every record of these lists once, ordered by module and id."""
    found: dict[tuple[str, str], RecordRef] = {}
    for refs in lists:
        for ref in refs:
            found.setdefault((ref.module.value, ref.record_id), ref)
    return tuple(found[k] for k in sorted(found))


async def _update_address(
    directory: KeyValue, org_id: str, address: str, ref: RecordRef, *, add: bool
) -> None:
    """Add or remove one record in one address's list, with compare-and-set against racers."""
    key = address_key(org_id, address)
    for _ in range(50):
        try:
            entry = await directory.get(key)
            current = _refs_dec.decode(entry.value) if entry.value else ()
            revision: int | None = entry.revision
        except KeyNotFoundError:
            current, revision = (), None
        others = tuple(r for r in current if r.record_id != ref.record_id)
        updated = (*others, ref) if add else others
        if updated == current:
            return
        try:
            if revision is None:
                await directory.create(key, _enc.encode(updated))
            else:
                await directory.update(key, _enc.encode(updated), last=revision)
            return
        except KeyWrongLastSequenceError:
            continue
        except Exception:  # create() on a key another writer just made: retry with its revision
            if revision is None:
                continue
            raise
    raise RuntimeError(f"address index for {address!r} kept changing; giving up")


async def put_record(directory: KeyValue, org_id: str, record: RecordEntry) -> None:
    """Create or replace a record and bring the address index in line with its addresses."""
    before = await load_record(directory, org_id, record.record_id)
    addresses = {a.strip().lower() for a in record.addresses}
    stale = set() if before is None else {a.strip().lower() for a in before.addresses} - addresses
    normalised = msgspec.structs.replace(
        record, addresses=tuple(dict.fromkeys(a.strip().lower() for a in record.addresses))
    )
    await directory.put(record_key(org_id, record.record_id), _enc.encode(normalised))
    for address in stale:
        await _update_address(directory, org_id, address, record.ref, add=False)
    for address in addresses:
        await _update_address(directory, org_id, address, record.ref, add=True)


async def delete_record(directory: KeyValue, org_id: str, record_id: str) -> bool:
    """Delete a record and its addresses from the index; False if it did not exist."""
    before = await load_record(directory, org_id, record_id)
    if before is None:
        return False
    for address in before.addresses:
        await _update_address(directory, org_id, address, before.ref, add=False)
    await directory.delete(record_key(org_id, record_id))
    return True


class OrgCache:
    """Which orgs exist and their settings, held in memory and kept current by two KV watches.

    Ingest's SMTP server needs both for every message and the sender the settings for every
    email; reading them from the bucket each time would cost round trips per message. A watch delivers every change within
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


class AddressCache:
    """Which records have an address: lookups of the address index, held in memory.

    Inbound mail looks up its sender's records; the same senders write again and again, and most
    have no record at all. A lookup is kept once read and dropped when its key changes: a
    headers-only watch of the index's updates (new ones only, so starting it costs nothing however
    big the index is) delivers every change within milliseconds, and this service's own record
    writes drop the cache at once. A lookup that raced with a change is not kept. While the watch
    is not running, after the connection was lost and for entries older than `ttl` seconds, the
    bucket is read again.
    """

    def __init__(
        self,
        nc: Client,
        *,
        ttl: float = 300.0,
        max_entries: int = 100_000,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        """`on_change(org_id)` is called for every change the watch delivers (the mailbox
        re-reads recent mail of an org whose records gained an address)."""
        self._nc = nc
        self._on_change = on_change
        self._js = nc.jetstream()
        self._prefix = f"$KV.{bus.BUCKET_DIRECTORY}."
        self._ttl = ttl
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, tuple[RecordRef, ...]]] = {}
        self._changes = 0
        self._reconnects = 0
        self._sub: JetStreamContext.PushSubscription | None = None
        self._watching = False
        self._rewatch: asyncio.Task[None] | None = None

    @property
    def live(self) -> bool:
        """True while the watch follows the index since the connection was last (re)made."""
        return self._sub is not None and self._nc.stats["reconnects"] == self._reconnects

    async def start(self) -> None:
        """Start the watch of the address index's updates."""
        self._watching = True
        await self._subscribe()

    async def _subscribe(self) -> None:
        self._reconnects = self._nc.stats["reconnects"]
        self._sub = await self._js.subscribe(
            f"{self._prefix}*.addr.*",
            stream=f"KV_{bus.BUCKET_DIRECTORY}",
            cb=self._changed,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.NEW,
            headers_only=True,
            inactive_threshold=300.0,
        )

    async def stop(self) -> None:
        """Stop the watch and forget every lookup."""
        self._watching = False
        if self._rewatch is not None:
            self._rewatch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._rewatch
        await self._unsubscribe()

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        self.clear()
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _after_reconnect(self) -> None:
        # Changes made while the connection was down may never reach the old watch in time: the
        # cache starts empty again with a new watch of the changes from now on.
        if self._watching and self._rewatch is None and self._nc.is_connected:
            self._rewatch = asyncio.create_task(self._watch_again())

    async def _watch_again(self) -> None:
        try:
            await self._unsubscribe()
            await self._subscribe()
        except Exception as exc:  # the next lookup tries again
            log.warning("address watch failed", error=repr(exc))
        finally:
            self._rewatch = None

    async def _changed(self, msg: Msg) -> None:
        self._changes += 1
        key = msg.subject[len(self._prefix) :]
        self._entries.pop(key, None)
        if self._on_change is not None:
            self._on_change(key.partition(".")[0])

    def clear(self) -> None:
        """Forget every lookup, and keep none of those under way (the index is being written)."""
        self._changes += 1
        self._entries.clear()

    async def records(self, records: KeyValue, org_id: str, address: str) -> tuple[RecordRef, ...]:
        """The records of one address, from memory when the cache can say."""
        if not self.live:
            if self._entries:
                self.clear()
            self._after_reconnect()
            return await records_for_address(records, org_id, address)
        key = address_key(org_id, address)
        now = time.monotonic()
        cached = self._entries.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        changes = self._changes
        found = await records_for_address(records, org_id, address)
        if changes == self._changes and self.live:
            if len(self._entries) >= self._max_entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = (now + self._ttl, found)
        return found

    async def records_of_all(
        self, records: KeyValue, org_id: str, addresses: Sequence[str]
    ) -> tuple[RecordRef, ...]:
        """Every record that has any of these addresses, each once, in a stable order (as
        `records_for_addresses`), each address from memory when the cache can say."""
        if len(addresses) == 1:  # inbound mail: one sender, most often known already
            return merge_refs([await self.records(records, org_id, addresses[0])])
        return merge_refs(
            await asyncio.gather(*(self.records(records, org_id, a) for a in addresses))
        )
