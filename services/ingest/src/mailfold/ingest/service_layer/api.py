"""Handlers behind the HTTP API: compose, templates, records, settings and mailboxes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

import msgspec

from mailfold.events import (
    AttachmentRef,
    ContentRef,
    EmailComposed,
    RecordRef,
    Transport,
    new_id,
)
from mailfold.events.ids import derived_id, id_time_ms
from mailfold.ingest.domain.payloads import IncomingView, MailboxView, SyncView
from mailfold.ingest.domain.requests import (
    MAX_EMAIL_ATTACHMENTS_BYTES,
    RECORD_ATTACHMENT_QUOTA_BYTES,
    AttachmentUpload,
    ComposeEmail,
    PutTemplate,
)
from mailfold.ingest.domain.template import Template
from mailfold.ingest.domain.validation import FieldError, Invalid, KeyReused, NotFound, TooLarge
from mailfold.ingest.service_layer import quota
from mailfold.ingest.service_layer.ports import IdempotencyClaim, Ports
from mailfold.runtime.directory import MailboxSettings, MailboxStatus, OrgSettings, RecordEntry

PRODUCER: Final = "ingest"
HTML: Final = "text/html; charset=utf-8"
TEXT: Final = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Composed:
    """The answer to a compose: the email's id, and whether an earlier request already made it."""

    email_id: str
    event_id: str
    replayed: bool = False


def composed_event_id(email_id: str) -> str:
    """The EmailComposed event id of an email, derived so a retried compose publishes it again."""
    return derived_id("email_composed", email_id, unix_ms=id_time_ms(email_id))


def _check_payload(claim: IdempotencyClaim, fingerprint: str) -> None:
    if claim.fingerprint != fingerprint:
        raise KeyReused(
            [FieldError("Idempotency-Key", "key reused with a different payload")],
            "this Idempotency-Key was used before with a different request body",
        )


async def _template(ports: Ports, org_id: str, cmd: ComposeEmail) -> Template | None:
    if cmd.template_id is None:
        return None
    template = await ports.directory.load_template(org_id, cmd.template_id)
    if template is None:
        raise Invalid([FieldError("template_id", f"no template {cmd.template_id!r}")])
    return template


async def _records(ports: Ports, org_id: str, cmd: ComposeEmail) -> tuple[RecordRef, ...]:
    if cmd.record_ids is None:
        return await ports.directory.records_for_addresses(org_id, cmd.recipients)
    return tuple(e.ref for e in await named_records(ports, org_id, cmd.record_ids))


async def named_records(
    ports: Ports, org_id: str, record_ids: tuple[str, ...]
) -> list[RecordEntry]:
    """The records a request names, in its order; 422 naming each one that does not exist."""
    entries = await asyncio.gather(
        *(ports.directory.load_record(org_id, rid) for rid in record_ids)
    )
    missing = [
        FieldError(f"record_ids[{i}]", f"no record {rid!r}")
        for i, (rid, entry) in enumerate(zip(record_ids, entries, strict=True))
        if entry is None
    ]
    if missing:
        raise Invalid(missing)
    return [e for e in entries if e is not None]


def _check_size(cmd: ComposeEmail, template: Template | None) -> None:
    template_bytes = template.attachments_size if template else 0
    total = cmd.attachments_size + template_bytes
    if total > MAX_EMAIL_ATTACHMENTS_BYTES:
        raise TooLarge(
            [
                FieldError(
                    "attachments",
                    f"attachments total {total} bytes with the template's {template_bytes}; "
                    f"at most {MAX_EMAIL_ATTACHMENTS_BYTES} allowed",
                )
            ]
        )


async def _check_mailbox(ports: Ports, org_id: str, cmd: ComposeEmail) -> None:
    if cmd.transport is not Transport.INTEGRATED_MAILBOX or cmd.mailbox_user is None:
        return
    if await ports.directory.load_mailbox(org_id, cmd.mailbox_user) is None:
        raise Invalid(
            [FieldError("mailbox_user", f"no integrated mailbox for user {cmd.mailbox_user!r}")]
        )


