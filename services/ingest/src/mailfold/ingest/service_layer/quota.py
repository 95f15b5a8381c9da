"""Charging the records of an email for its attachments, and refusing what passes the quota."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from mailfold.events import AttachmentRef, RecordRef
from mailfold.ingest.domain.quota import Charge, charge_for
from mailfold.ingest.domain.requests import MIB, RECORD_ATTACHMENT_QUOTA_BYTES
from mailfold.ingest.service_layer.ports import UsageLedger


def compose_charge(
    email_id: str, own_bytes: int, template_attachments: Sequence[AttachmentRef]
) -> Charge:
    """What a composed email stores: its own attachments, and its template's once per record."""
    templates = charge_for(email_id, template_attachments).templates
    return Charge(key=email_id, own_bytes=own_bytes, templates=templates)


async def reserve(
    usage: UsageLedger, org_id: str, charge: Charge, records: Sequence[RecordRef]
) -> RecordRef | None:
    """Charge each record for the email's attachments; the record that would pass its quota.

    All or nothing: when one record refuses, the records charged before it are refunded, and
    that record is returned. A repeat of the same email (same id) charges nothing new.
    """
    if charge.empty:
        return None
    taken: list[tuple[RecordRef, tuple[str, ...]]] = []
    for record in records:
        result = await usage.charge(
            org_id, record.record_id, charge, limit=RECORD_ATTACHMENT_QUOTA_BYTES
        )
        if result is None:
            for done, added in taken:
                await usage.refund(org_id, done.record_id, charge, added)
            return record
        taken.append((record, result[1]))
    return None


async def release(
    usage: UsageLedger, org_id: str, charge: Charge, records: Sequence[RecordRef]
) -> None:
    """Take back an email's own bytes after it could not be published (its template files stay:
    they are counted once per record anyway). Best effort: the publish failure is what matters."""
    if charge.own_bytes == 0:
        return
    with contextlib.suppress(Exception):
        for record in records:
            await usage.refund(org_id, record.record_id, charge, ())


async def count(
    usage: UsageLedger, org_id: str, key: str, size: int, records: Sequence[RecordRef]
) -> None:
    """Count a received or captured message's attachments on its records; never refuses."""
    if size <= 0:
        return
    charge = Charge(key=key, own_bytes=size)
    for record in records:
        await usage.charge(org_id, record.record_id, charge, limit=None)


def over_quota_detail(record: RecordRef) -> str:
    """The sentence that names the record an email would take past its quota."""
    quota = RECORD_ATTACHMENT_QUOTA_BYTES // MIB
    return (
        f"storing the attachments would take record {record.record_id!r} ({record.module.value}) "
        f"past its {quota} MB attachment quota"
    )
