"""In-memory ports with the same behaviour as the NATS ones, for unit tests and the contract suite."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgspec

from mailfold.events import ContentRef, Event, RecordRef, VerpRecord
from mailfold.ingest.domain.template import Template
from mailfold.ingest.service_layer.ports import IdempotencyClaim
from mailfold.runtime.directory import MailboxSettings, MailboxStatus, OrgSettings, RecordEntry


class PublishFailed(ConnectionError):
    """The fake stream is down."""


class MemoryPublisher:
    """Keeps published events in order, dropping a repeated event id like Nats-Msg-Id does."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.down = False

    async def publish(self, event: Event) -> None:
        """Append the event unless its id was published already; raises while `down`."""
        if self.down:
            raise PublishFailed("the stream is down")
        if all(e.event_id != event.event_id for e in self.events):
            self.events.append(event)


class MemoryContentStore:
    """Bytes by SHA-256."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts = 0
        self.down = False

    async def put(
        self, data: bytes, content_type: str, *, fresh: bool = False, sha256: str | None = None
    ) -> ContentRef:
        """Store bytes once under their SHA-256; raises while `down`."""
        if self.down:
            raise PublishFailed("the object store is down")
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and sha256 != digest:
            raise ValueError("sha256 is not the digest of data")
        if digest not in self.objects:
            self.objects[digest] = data
            self.puts += 1
        return ContentRef(sha256=digest, size=len(data), content_type=content_type)


class MemoryDirectory:
    """Orgs, settings, mailboxes, records with an address index, and templates, in dicts."""

    def __init__(self, orgs: Sequence[str] = ()) -> None:
        self.orgs: set[str] = set(orgs)
        self.settings: dict[str, OrgSettings] = {}
        self.mailboxes: dict[tuple[str, str], MailboxSettings] = {}
        self.mailbox_statuses: dict[tuple[str, str], MailboxStatus] = {}
        self.records: dict[tuple[str, str], RecordEntry] = {}
        self.templates: dict[tuple[str, str], Template] = {}

    async def org_exists(self, org_id: str) -> bool:
        """True when the org was created."""
        return org_id in self.orgs

    async def load_settings(self, org_id: str) -> OrgSettings:
        return self.settings.get(org_id, OrgSettings())

    async def save_settings(self, org_id: str, settings: OrgSettings) -> None:
        self.settings[org_id] = settings

    async def load_mailbox(self, org_id: str, user: str) -> MailboxSettings | None:
        return self.mailboxes.get((org_id, user))

    async def save_mailbox(self, org_id: str, user: str, mailbox: MailboxSettings) -> None:
        self.mailboxes[(org_id, user)] = mailbox

    async def load_mailbox_status(self, org_id: str, user: str) -> MailboxStatus | None:
        return self.mailbox_statuses.get((org_id, user))

    async def load_record(self, org_id: str, record_id: str) -> RecordEntry | None:
        return self.records.get((org_id, record_id))

    async def put_record(self, org_id: str, record: RecordEntry) -> None:
        """Create or replace a record; addresses are kept lower-cased, each once."""
        addresses = tuple(dict.fromkeys(a.strip().lower() for a in record.addresses))
        self.records[(org_id, record.record_id)] = msgspec.structs.replace(
            record, addresses=addresses
        )

    async def delete_record(self, org_id: str, record_id: str) -> bool:
        return self.records.pop((org_id, record_id), None) is not None

    async def records_for_addresses(
        self, org_id: str, addresses: Sequence[str]
    ) -> tuple[RecordRef, ...]:
        """Every record of the org that has one of these addresses, each once, sorted."""
        wanted = {a.strip().lower() for a in addresses}
        found = {
            (r.module.value, r.record_id): r.ref
            for (org, _), r in self.records.items()
            if org == org_id and wanted.intersection(r.addresses)
        }
        return tuple(found[k] for k in sorted(found))

    async def load_template(self, org_id: str, template_id: str) -> Template | None:
        return self.templates.get((org_id, template_id))

    async def save_template(self, org_id: str, template: Template) -> None:
        self.templates[(org_id, template.template_id)] = template


class MemoryIdempotency:
    """Idempotency claims in a dict; the first claim on a key wins."""

    def __init__(self) -> None:
        self.claims: dict[tuple[str, str], IdempotencyClaim] = {}

    async def get(self, org_id: str, key: str) -> IdempotencyClaim | None:
        return self.claims.get((org_id, key))

    async def claim(self, org_id: str, key: str, claim: IdempotencyClaim) -> IdempotencyClaim:
        return self.claims.setdefault((org_id, key), claim)

    async def complete(self, org_id: str, key: str, claim: IdempotencyClaim) -> None:
        self.claims[(org_id, key)] = claim


class MemoryVerpRecords:
    """VERP records in a dict, as the sender would have written them."""

    def __init__(self, *records: VerpRecord) -> None:
        self.records = {r.ref: r for r in records}

    def add(self, record: VerpRecord) -> None:
        """Record one email, as the sender does before sending it."""
        self.records[record.ref] = record

    async def load(self, ref: str) -> VerpRecord | None:
        return self.records.get(ref)
