"""What the handlers talk to, as protocols; adapters/ implements them on NATS and in memory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import msgspec

from mailfold.events import ContentRef, Event, RecordRef, VerpRecord
from mailfold.ingest.domain.quota import Charge, RecordUsage
from mailfold.ingest.domain.template import Template
from mailfold.runtime.directory import MailboxSettings, MailboxStatus, OrgSettings, RecordEntry


class Publisher(Protocol):
    """Publishes events to MAIL_EVENTS (Nats-Msg-Id = event_id)."""

    async def publish(self, event: Event) -> None:
        """Publish one event; raises when the stream did not acknowledge it."""


class ContentStore(Protocol):
    """Bodies, attachments and raw messages by SHA-256."""

    async def put(
        self, data: bytes, content_type: str, *, fresh: bool = False, sha256: str | None = None
    ) -> ContentRef:
        """Store bytes once under their SHA-256 and return the reference.

        `fresh`: the bytes are most likely new (a message that just arrived); the store may
        skip checking whether it holds them already. `sha256`: the hex digest of `data`, when
        the caller computed it already.
        """


class Directory(Protocol):
    """Orgs, settings, mailboxes, records with their address index, and templates."""

    async def org_exists(self, org_id: str) -> bool:
        """True when the org has been created (it has an API token)."""

    async def load_settings(self, org_id: str) -> OrgSettings:
        """The org's settings, defaults where none were set."""

    async def save_settings(self, org_id: str, settings: OrgSettings) -> None:
        """Replace the org's settings."""

    async def load_mailbox(self, org_id: str, user: str) -> MailboxSettings | None:
        """A user's integrated mailbox, if configured."""

    async def save_mailbox(self, org_id: str, user: str, mailbox: MailboxSettings) -> None:
        """Replace a user's integrated mailbox."""

    async def load_mailbox_status(self, org_id: str, user: str) -> MailboxStatus | None:
        """The sync status the mailbox service wrote for a user's mailbox, if any."""

    async def load_record(self, org_id: str, record_id: str) -> RecordEntry | None:
        """One record, if it exists."""

    async def put_record(self, org_id: str, record: RecordEntry) -> None:
        """Create or replace a record and its entries in the address index."""

    async def delete_record(self, org_id: str, record_id: str) -> bool:
        """Delete a record; False when it did not exist."""

    async def records_for_addresses(
        self, org_id: str, addresses: Sequence[str]
    ) -> tuple[RecordRef, ...]:
        """Every record that has one of these addresses, each once."""

    async def load_template(self, org_id: str, template_id: str) -> Template | None:
        """A template, if it exists."""

    async def save_template(self, org_id: str, template: Template) -> None:
        """Create or replace a template."""


class VerpRecords(Protocol):
    """What the sender recorded for each VERP reference it sent (read-only here)."""

    async def load(self, ref: str) -> VerpRecord | None:
        """The record of a reference, or None when it is unknown or expired."""


class IdempotencyClaim(msgspec.Struct, frozen=True, kw_only=True):
    """What an Idempotency-Key stands for: the email it created and the payload it came with."""

    email_id: str  # the email's id, or for a bulk send the campaign's
    fingerprint: str
    done: bool = False
    answer: str = ""  # a finished bulk send: its JSON answer, given again to a repeat


class IdempotencyStore(Protocol):
    """Idempotency-Key -> email id, claimed atomically so racing requests agree."""

    async def get(self, org_id: str, key: str) -> IdempotencyClaim | None:
        """The claim on a key, if any."""

    async def claim(self, org_id: str, key: str, claim: IdempotencyClaim) -> IdempotencyClaim:
        """Claim a key; returns `claim` when it was free, else the claim already there."""

    async def complete(self, org_id: str, key: str, claim: IdempotencyClaim) -> None:
        """Mark the key's email as published."""


class UsageLedger(Protocol):
    """The attachment bytes each record holds, updated with compare-and-set against racers."""

    async def usage(self, org_id: str, record_id: str) -> RecordUsage:
        """What the record holds now (nothing for a record never charged)."""

    async def charge(
        self, org_id: str, record_id: str, charge: Charge, *, limit: int | None
    ) -> tuple[RecordUsage, tuple[str, ...]] | None:
        """Add an email's attachments to the record unless that takes it past `limit` bytes.

        Returns the new usage and the template files first stored by this charge, or None when
        refused. `limit=None` never refuses (received and dropbox mail is only counted).
        """

    async def refund(
        self, org_id: str, record_id: str, charge: Charge, added: Sequence[str]
    ) -> None:
        """Take a charge back (an email refused for another of its records)."""


def utc_now() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Ports:
    """Everything the handlers need from the outside, passed in by bootstrap (or a test)."""

    publisher: Publisher
    content: ContentStore
    directory: Directory
    idempotency: IdempotencyStore
    usage: UsageLedger
    clock: Callable[[], datetime] = field(default=utc_now)
