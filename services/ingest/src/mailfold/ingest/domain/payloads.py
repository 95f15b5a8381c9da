"""The API's JSON bodies as types: the shape every request is converted to, and the OpenAPI schema.

`requests` reads a body field by field first (so that every fault is named at once), then
converts it to one of these types, so a request the document describes as invalid is never
taken; the OpenAPI document (`entrypoints/openapi.py`) is generated from the same types.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from mailfold.events import Module, Source, Transport

Ident = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
User = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:@=+-]{1,128}$")]
Address = Annotated[str, msgspec.Meta(min_length=3, max_length=320)]
OneLine = Annotated[str, msgspec.Meta(pattern=r"^[^\r\n\x00]*$")]


class Attachment(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """An attachment given inline, base64-encoded."""

    name: Annotated[OneLine, msgspec.Meta(min_length=1, max_length=255)]
    content_base64: Annotated[str, msgspec.Meta(max_length=16 * 1024 * 1024)]
    content_type: Annotated[OneLine, msgspec.Meta(max_length=255)] | None = None


class ComposeEmailBody(
    msgspec.Struct, forbid_unknown_fields=True, kw_only=True, rename={"from_": "from"}
):
    """`POST /v1/orgs/{org}/emails`: compose an email (at least one of to, cc, bcc).

    Only CRM-originated sources are composed here; the others are refused naming `source`.
    """

    source: Source
    from_: Annotated[OneLine, msgspec.Meta(max_length=320)]
    transport: Transport | None = None
    to: Annotated[list[Address], msgspec.Meta(max_length=1000)] | None = None
    cc: Annotated[list[Address], msgspec.Meta(max_length=1000)] | None = None
    bcc: Annotated[list[Address], msgspec.Meta(max_length=1000)] | None = None
    subject: Annotated[OneLine, msgspec.Meta(max_length=998)] | None = None
    html: Annotated[str, msgspec.Meta(max_length=8 * 1024 * 1024)] | None = None
    text: Annotated[str, msgspec.Meta(max_length=8 * 1024 * 1024)] | None = None
    attachments: Annotated[list[Attachment], msgspec.Meta(max_length=100)] | None = None
    template_id: Ident | None = None
    record_ids: Annotated[list[Ident], msgspec.Meta(max_length=100)] | None = None
    mailbox_user: User | None = None


class TemplateBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`PUT /v1/orgs/{org}/templates/{template_id}`."""

    subject: Annotated[OneLine, msgspec.Meta(max_length=998)] | None = None
    html: Annotated[str, msgspec.Meta(max_length=8 * 1024 * 1024)] | None = None
    text: Annotated[str, msgspec.Meta(max_length=8 * 1024 * 1024)] | None = None
    attachments: Annotated[list[Attachment], msgspec.Meta(max_length=100)] | None = None


class RecordBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`PUT /v1/orgs/{org}/records/{record_id}`: a record and up to five addresses."""

    module: Module
    addresses: Annotated[list[Address], msgspec.Meta(max_length=5)] | None = None


class SettingsBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`PUT /v1/orgs/{org}/settings`: a field left out takes its default."""

    time_zone: Annotated[OneLine, msgspec.Meta(max_length=64)] | None = None
    mass_email_daily_limit: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] | None = None
    blacklisted_domains: (
        Annotated[
            list[Annotated[OneLine, msgspec.Meta(max_length=255)]], msgspec.Meta(max_length=1000)
        ]
        | None
    ) = None
    dropbox_senders: Annotated[list[Address], msgspec.Meta(max_length=10)] | None = None
    mail_domain: Annotated[OneLine, msgspec.Meta(max_length=253)] | None = None
    pop3_vanished_is_deleted: bool | None = None


Host = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9.:\[\]_-]{1,253}$")]
Folder = Annotated[str, msgspec.Meta(pattern=r'^[^"\\\r\n\x00]{1,255}$')]


class IncomingBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The receiving side of a mailbox, synced by the mailbox service (IMAP or POP3)."""

    protocol: Literal["imap", "pop3"]
    host: Host
    username: Annotated[OneLine, msgspec.Meta(min_length=1, max_length=320)]
    secret: Annotated[OneLine, msgspec.Meta(min_length=1, max_length=4096)]
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    security: Literal["starttls", "tls", "none"] | None = None
    folders: Annotated[list[Folder], msgspec.Meta(max_length=20)] | None = None


class MailboxBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`PUT /v1/orgs/{org}/mailboxes/{user}`: the user's SMTP submission server."""

    smtp_host: Host
    username: Annotated[OneLine, msgspec.Meta(min_length=1, max_length=320)]
    secret: Annotated[OneLine, msgspec.Meta(min_length=1, max_length=4096)]
    smtp_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    security: Literal["starttls", "tls", "none"] | None = None
    email: Annotated[OneLine, msgspec.Meta(max_length=320)] | None = None
    incoming: IncomingBody | None = None


class Accepted(msgspec.Struct, kw_only=True):
    """`202`: the email was recorded; its id."""

    email_id: str


class IncomingView(msgspec.Struct, kw_only=True):
    """The receiving side of a mailbox as the API shows it: everything but the secret."""

    protocol: str
    host: str
    port: int
    security: str
    username: str
    folders: list[str]


class SyncView(msgspec.Struct, kw_only=True):
    """How the mailbox service's sync of a mailbox is going."""

    state: str  # "pending" | "syncing" | "ok" | "failing"
    error_kind: str
    last_error: str
    last_sync_at: str | None
    updated_at: str | None


class MailboxView(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A mailbox as the API shows it: everything but the secrets; `incoming` and `sync` only for
    a mailbox with a receiving side."""

    user: str
    smtp_host: str
    smtp_port: int
    username: str
    security: str
    email: str
    incoming: IncomingView | None = None
    sync: SyncView | None = None


class AttachmentUsage(msgspec.Struct, kw_only=True):
    """The attachment bytes a record holds, and its quota."""

    used_bytes: int
    quota_bytes: int


class RecordView(msgspec.Struct, kw_only=True):
    """A record as `GET` shows it: its addresses and the attachment bytes it holds."""

    record_id: str
    module: Module
    addresses: list[str]
    attachments: AttachmentUsage
