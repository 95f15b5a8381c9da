"""What the handler talks to, as protocols: the ledger, content, settings, the two transports."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol

from mailfold.events import Event, VerpRecord
from mailfold.runtime.directory import MailboxSettings, OrgSettings
from mailfold.sender.domain.addresses import Mailbox
from mailfold.sender.domain.delivery import SmtpAttempt
from mailfold.sender.domain.state import Admission, RecipientMark

Publish = Callable[[Event], Awaitable[None]]
LoadContent = Callable[[str], Awaitable[bytes]]
LoadSettings = Callable[[str], Awaitable[OrgSettings]]
LoadMailbox = Callable[[str, str], Awaitable[MailboxSettings | None]]
Clock = Callable[[], datetime]
# Called once the server accepted the recipients, right before DATA; False means "do not send".
BeforeData = Callable[[Sequence[Mailbox]], Awaitable[bool]]


class ContentMissing(LookupError):
    """A body or attachment the email refers to is not in the object store."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """One SMTP transaction: a return path, one recipient, the message."""

    mail_from: str
    recipient: Mailbox
    message: bytes


class Ledger(Protocol):
    """Shared delivery state with compare-and-set; revisions guard every write.

    `last=None` on a write means "create": it fails if the key exists. A write that loses a race
    returns None instead of a new revision.
    """

    async def mark(
        self, org_id: str, email_id: str, recipient: str
    ) -> tuple[RecipientMark, int] | None:
        """A recipient's mark and its revision, if any."""
        ...

    async def put_mark(
        self, org_id: str, email_id: str, recipient: str, mark: RecipientMark, *, last: int | None
    ) -> int | None:
        """Write a mark if it is still at revision `last`; the new revision, or None."""
        ...

    async def admission(self, org_id: str, email_id: str) -> tuple[Admission, int] | None:
        """A mass email's admission and its revision, if any."""
        ...

    async def pin_admission(
        self, org_id: str, email_id: str, admission: Admission
    ) -> tuple[Admission, int]:
        """Create the admission, or return the one a previous delivery created."""
        ...

    async def decide_admission(
        self, org_id: str, email_id: str, admission: Admission, *, last: int
    ) -> bool:
        """Record the decision if the admission is still at revision `last`."""
        ...

    async def claim_address(self, org_id: str, campaign: str, address: str, email_id: str) -> bool:
        """True if this email may mail the address in this campaign (first come, or itself)."""
        ...

    async def release_address(
        self, org_id: str, campaign: str, address: str, email_id: str
    ) -> None:
        """Give back a claim this email holds."""
        ...

    async def reserve_slot(self, org_id: str, day: date, email_id: str, limit: int) -> bool:
        """Take one of the day's `limit` mass-email slots; idempotent for one email id."""
        ...

    async def remember_verp(self, record: VerpRecord) -> None:
        """Record what the email's VERP reference stands for, before any return path uses it."""
        ...


# Called with each envelope's attempt as soon as it is known, before the next transaction.
AfterAttempt = Callable[["Envelope", SmtpAttempt], Awaitable[None]]


class DirectTransport(Protocol):
    """Delivery to a recipient domain's own servers, one transaction per envelope."""

    async def deliver(
        self,
        domain: str,
        envelopes: Sequence[Envelope],
        before_data: BeforeData,
        after: AfterAttempt,
    ) -> None:
        """Try every envelope; `after` hears each attempt, once per envelope, in order."""
        ...


class SubmissionTransport(Protocol):
    """Submission through a user's own mail server, all recipients in one transaction."""

    async def submit(
        self,
        mailbox: MailboxSettings,
        mail_from: str,
        recipients: Sequence[Mailbox],
        message: bytes,
        before_data: BeforeData,
    ) -> list[SmtpAttempt]:
        """One attempt per recipient, in order."""
        ...
