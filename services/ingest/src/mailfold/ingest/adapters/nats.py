"""The ports on NATS JetStream: MAIL_EVENTS, the KV buckets and the content object store."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from nats.nuid import NUID

from mailfold.events import (
    ContentRef,
    EmailBounced,
    EmailCaptured,
    EmailComplained,
    EmailComposed,
    EmailDeferred,
    EmailDelivered,
    EmailReceived,
    EmailSent,
    Event,
    RecordRef,
    VerpRecord,
)
from mailfold.ingest.domain.template import Template
from mailfold.ingest.metrics import EVENTS_PUBLISHED, PUBLISH_FAILURES
from mailfold.ingest.service_layer.ports import IdempotencyClaim
from mailfold.runtime import bus, directory
from mailfold.runtime.content import put_content
from mailfold.runtime.directory import (
    AddressCache,
    MailboxSettings,
    MailboxStatus,
    OrgCache,
    OrgSettings,
    RecordEntry,
    get_value,
)
from mailfold.runtime.logging import get_logger

_template_dec: Final = msgspec.json.Decoder(Template)
_claim_dec: Final = msgspec.json.Decoder(IdempotencyClaim)
_enc: Final = msgspec.json.Encoder()
log = get_logger("mailfold.ingest.nats")
_CHUNK: Final = 128 * 1024  # the object store's default chunk size


def template_key(org_id: str, template_id: str) -> str:
    """`<org>.template.<id>` in mailfold_directory."""
    return f"{org_id}.template.{bus.key_token(template_id)}"


def idempotency_key(org_id: str, key: str) -> str:
    """`<org>.<key>` in mailfold_idempotency: keys are per org."""
    return f"{org_id}.{bus.key_token(key)}"


# What ingest publishes (declared on its broker for the AsyncAPI document): composed mail from
# the API; inbound, captured and dropbox mail from SMTP; delivery reports and complaints.
PUBLISHES: Final = (
    EmailComposed,
    EmailReceived,
    EmailCaptured,
    EmailSent,
    EmailDelivered,
    EmailDeferred,
    EmailBounced,
    EmailComplained,
)


def count_published(event: Event) -> None:
    """Ingest's own count of what it published."""
    EVENTS_PUBLISHED.labels(event.event_type).inc()


def count_failure(event: Event) -> None:
    """Ingest's own count of publishes not acknowledged (ingest answers 503/451 then)."""
    PUBLISH_FAILURES.inc()


class ObjectContentStore:
    """The content object store, addressed by SHA-256."""

    def __init__(self, store: ObjectStore, js: JetStreamContext, *, timeout: float = 5.0) -> None:
        self._store = store
        self._js = js
        self._timeout = timeout
        # Unique chunk-subject ids as the object store makes them, without a syscall each.
        self._nuids = NUID()

    async def put(
        self, data: bytes, content_type: str, *, fresh: bool = False, sha256: str | None = None
    ) -> ContentRef:
        """Store bytes once under their SHA-256, through an election of the store's leader."""
        return await bus.through_elections(
            lambda: self._put(data, content_type, fresh=fresh, sha256=sha256)
        )

    async def _put(
        self, data: bytes, content_type: str, *, fresh: bool = False, sha256: str | None = None
    ) -> ContentRef:
        """Store bytes once under their SHA-256.

        `fresh` says the bytes are most likely not stored yet (a raw message that just arrived):
        they are then written without first asking whether they exist, the chunks and the
        metadata in one pipelined batch (the client library's put takes four sequential round
        trips). The layout is the object store's own, so any object-store client reads it.
        `sha256` is the caller's digest of `data`, when it has one (a big message is not hashed
        twice).
        """
        if not fresh:
            return await put_content(self._store, data, content_type)
        name = sha256 if sha256 is not None else hashlib.sha256(data).hexdigest()
        nuid = self._nuids.next().decode()
        chunk_subject = f"$O.{bus.OBJECT_STORE}.C.{nuid}"
        chunks = [data[i : i + _CHUNK] for i in range(0, len(data), _CHUNK)]
        # ObjectInfo's fields as the object store writes them (`api.ObjectInfo.as_dict()`),
        # built directly: the dataclass round trip costs more than the rest of the put.
        info = {
            "name": name,
            "bucket": bus.OBJECT_STORE,
            "nuid": nuid,
            "size": len(data),
            "mtime": datetime.now(UTC).isoformat(),
            "chunks": len(chunks),
            "digest": "SHA-256=" + base64.urlsafe_b64encode(bytes.fromhex(name)).decode(),
            "deleted": False,
            "options": {"max_chunk_size": _CHUNK},
        }
        meta_subject = f"$O.{bus.OBJECT_STORE}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
        # Published in this order on one connection, so the stream stores the chunks before the
        # metadata that makes them visible; every ack is awaited before the caller goes on. The
        # asynchronous publish resolves a future per ack, without a task per publish.
        acks = [await bus.start_publish_to(self._js, chunk_subject, chunk) for chunk in chunks]
        acks.append(
            await bus.start_publish_to(
                self._js, meta_subject, _enc.encode(info), {"Nats-Rollup": "sub"}
            )
        )
        try:
            async with asyncio.timeout(self._timeout):
                await asyncio.gather(*acks)
        finally:
            for ack in acks:
                ack.cancel()  # after a failure or a timeout: stop waiting for the others
        return ContentRef(sha256=name, size=len(data), content_type=content_type)


