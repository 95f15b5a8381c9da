"""Event types: frozen, tagged msgspec Structs on one envelope, one union, one decoder."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Final

import msgspec

from mailfold.events.model import BounceKind, Module, Source, Transport, Verdict

UtcDateTime = Annotated[datetime, msgspec.Meta(tz=True)]
OrgId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="lower-case letters, digits, '-' and '_'; safe as a NATS subject token",
    ),
]
Ident = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Address = Annotated[str, msgspec.Meta(max_length=320)]
ReplyCode = Annotated[int, msgspec.Meta(ge=200, le=599)]


class ContentRef(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A body or raw message in the object store, addressed by its SHA-256."""

    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[int, msgspec.Meta(ge=0)]
    content_type: str = "application/octet-stream"


class AttachmentRef(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An attachment in the object store; template attachments are stored once, sent many times."""

    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[int, msgspec.Meta(ge=0)]
    name: str
    content_type: str = "application/octet-stream"
    from_template: bool = False


class RecordRef(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A CRM record an email is attached to."""

    record_id: Ident
    module: Module


# gc=False: events are plain values without reference cycles, so the garbage collector need not
# track them (a measurable share of a fold's time otherwise).
class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    """The envelope every event carries."""

    event_id: Ident
    org_id: OrgId
    email_id: Ident
    occurred_at: UtcDateTime
    producer: str

    is_origin: ClassVar[bool] = False

    @property
    def event_type(self) -> str:
        """The wire name of this event, also the last token of its subject."""
        return type(self).__struct_config__.tag  # type: ignore[return-value]


# --- origins: the event that says an email exists and how it entered the CRM ---------------------


class EmailComposed(Event, frozen=True, kw_only=True, tag="email_composed"):
    """The CRM composed an email to send (the sender takes it from here)."""

    is_origin: ClassVar[bool] = True

    source: Source
    transport: Transport = Transport.CRM_SERVERS
    from_addr: Address
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    subject: str = ""
    html: ContentRef | None = None
    text: ContentRef | None = None
    attachments: tuple[AttachmentRef, ...] = ()
    template_id: str | None = None
    records: tuple[RecordRef, ...] = ()
    mailbox_user: str | None = None
    # One email of a bulk send (a mass email and the like): the campaign it belongs to.
    campaign_id: Ident | None = None
    # Set when storing the attachments would take this record past its attachment quota: the
    # sender refuses the email (EmailRejected `record_attachment_quota`) instead of sending it.
    over_quota_record: Ident | None = None

    @property
    def recipients(self) -> tuple[str, ...]:
        """Every recipient address: To, then Cc, then Bcc."""
        return (*self.to, *self.cc, *self.bcc)


class EmailCaptured(Event, frozen=True, kw_only=True, tag="email_captured"):
    """Outbound mail sent elsewhere and captured: BCC dropbox, a mailbox's Sent folder, add-ons."""

    is_origin: ClassVar[bool] = True

    source: Source
    transport: Transport = Transport.INTEGRATED_MAILBOX
    from_addr: Address
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    subject: str = ""
    message_id: str = ""
    raw: ContentRef | None = None
    records: tuple[RecordRef, ...] = ()
    mailbox_user: str | None = None

    @property
    def recipients(self) -> tuple[str, ...]:
        """Every recipient address: To, then Cc, then Bcc."""
        return (*self.to, *self.cc, *self.bcc)


class EmailReceived(Event, frozen=True, kw_only=True, tag="email_received"):
    """Inbound mail arrived in a mailbox integrated with the CRM."""

    is_origin: ClassVar[bool] = True

    source: Source
    transport: Transport = Transport.INTEGRATED_MAILBOX
    from_addr: Address
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    subject: str = ""
    message_id: str = ""
    raw: ContentRef | None = None
    records: tuple[RecordRef, ...] = ()
    mailbox_user: str | None = None

    @property
    def recipients(self) -> tuple[str, ...]:
        """Every recipient address: To, then Cc."""
        return (*self.to, *self.cc)


# --- facts about an email that exists ------------------------------------------------------------


class EmailRejected(Event, frozen=True, kw_only=True, tag="email_rejected"):
    """Refused before sending: a limit, a quota, a bad address, a duplicate in a mass email."""

    reason: str
    detail: str = ""
    recipient: Address | None = None


class EmailSent(Event, frozen=True, kw_only=True, tag="email_sent"):
    """The email left, from the CRM's servers or through an integrated mailbox."""

    recipients: tuple[Address, ...] = ()
    message_id: str = ""
    transport: Transport = Transport.CRM_SERVERS


class EmailDeferred(Event, frozen=True, kw_only=True, tag="email_deferred"):
    """A temporary failure for one recipient; delivery will be retried."""

    recipient: Address
    reply_code: ReplyCode | None = None
    status: str | None = None
    diagnostic: str | None = None
    remote_mta: str | None = None
    attempt: int = 1
    retry_at: UtcDateTime | None = None


class EmailDelivered(Event, frozen=True, kw_only=True, tag="email_delivered"):
    """The recipient's mail server accepted the email from the CRM's servers."""

    recipient: Address
    reply_code: ReplyCode | None = None
    reply: str = ""
    remote_mta: str | None = None


class EmailBounced(Event, frozen=True, kw_only=True, tag="email_bounced"):
    """The email was not delivered to one recipient, for good."""

    recipient: Address
    kind: BounceKind = BounceKind.UNDETERMINED
    status: str | None = None
    reply_code: ReplyCode | None = None
    reason: str | None = None
    diagnostic: str | None = None
    reporting_mta: str | None = None
    report: ContentRef | None = None


class EmailComplained(Event, frozen=True, kw_only=True, tag="email_complained"):
    """The recipient (or their provider) reported the email as abuse (an ARF feedback report)."""

    recipient: Address
    feedback_type: str = "abuse"
    reporting_mta: str | None = None
    user_agent: str | None = None
    report: ContentRef | None = None


class EmailOpened(Event, frozen=True, kw_only=True, tag="email_opened"):
    """The tracking pixel was loaded, by a person or by a machine acting for one."""

    recipient: Address
    verdict: Verdict = Verdict.HUMAN
    label: str = ""
    user_agent: str = ""
    ip: str = ""


class EmailClicked(Event, frozen=True, kw_only=True, tag="email_clicked"):
    """A tracked link was followed, by a person or by a link scanner."""

    recipient: Address
    url: str
    verdict: Verdict = Verdict.HUMAN
    label: str = ""
    user_agent: str = ""
    ip: str = ""


class EmailDeleted(Event, frozen=True, kw_only=True, tag="email_deleted"):
    """The email was expunged from its integrated mailbox; it leaves the timeline, not the log."""

    mailbox_user: str | None = None
    reason: str = "expunged"


AnyEvent = (
    EmailComposed
    | EmailCaptured
    | EmailReceived
    | EmailRejected
    | EmailSent
    | EmailDeferred
    | EmailDelivered
    | EmailBounced
    | EmailComplained
    | EmailOpened
    | EmailClicked
    | EmailDeleted
)
Origin = EmailComposed | EmailCaptured | EmailReceived

EVENT_CLASSES: Final[tuple[type[Event], ...]] = (
    EmailComposed,
    EmailCaptured,
    EmailReceived,
    EmailRejected,
    EmailSent,
    EmailDeferred,
    EmailDelivered,
    EmailBounced,
    EmailComplained,
    EmailOpened,
    EmailClicked,
    EmailDeleted,
)
EVENT_TYPES: Final[dict[str, type[Event]]] = {
    c.__struct_config__.tag: c  # type: ignore[misc]
    for c in EVENT_CLASSES
}

_ENCODER: Final = msgspec.json.Encoder()
DECODER: Final[msgspec.json.Decoder[AnyEvent]] = msgspec.json.Decoder(AnyEvent)


_NUL_ESCAPE: Final = b"\\u0000"
_ANY_JSON: Final = msgspec.json.Decoder()


def _clean(value: object) -> object:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _without_surrogates(value: object) -> object:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_surrogates(v) for v in value]
    return value


def encode(event: Event) -> bytes:
    """The JSON wire form of an event.

    Strings on the wire never hold NUL (PostgreSQL text cannot) nor lone surrogates (UTF-8
    cannot): text taken from mail may hold either, and an event that carries it must still be
    recorded, so each becomes U+FFFD (NUL) or '?' (a surrogate) here, for every producer.
    """
    try:
        data = _ENCODER.encode(event)
    except UnicodeEncodeError:
        data = _ENCODER.encode(_without_surrogates(msgspec.to_builtins(event)))
    if _NUL_ESCAPE in data:
        data = _ENCODER.encode(_clean(_ANY_JSON.decode(data)))
    return data


def decode(data: bytes | str) -> AnyEvent:
    """Decode and validate one event; raises msgspec.ValidationError / DecodeError on bad input."""
    return DECODER.decode(data)


def json_schema() -> dict[str, object]:
    """The JSON Schema of every event type, as one document with a component per type."""
    (union,), components = msgspec.json.schema_components([AnyEvent], ref_template="#/$defs/{name}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "mailfold event",
        **union,
        "$defs": components,
    }
