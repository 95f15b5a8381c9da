"""The API's requests, read from untrusted JSON into typed commands, with every fault named."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import zoneinfo
from dataclasses import dataclass
from typing import Final

import msgspec

from mailfold.events import SOURCES, Module, Source, Transport, one_per_recipient
from mailfold.events.addresses import is_address, is_domain, normalise_domain
from mailfold.ingest.domain import payloads
from mailfold.ingest.domain.validation import FieldError, Fields, Invalid
from mailfold.runtime.directory import (
    DEFAULT_MAIL_DOMAIN,
    DEFAULT_MASS_DAILY_LIMIT,
    MAX_ADDRESSES_PER_RECORD,
    MAX_DROPBOX_SENDERS,
    IncomingSettings,
    MailboxSettings,
    OrgSettings,
    RecordEntry,
)

MIB: Final = 1024 * 1024
MAX_EMAIL_ATTACHMENTS_BYTES: Final = 10 * MIB  # per composed email, template attachments included
MAX_TEMPLATE_ATTACHMENT_BYTES: Final = 3 * MIB  # per template attachment
MAX_ATTACHMENTS: Final = 100
MAX_RECIPIENTS: Final = 1000  # To + Cc + Bcc of one composed email
MAX_RECORD_IDS: Final = 100  # of a one-off email; a bulk send names up to MAX_RECIPIENTS
RECORD_ATTACHMENT_QUOTA_BYTES: Final = 100 * MIB  # attachments stored on one record
MAX_SUBJECT: Final = 998
MAX_BODY_CHARS: Final = 8 * MIB
MAX_BLACKLISTED_DOMAINS: Final = 1000

IDENT: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
USER: Final = re.compile(r"^[A-Za-z0-9_.:@=+-]{1,128}$")
_CONTENT_TYPE: Final = re.compile(
    r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(?:\s*;[^\r\n\x00]*)?$"
)
_HOST: Final = re.compile(r"^[A-Za-z0-9.:\[\]_-]{1,253}$")
SECURITY_MODES: Final = ("starttls", "tls", "none")

INCOMING_PROTOCOLS: Final = {"imap": 993, "pop3": 995}
MAX_WATCHED_FOLDERS: Final = 20


@functools.cache
def _names(body: type[msgspec.Struct]) -> frozenset[str]:
    """The JSON field names of a body type: the only ones a request may give."""
    return frozenset(f.encode_name for f in msgspec.structs.fields(body))


@dataclass(frozen=True, slots=True)
class AttachmentUpload:
    """An attachment as the request gave it, decoded."""

    name: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ComposeEmail:
    """Compose an email (`POST /v1/orgs/{org}/emails`)."""

    source: Source
    transport: Transport
    from_addr: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    subject: str | None
    html: str | None
    text: str | None
    attachments: tuple[AttachmentUpload, ...]
    template_id: str | None
    record_ids: tuple[str, ...] | None
    mailbox_user: str | None

    @property
    def recipients(self) -> tuple[str, ...]:
        """To, Cc and Bcc in order."""
        return (*self.to, *self.cc, *self.bcc)

    @property
    def attachments_size(self) -> int:
        """The decoded size of the request's own attachments."""
        return sum(len(a.data) for a in self.attachments)


@dataclass(frozen=True, slots=True)
class PutTemplate:
    """Create or replace a template (`PUT /v1/orgs/{org}/templates/{id}`)."""

    template_id: str
    subject: str
    html: str | None
    text: str | None
    attachments: tuple[AttachmentUpload, ...]


def decode_json(body: bytes) -> object:
    """The JSON document in a request body; 422 naming `body` when it is not JSON.

    The message never quotes the body: it may hold a secret, and it goes back to the client.
    """
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise Invalid([FieldError("body", f"is not valid JSON: {exc}")]) from None
    except UnicodeDecodeError as exc:
        # msgspec counts from the start of the string it was reading, not of the body.
        raise Invalid(
            [FieldError("body", f"is not valid UTF-8 (byte {_utf8_error_offset(body, exc)})")]
        ) from None
    except RecursionError:
        raise Invalid([FieldError("body", "is nested too deeply")]) from None