async def _store_attachments(
    ports: Ports, uploads: tuple[AttachmentUpload, ...], *, from_template: bool
) -> tuple[AttachmentRef, ...]:
    refs = await asyncio.gather(*(ports.content.put(a.data, a.content_type) for a in uploads))
    return tuple(
        AttachmentRef(
            sha256=ref.sha256,
            size=ref.size,
            name=upload.name,
            content_type=upload.content_type,
            from_template=from_template,
        )
        for upload, ref in zip(uploads, refs, strict=True)
    )


async def _body(ports: Ports, text: str | None, content_type: str) -> ContentRef | None:
    return None if text is None else await ports.content.put(text.encode(), content_type)


async def compose_email(
    ports: Ports,
    org_id: str,
    cmd: ComposeEmail,
    *,
    idempotency_key: str | None = None,
    fingerprint: str = "",
) -> Composed:
    """Store the email's content, publish EmailComposed, return the new email's id.

    With an Idempotency-Key, the first request claims the key for a new email id (a KV create,
    so of two racing requests exactly one wins); a request that finds the key claimed with the
    same payload answers with that email id, and if the first one has not finished it publishes
    the same event again (same event id: JetStream keeps one). A different payload is refused.
    """
    held: IdempotencyClaim | None = None
    if idempotency_key is not None:
        held = await ports.idempotency.get(org_id, idempotency_key)
        if held is not None:
            _check_payload(held, fingerprint)
            if held.done:
                return Composed(held.email_id, composed_event_id(held.email_id), replayed=True)

    template = await _template(ports, org_id, cmd)
    records = await _records(ports, org_id, cmd)
    await _check_mailbox(ports, org_id, cmd)
    _check_size(cmd, template)

    email_id = held.email_id if held is not None else new_id()
    if idempotency_key is not None and held is None:
        mine = IdempotencyClaim(email_id=email_id, fingerprint=fingerprint)
        held = await ports.idempotency.claim(org_id, idempotency_key, mine)
        if held != mine:
            _check_payload(held, fingerprint)
            if held.done:
                return Composed(held.email_id, composed_event_id(held.email_id), replayed=True)
            email_id = held.email_id

    html, text, attachments = await asyncio.gather(
        _body(ports, cmd.html, HTML),
        _body(ports, cmd.text, TEXT),
        _store_attachments(ports, cmd.attachments, from_template=False),
    )
    charge = quota.compose_charge(
        email_id, cmd.attachments_size, template.attachments if template else ()
    )
    over = await quota.reserve(ports.usage, org_id, charge, records)
    if over is not None:
        raise TooLarge([FieldError("attachments", quota.over_quota_detail(over))])
    event = EmailComposed(
        event_id=composed_event_id(email_id),
        org_id=org_id,
        email_id=email_id,
        occurred_at=ports.clock(),
        producer=PRODUCER,
        source=cmd.source,
        transport=cmd.transport,
        from_addr=cmd.from_addr,
        to=cmd.to,
        cc=cmd.cc,
        bcc=cmd.bcc,
        subject=cmd.subject if cmd.subject is not None else (template.subject if template else ""),
        html=html if html is not None else (template.html if template else None),
        text=text if text is not None else (template.text if template else None),
        attachments=(*attachments, *(template.attachments if template else ())),
        template_id=cmd.template_id,
        records=records,
        mailbox_user=cmd.mailbox_user,
    )
    try:
        await ports.publisher.publish(event)
    except Exception:
        await quota.release(ports.usage, org_id, charge, records)
        raise
    if idempotency_key is not None:
        done = IdempotencyClaim(email_id=email_id, fingerprint=fingerprint, done=True)
        await ports.idempotency.complete(org_id, idempotency_key, done)
    return Composed(email_id, event.event_id)