class KvDirectory:
    """Orgs and settings in mailfold_orgs; records, addresses and templates in mailfold_directory."""

    def __init__(
        self,
        orgs: KeyValue,
        records: KeyValue,
        cache: OrgCache | None = None,
        addresses: AddressCache | None = None,
    ) -> None:
        self._orgs = orgs
        self._records = records
        self._cache = cache
        self._addresses = addresses

    async def org_exists(self, org_id: str) -> bool:
        """True when the org has an API token."""
        if self._cache is not None and self._cache.live and self._cache.known(org_id):
            return True
        return await get_value(self._orgs, f"{org_id}.token") is not None

    async def load_settings(self, org_id: str) -> OrgSettings:
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
        return await directory.load_mailbox(self._orgs, org_id, user)

    async def save_mailbox(self, org_id: str, user: str, mailbox: MailboxSettings) -> None:
        await directory.save_mailbox(self._orgs, org_id, user, mailbox)

    async def load_mailbox_status(self, org_id: str, user: str) -> MailboxStatus | None:
        return await directory.load_mailbox_status(self._orgs, org_id, user)

    async def load_record(self, org_id: str, record_id: str) -> RecordEntry | None:
        return await directory.load_record(self._records, org_id, record_id)

    async def put_record(self, org_id: str, record: RecordEntry) -> None:
        try:
            await directory.put_record(self._records, org_id, record)
        finally:
            self._forget_addresses()

    async def delete_record(self, org_id: str, record_id: str) -> bool:
        try:
            return await directory.delete_record(self._records, org_id, record_id)
        finally:
            self._forget_addresses()

    def _forget_addresses(self) -> None:
        # This service's own writes show at once, without waiting for the watch.
        if self._addresses is not None:
            self._addresses.clear()

    async def records_for_addresses(
        self, org_id: str, addresses: Sequence[str]
    ) -> tuple[RecordRef, ...]:
        """Every record that has one of these addresses, each once, in a stable order."""
        if self._addresses is None:
            return await directory.records_for_addresses(self._records, org_id, tuple(addresses))
        return await self._addresses.records_of_all(self._records, org_id, addresses)

    async def load_template(self, org_id: str, template_id: str) -> Template | None:
        raw = await get_value(self._records, template_key(org_id, template_id))
        return None if raw is None else _template_dec.decode(raw)

    async def save_template(self, org_id: str, template: Template) -> None:
        await self._records.put(template_key(org_id, template.template_id), _enc.encode(template))


class KvIdempotency:
    """Idempotency keys in mailfold_idempotency, claimed with a KV create (first writer wins)."""

    def __init__(self, bucket: KeyValue) -> None:
        self._bucket = bucket

    async def get(self, org_id: str, key: str) -> IdempotencyClaim | None:
        """The claim on a key, if any (asked again of another replica when one does not answer)."""
        kv_key = idempotency_key(org_id, key)
        raw = await bus.through_elections(functools.partial(get_value, self._bucket, kv_key))
        return None if raw is None else _claim_dec.decode(raw)

    async def claim(self, org_id: str, key: str, claim: IdempotencyClaim) -> IdempotencyClaim:
        kv_key = idempotency_key(org_id, key)
        for attempt in range(10):
            try:
                await bus.through_elections(
                    functools.partial(self._bucket.create, kv_key, _enc.encode(claim))
                )
            except KeyWrongLastSequenceError:
                existing = await self.get(org_id, key)
                if existing is not None:
                    return existing
                # Deleted between the create and the read, or read from a replica that has
                # not seen the claim yet (reads are direct): try again in a moment.
                await asyncio.sleep(0.01 * attempt)
                continue
            return claim
        raise RuntimeError(f"idempotency key {key!r} kept changing")

    async def complete(self, org_id: str, key: str, claim: IdempotencyClaim) -> None:
        kv_key, value = idempotency_key(org_id, key), _enc.encode(claim)
        await bus.through_elections(lambda: self._bucket.put(kv_key, value))


class KvVerpRecords:
    """The sender's VERP records, read from its KV bucket (`verp.<ref>` in mailfold_sender)."""

    def __init__(self, bucket: KeyValue) -> None:
        self._kv = bucket

    async def load(self, ref: str) -> VerpRecord | None:
        return await directory.load_verp_record(self._kv, ref)