def _utf8_error_offset(body: bytes, error: UnicodeDecodeError) -> int:
    """Where in `body` the first invalid UTF-8 byte is."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as whole:
        return whole.start
    return error.start


def conform(document: object, body: type[msgspec.Struct]) -> None:
    """Check a document already read field by field against its body type (`payloads`).

    The field reader names every fault at once; this makes sure nothing the OpenAPI document
    calls invalid is taken, naming the field msgspec reports.
    """
    try:
        msgspec.convert(document, body)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).rpartition(" - at `$")
        field = where.rstrip("`").lstrip(".") if message else "body"
        raise Invalid([FieldError(field or "body", message or str(exc))]) from None


def fingerprint(document: object) -> str:
    """A digest of a JSON document that ignores key order and whitespace."""
    return hashlib.sha256(msgspec.json.encode(document, order="sorted")).hexdigest()


def valid_ident(name: str, value: str) -> str:
    """A path parameter that must be an identifier (`[A-Za-z0-9_.:-]`, 1-64 characters)."""
    if not IDENT.match(value):
        raise Invalid(
            [FieldError(name, "must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', ':', '-'")]
        )
    return value


def valid_user(value: str) -> str:
    """A mailbox user id from the path."""
    if not USER.match(value):
        raise Invalid([FieldError("user", "must be 1-128 characters of A-Z, a-z, 0-9 and _.:@=+-")])
    return value


def _addresses(fields: Fields, name: str) -> tuple[str, ...]:
    values = fields.items(name, max_items=MAX_RECIPIENTS)
    if values is None:
        return ()
    good: list[str] = []
    for i, value in enumerate(values):
        if isinstance(value, str) and is_address(value.strip()):
            good.append(value.strip())
        else:
            fields.fail(f"{name}[{i}]", "is not an email address")
    return tuple(good)


def _attachments(fields: Fields, *, per_item_limit: int | None) -> tuple[AttachmentUpload, ...]:
    items = fields.items("attachments", max_items=MAX_ATTACHMENTS)
    if items is None:
        return ()
    uploads: list[AttachmentUpload] = []
    for i, item in enumerate(items):
        sub = Fields(
            item, allowed=_names(payloads.Attachment), prefix=fields.path(f"attachments[{i}].")
        )
        name = sub.string("name", required=True, max_length=255, single_line=True)
        if name is not None and ("/" in name or "\\" in name or name in (".", "..")):
            sub.fail("name", "must be a file name, without '/' or '\\'")
            name = None
        content_type = sub.string("content_type", max_length=255, single_line=True)
        if content_type is not None and not _CONTENT_TYPE.match(content_type):
            sub.fail("content_type", "must be a media type like 'application/pdf'")
        encoded = sub.string("content_base64", required=True, max_length=16 * MIB)
        data: bytes | None = None
        if encoded is not None:
            try:
                data = base64.b64decode("".join(encoded.split()), validate=True)
            except (binascii.Error, ValueError):
                sub.fail("content_base64", "is not valid base64")
        if data is not None and per_item_limit is not None and len(data) > per_item_limit:
            sub.too_large(
                "content_base64",
                f"attachment {name or i!r} is {len(data)} bytes; at most {per_item_limit} allowed",
            )
        fields.merge(sub)
        if name is not None and data is not None:
            uploads.append(AttachmentUpload(name, content_type or "application/octet-stream", data))
    return tuple(uploads)


def compose_from_json(document: object) -> ComposeEmail:
    """Read a compose request; raises Invalid (422) naming each field at fault."""
    fields = Fields(document, allowed=_names(payloads.ComposeEmailBody))
    source: Source | None = None
    source_text = fields.string("source", required=True, max_length=64)
    if source_text is not None:
        try:
            source = Source(source_text)
        except ValueError:
            fields.fail("source", f"unknown source {source_text!r}")
        else:
            if not SOURCES[source].crm_originated:
                fields.fail(
                    "source",
                    f"{source_text!r} mail is not composed here; only CRM-originated sources are",
                )
                source = None
    transport = Transport.CRM_SERVERS
    transport_text = fields.string("transport", max_length=64)
    if transport_text is not None:
        try:
            transport = Transport(transport_text)
        except ValueError:
            fields.fail("transport", f"must be one of {', '.join(t.value for t in Transport)}")
    from_addr = fields.string("from", required=True, max_length=320, single_line=True)
    if from_addr is not None and not is_address(from_addr.strip()):
        fields.fail("from", "is not an email address")
    to = _addresses(fields, "to")
    cc = _addresses(fields, "cc")
    bcc = _addresses(fields, "bcc")
    bulk = source is not None and one_per_recipient(source)
    given = sum(len(v) for v in map(fields.raw, ("to", "cc", "bcc")) if isinstance(v, list))
    if bulk:
        assert source is not None
        display = SOURCES[source].display
        for name in ("cc", "bcc"):
            if fields.raw(name) not in (None, []):
                fields.fail(
                    name,
                    f"{display} is sent one email per recipient: name every recipient in to "
                    "or record_ids, not in cc or bcc",
                )
        records_given = fields.raw("record_ids")
        if not given and not (isinstance(records_given, list) and records_given):
            fields.fail("to", "at least one recipient is needed in to or record_ids")
    elif not given:
        fields.fail("to", "at least one recipient is needed in to, cc or bcc")
    if len(to) + len(cc) + len(bcc) > MAX_RECIPIENTS:
        fields.fail("to", f"at most {MAX_RECIPIENTS} recipients in to, cc and bcc together")
    subject = fields.string("subject", max_length=MAX_SUBJECT, single_line=True)
    html = fields.string("html", max_length=MAX_BODY_CHARS) or None
    text = fields.string("text", max_length=MAX_BODY_CHARS) or None
    attachments = _attachments(fields, per_item_limit=None)
    template_id = fields.string("template_id", max_length=64)
    if template_id is not None and not IDENT.match(template_id):
        fields.fail("template_id", "must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', ':', '-'")
    content = html is not None or text is not None or template_id is not None
    if not content and not fields.failed("html", "text", "template_id"):
        fields.fail("html", "give html, text or a template_id")
    record_ids: tuple[str, ...] | None = None
    ids = fields.strings(
        "record_ids", max_items=MAX_RECIPIENTS if bulk else MAX_RECORD_IDS, max_length=64
    )
    if ids is not None:
        for i, value in enumerate(ids):
            if not IDENT.match(value):
                fields.fail(f"record_ids[{i}]", "is not a record id")
        record_ids = tuple(dict.fromkeys(ids))
    mailbox_user = fields.string("mailbox_user", max_length=128)
    if mailbox_user is not None and not USER.match(mailbox_user):
        fields.fail("mailbox_user", "must be 1-128 characters of A-Z, a-z, 0-9 and _.:@=+-")
    elif mailbox_user is None and transport is Transport.INTEGRATED_MAILBOX:
        fields.fail("mailbox_user", "is required when transport is integrated_mailbox")
    size = sum(len(a.data) for a in attachments)
    if size > MAX_EMAIL_ATTACHMENTS_BYTES:
        fields.too_large(
            "attachments",
            f"attachments total {size} bytes; at most {MAX_EMAIL_ATTACHMENTS_BYTES} allowed",
        )
    fields.check()
    conform(document, payloads.ComposeEmailBody)
    assert source is not None
    assert from_addr is not None
    return ComposeEmail(
        source=source,
        transport=transport,
        from_addr=from_addr.strip(),
        to=to,
        cc=cc,
        bcc=bcc,
        subject=subject,
        html=html,
        text=text,
        attachments=attachments,
        template_id=template_id,
        record_ids=record_ids,
        mailbox_user=mailbox_user,
    )


def template_from_json(template_id: str, document: object) -> PutTemplate:
    """Read a template; 413 names an attachment over 3 MiB, 422 any other fault."""
    fields = Fields(document, allowed=_names(payloads.TemplateBody))
    subject = fields.string("subject", max_length=MAX_SUBJECT, single_line=True)
    html = fields.string("html", max_length=MAX_BODY_CHARS) or None
    text = fields.string("text", max_length=MAX_BODY_CHARS) or None
    attachments = _attachments(fields, per_item_limit=MAX_TEMPLATE_ATTACHMENT_BYTES)
    size = sum(len(a.data) for a in attachments)
    if size > MAX_EMAIL_ATTACHMENTS_BYTES:
        fields.too_large(
            "attachments",
            f"attachments total {size} bytes; no email may carry more than "
            f"{MAX_EMAIL_ATTACHMENTS_BYTES}",
        )
    fields.check()
    conform(document, payloads.TemplateBody)
    return PutTemplate(template_id, subject or "", html, text, attachments)


def record_from_json(record_id: str, document: object) -> RecordEntry:
    """Read a record: its module and up to five addresses."""
    fields = Fields(document, allowed=_names(payloads.RecordBody))
    module: Module | None = None
    module_text = fields.string("module", required=True, max_length=32)
    if module_text is not None:
        try:
            module = Module(module_text)
        except ValueError:
            fields.fail("module", f"must be one of {', '.join(m.value for m in Module)}")
    given = fields.raw("addresses")
    addresses: tuple[str, ...] = ()
    if isinstance(given, list) and len(given) > MAX_ADDRESSES_PER_RECORD:
        fields.fail("addresses", f"a record has at most {MAX_ADDRESSES_PER_RECORD} addresses")
    else:
        addresses = _addresses(fields, "addresses")
    fields.check()
    conform(document, payloads.RecordBody)
    assert module is not None
    return RecordEntry(record_id=record_id, module=module, addresses=addresses)


def _time_zone(fields: Fields) -> str:
    name = fields.string("time_zone", max_length=64, single_line=True)
    if name is None:
        return "UTC"
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        fields.fail(
            "time_zone", f"unknown time zone {name!r} (use an IANA name like 'Europe/Paris')"
        )
    return name


def settings_from_json(document: object) -> OrgSettings:
    """Read an org's settings; a field left out takes its default (PUT replaces them all)."""
    fields = Fields(document, allowed=_names(payloads.SettingsBody))
    time_zone = _time_zone(fields)
    limit = fields.integer("mass_email_daily_limit", minimum=0, maximum=10_000_000)
    blacklisted: list[str] = []
    for i, value in enumerate(
        fields.strings("blacklisted_domains", max_items=MAX_BLACKLISTED_DOMAINS, max_length=255)
        or []
    ):
        domain = normalise_domain(value)
        if is_domain(domain):
            blacklisted.append(domain)
        else:
            fields.fail(f"blacklisted_domains[{i}]", "is not a domain name")
    senders: list[str] = []
    items = fields.items("dropbox_senders", max_items=MAX_DROPBOX_SENDERS)
    for i, item in enumerate(items or []):
        if isinstance(item, str) and is_address(item.strip()):
            senders.append(item.strip().lower())
        else:
            fields.fail(f"dropbox_senders[{i}]", "is not an email address")
    mail_domain = fields.string("mail_domain", max_length=253, single_line=True)
    if mail_domain is not None and not is_domain(normalise_domain(mail_domain)):
        fields.fail("mail_domain", "is not a domain name")
    vanished = fields.raw("pop3_vanished_is_deleted")
    if vanished is not None and not isinstance(vanished, bool):
        fields.fail("pop3_vanished_is_deleted", "must be true or false")
    fields.check()
    conform(document, payloads.SettingsBody)
    return OrgSettings(
        pop3_vanished_is_deleted=vanished is True,
        time_zone=time_zone,
        mass_email_daily_limit=DEFAULT_MASS_DAILY_LIMIT if limit is None else limit,
        blacklisted_domains=tuple(dict.fromkeys(blacklisted)),
        dropbox_senders=tuple(dict.fromkeys(senders)),
        mail_domain=normalise_domain(mail_domain) if mail_domain else DEFAULT_MAIL_DOMAIN,
    )


