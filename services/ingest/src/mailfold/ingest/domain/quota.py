"""The record's attachment quota: what each record holds in attachment bytes, and what a new email adds.

A record may hold 100 MB of attachments across all its emails. A template attachment is stored
once for the record however often it is sent (counted by its SHA-256); an email's own attachments
count once per email; a received or dropbox message counts its attachments once per record,
however many copies of the message arrive (counted by the raw message's SHA-256).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from mailfold.events import AttachmentRef


class RecordUsage(msgspec.Struct, frozen=True, kw_only=True):
    """The attachment bytes a record holds, by what brought them (the sum is `total`)."""

    templates: dict[str, int] = {}  # template attachment sha256 -> size
    emails: dict[str, int] = {}  # email id or `raw:<sha256>` -> its attachments' bytes

    @property
    def total(self) -> int:
        """Every attachment byte stored on the record."""
        return sum(self.templates.values()) + sum(self.emails.values())


@dataclass(frozen=True, slots=True)
class Charge:
    """What one email stores on each of its records."""

    key: str  # the email id, or `raw:<sha256>` for a received or captured message
    own_bytes: int  # the email's own attachments
    templates: tuple[tuple[str, int], ...] = ()  # (sha256, size) of its template attachments

    @property
    def empty(self) -> bool:
        """True when the email stores nothing (no attachments)."""
        return self.own_bytes == 0 and not self.templates


def charge_for(email_id: str, attachments: Sequence[AttachmentRef]) -> Charge:
    """The charge of a composed email: its own attachments, and its template's once each."""
    own = sum(a.size for a in attachments if not a.from_template)
    templates = tuple(dict.fromkeys((a.sha256, a.size) for a in attachments if a.from_template))
    return Charge(key=email_id, own_bytes=own, templates=templates)


def apply_charge(usage: RecordUsage, charge: Charge) -> RecordUsage:
    """The usage once the email's attachments are stored; charging twice changes nothing."""
    templates = dict(usage.templates)
    for sha256, size in charge.templates:
        templates.setdefault(sha256, size)
    emails = dict(usage.emails)
    if charge.own_bytes:
        emails.setdefault(charge.key, charge.own_bytes)
    return RecordUsage(templates=templates, emails=emails)


def refund(usage: RecordUsage, charge: Charge, added_templates: Sequence[str]) -> RecordUsage:
    """The usage without a charge that was taken back (and the template files it added)."""
    templates = {k: v for k, v in usage.templates.items() if k not in set(added_templates)}
    emails = {k: v for k, v in usage.emails.items() if k != charge.key}
    return RecordUsage(templates=templates, emails=emails)


def added_templates(usage: RecordUsage, charge: Charge) -> tuple[str, ...]:
    """The template attachments this charge stores on the record for the first time."""
    return tuple(sha for sha, _ in charge.templates if sha not in usage.templates)