async def put_template(ports: Ports, org_id: str, cmd: PutTemplate) -> Template:
    """Store a template's bodies and attachments once, and the template (references) itself."""
    html, text, attachments = await asyncio.gather(
        _body(ports, cmd.html, HTML),
        _body(ports, cmd.text, TEXT),
        _store_attachments(ports, cmd.attachments, from_template=True),
    )
    template = Template(
        template_id=cmd.template_id,
        subject=cmd.subject,
        html=html,
        text=text,
        attachments=attachments,
    )
    await ports.directory.save_template(org_id, template)
    return template


async def get_template(ports: Ports, org_id: str, template_id: str) -> Template:
    """A template; 404 when there is none."""
    template = await ports.directory.load_template(org_id, template_id)
    if template is None:
        raise NotFound([FieldError("template_id", f"no template {template_id!r}")])
    return template


async def put_record(ports: Ports, org_id: str, record: RecordEntry) -> RecordEntry:
    """Create or replace a record; the address index follows its addresses."""
    await ports.directory.put_record(org_id, record)
    addresses = tuple(dict.fromkeys(a.strip().lower() for a in record.addresses))
    return msgspec.structs.replace(record, addresses=addresses)


async def get_record(ports: Ports, org_id: str, record_id: str) -> RecordEntry:
    """A record; 404 when there is none."""
    record = await ports.directory.load_record(org_id, record_id)
    if record is None:
        raise NotFound([FieldError("record_id", f"no record {record_id!r}")])
    return record


async def record_view(ports: Ports, org_id: str, record_id: str) -> dict[str, object]:
    """A record as `GET` shows it: its addresses and the attachment bytes it holds."""
    record, usage = await asyncio.gather(
        get_record(ports, org_id, record_id), ports.usage.usage(org_id, record_id)
    )
    return {
        **msgspec.structs.asdict(record),
        "attachments": {
            "used_bytes": usage.total,
            "quota_bytes": RECORD_ATTACHMENT_QUOTA_BYTES,
        },
    }


async def delete_record(ports: Ports, org_id: str, record_id: str) -> None:
    """Delete a record and its addresses from the index; 404 when there is none."""
    if not await ports.directory.delete_record(org_id, record_id):
        raise NotFound([FieldError("record_id", f"no record {record_id!r}")])


async def put_settings(ports: Ports, org_id: str, settings: OrgSettings) -> OrgSettings:
    """Replace the org's settings."""
    await ports.directory.save_settings(org_id, settings)
    return settings


async def get_settings(ports: Ports, org_id: str) -> OrgSettings:
    """The org's settings, defaults where none were set."""
    return await ports.directory.load_settings(org_id)


def mailbox_view(
    user: str, mailbox: MailboxSettings, status: MailboxStatus | None = None
) -> MailboxView:
    """A mailbox as the API shows it: everything but the secrets, and how its sync is going."""
    incoming = mailbox.incoming
    shown = status or MailboxStatus()
    return MailboxView(
        user=user,
        smtp_host=mailbox.smtp_host,
        smtp_port=mailbox.smtp_port,
        username=mailbox.username,
        security=mailbox.security,
        email=mailbox.email,
        # The view has no secret field: converting leaves the secret behind.
        incoming=None
        if incoming is None
        else msgspec.convert(incoming, IncomingView, from_attributes=True),
        sync=None
        if incoming is None
        else SyncView(
            state=shown.state,
            error_kind=shown.error_kind,
            last_error=shown.last_error,
            last_sync_at=shown.last_sync_at or None,
            updated_at=shown.updated_at or None,
        ),
    )


async def put_mailbox(
    ports: Ports, org_id: str, user: str, mailbox: MailboxSettings
) -> MailboxView:
    """Replace a user's integrated mailbox; the answer leaves the secret out."""
    await ports.directory.save_mailbox(org_id, user, mailbox)
    return mailbox_view(user, mailbox)


async def get_mailbox(ports: Ports, org_id: str, user: str) -> MailboxView:
    """A user's integrated mailbox without its secret; 404 when there is none."""
    mailbox = await ports.directory.load_mailbox(org_id, user)
    if mailbox is None:
        raise NotFound([FieldError("user", f"no integrated mailbox for user {user!r}")])
    return mailbox_view(user, mailbox, await ports.directory.load_mailbox_status(org_id, user))