def _incoming(parent: Fields) -> IncomingSettings | None:
    """The receiving side of a mailbox (IMAP or POP3); errors are named `incoming.<field>`."""
    fields = Fields(
        parent.raw("incoming"), allowed=_names(payloads.IncomingBody), prefix="incoming."
    )
    protocol = fields.string("protocol", required=True, max_length=8)
    if protocol is not None and protocol not in INCOMING_PROTOCOLS:
        fields.fail("protocol", f"must be one of {', '.join(INCOMING_PROTOCOLS)}")
    host = fields.string("host", required=True, max_length=253, single_line=True)
    if host is not None and not _HOST.match(host):
        fields.fail("host", "is not a host name or IP address")
    port = fields.integer("port", minimum=1, maximum=65535)
    security = fields.string("security", max_length=16)
    if security is not None and security not in SECURITY_MODES:
        fields.fail("security", f"must be one of {', '.join(SECURITY_MODES)}")
    username = fields.string("username", required=True, max_length=320, single_line=True)
    secret = fields.string("secret", required=True, max_length=4096, single_line=True)
    folders = fields.strings("folders", max_items=MAX_WATCHED_FOLDERS, max_length=255) or []
    for i, name in enumerate(folders):
        if not name.strip() or '"' in name or "\\" in name:
            fields.fail(f"folders[{i}]", "must be a non-empty folder name without quotes")
    if protocol == "pop3" and folders:
        fields.fail("folders", "POP3 has one folder: leave folders out")
    parent.merge(fields)
    if fields.errors or protocol is None or host is None or username is None or secret is None:
        return None
    return IncomingSettings(
        protocol=protocol,
        host=host,
        port=port if port is not None else INCOMING_PROTOCOLS[protocol],
        security=security or "tls",
        username=username,
        secret=secret,
        folders=tuple(dict.fromkeys(f.strip() for f in folders)),
    )


def mailbox_from_json(document: object) -> MailboxSettings:
    """Read a user's integrated mailbox (its SMTP submission server and credentials)."""
    fields = Fields(document, allowed=_names(payloads.MailboxBody))
    host = fields.string("smtp_host", required=True, max_length=253, single_line=True)
    if host is not None and not _HOST.match(host):
        fields.fail("smtp_host", "is not a host name or IP address")
    port = fields.integer("smtp_port", minimum=1, maximum=65535)
    username = fields.string("username", required=True, max_length=320, single_line=True)
    secret = fields.string("secret", required=True, max_length=4096, single_line=True)
    security = fields.string("security", max_length=16)
    if security is not None and security not in SECURITY_MODES:
        fields.fail("security", f"must be one of {', '.join(SECURITY_MODES)}")
    address = fields.string("email", max_length=320, single_line=True)
    if address is not None and address and not is_address(address.strip()):
        fields.fail("email", "is not an email address")
    incoming = _incoming(fields) if fields.has("incoming") else None
    fields.check()
    conform(document, payloads.MailboxBody)
    assert host is not None
    assert username is not None
    assert secret is not None
    return MailboxSettings(
        incoming=incoming,
        smtp_host=host,
        smtp_port=587 if port is None else port,
        username=username,
        secret=secret,
        security=security or "starttls",
        email=(address or "").strip(),
    )
