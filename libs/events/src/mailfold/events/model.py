"""The vocabulary of the domain: statuses, sources and their channels, transports, verdicts."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.StrEnum):
    """What an email's timeline entry shows."""

    SENT = "Sent"
    DELIVERED = "Delivered"
    BOUNCED = "Bounced"
    OPENED = "Opened"
    CLICKED = "Clicked"
    RECEIVED = "Received"
    REJECTED = "Rejected"


# Displayed status precedence, highest first: an open proves delivery, a bounce after a delivery
# wins over it. Received and Rejected never meet the others on one email; they rank last.
STATUS_PRECEDENCE: tuple[Status, ...] = (
    Status.CLICKED,
    Status.OPENED,
    Status.BOUNCED,
    Status.DELIVERED,
    Status.SENT,
    Status.RECEIVED,
    Status.REJECTED,
)
STATUS_RANK: dict[Status, int] = {
    s: len(STATUS_PRECEDENCE) - i for i, s in enumerate(STATUS_PRECEDENCE)
}


class Transport(enum.StrEnum):
    """How an outgoing CRM email leaves: our own servers or the user's integrated mailbox."""

    CRM_SERVERS = "crm_servers"
    INTEGRATED_MAILBOX = "integrated_mailbox"


class Channel(enum.StrEnum):
    """The way an email entered the CRM; a source belongs to exactly one channel."""

    CRM = "crm"
    MAILBOX = "integrated_mailbox"
    DROPBOX = "bcc_dropbox"
    ASSOCIATED = "associated"


class Source(enum.StrEnum):
    """Every email source; the wire value is the code, users see `SOURCES[s].display`."""

    INDIVIDUAL = "individual"
    MASS_EMAIL = "mass_email"
    MASS_EMAIL_FOLLOW_UP = "mass_email_follow_up"
    MASS_EMAIL_SCHEDULER = "mass_email_scheduler"
    MULTIPLE = "multiple"
    WORKFLOW_ALERT = "workflow_alert"
    MEETING_NOTIFICATION = "meeting_notification"
    EVENT_INVITATION = "event_invitation"
    BLUEPRINT_NOTIFICATION = "blueprint_notification"
    AUTORESPONDER = "autoresponder"
    AUTORESPONDER_FOLLOW_UP = "autoresponder_follow_up"
    CADENCE = "cadence"
    CALENDAR_BOOKING_EMAIL = "calendar_booking_email"
    CONSENT_EMAIL = "consent_email"
    ACCESS_EMAIL = "access_email"
    EXPORT_EMAIL = "export_email"
    RECTIFY_EMAIL = "rectify_email"
    INTEGRATION_EMAIL = "integration_email"
    INTEGRATION_TASK_MAIL = "integration_task_mail"
    KIOSK = "kiosk"
    MAIL_MERGE = "mail_merge"
    WEBFORM = "webform"
    OTHER_EMAILS = "other_emails"
    IMAP = "imap"
    POP3 = "pop3"
    BCC_DROPBOX = "bcc_dropbox"
    EXTERNAL = "external"
    API = "api"
    PLUGIN_EMAILS = "plugin_emails"
    PLUGIN_OUTLOOK = "plugin_outlook"
    WIDGET_EMAIL = "widget_email"


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What the rest of the system needs to know about one source."""

    source: Source
    display: str
    channel: Channel
    counts_toward_mass_limit: bool = False
    # Bulk sources reach many records at once and are sent one email per recipient, each on its
    # own recipient's records and each tracked; the daily limit counts those emails.
    one_per_recipient: bool = False

    @property
    def crm_originated(self) -> bool:
        """True for mail sent from within the CRM (the "Sent from CRM" timeline filter)."""
        return self.channel is Channel.CRM


def _info(
    source: Source, display: str, channel: Channel, *, mass: bool = False, bulk: bool = False
) -> SourceInfo:
    return SourceInfo(
        source, display, channel, counts_toward_mass_limit=mass, one_per_recipient=bulk
    )


_CRM = Channel.CRM
SOURCES: dict[Source, SourceInfo] = {
    i.source: i
    for i in (
        _info(Source.INDIVIDUAL, "Individual", _CRM),
        _info(Source.MASS_EMAIL, "Mass Email", _CRM, mass=True, bulk=True),
        _info(Source.MASS_EMAIL_FOLLOW_UP, "Mass Email Follow-up", _CRM, mass=True, bulk=True),
        _info(Source.MASS_EMAIL_SCHEDULER, "Mass Email Scheduler", _CRM, mass=True, bulk=True),
        _info(Source.MULTIPLE, "Multiple", _CRM, mass=True, bulk=True),
        _info(Source.WORKFLOW_ALERT, "Workflow Alert", _CRM),
        _info(Source.MEETING_NOTIFICATION, "Meeting Notification", _CRM),
        _info(Source.EVENT_INVITATION, "Event Invitation", _CRM),
        _info(Source.BLUEPRINT_NOTIFICATION, "Blueprint Notification", _CRM),
        _info(Source.AUTORESPONDER, "Autoresponder", _CRM, mass=True, bulk=True),
        _info(
            Source.AUTORESPONDER_FOLLOW_UP, "Autoresponder Follow-up", _CRM, mass=True, bulk=True
        ),
        _info(Source.CADENCE, "Cadence", _CRM, bulk=True),
        _info(Source.CALENDAR_BOOKING_EMAIL, "Calendar Booking Email", _CRM),
        _info(Source.CONSENT_EMAIL, "Consent Email", _CRM),
        _info(Source.ACCESS_EMAIL, "Access Email", _CRM),
        _info(Source.EXPORT_EMAIL, "Export Email", _CRM),
        _info(Source.RECTIFY_EMAIL, "Rectify Email", _CRM),
        _info(Source.INTEGRATION_EMAIL, "Integration Email", _CRM),
        _info(Source.INTEGRATION_TASK_MAIL, "Integration Task Mail", _CRM),
        _info(Source.KIOSK, "Kiosk", _CRM),
        _info(Source.MAIL_MERGE, "Mail Merge", _CRM, bulk=True),
        _info(Source.WEBFORM, "Webform", _CRM),
        _info(Source.OTHER_EMAILS, "Other Emails", _CRM),
        _info(Source.IMAP, "IMAP", Channel.MAILBOX),
        _info(Source.POP3, "POP3", Channel.MAILBOX),
        _info(Source.BCC_DROPBOX, "BCC Dropbox", Channel.DROPBOX),
        _info(Source.EXTERNAL, "External", Channel.ASSOCIATED),
        _info(Source.API, "API", Channel.ASSOCIATED),
        _info(Source.PLUGIN_EMAILS, "Plugin Emails", Channel.ASSOCIATED),
        _info(Source.PLUGIN_OUTLOOK, "Plugin - Outlook", Channel.ASSOCIATED),
        _info(Source.WIDGET_EMAIL, "Widget Email", Channel.ASSOCIATED),
    )
}
assert set(SOURCES) == set(Source), "every source needs its SourceInfo"


def source_info(source: Source) -> SourceInfo:
    """The display name, channel and limits of a source."""
    return SOURCES[source]


def one_per_recipient(source: Source) -> bool:
    """True for the bulk sources: one email per recipient, never one message to many."""
    return SOURCES[source].one_per_recipient


class Verdict(enum.StrEnum):
    """Whether an open or click came from a person or from a machine acting for one."""

    HUMAN = "human"
    MACHINE = "machine"


class BounceKind(enum.StrEnum):
    """Hard: the address is bad for good. Soft: it may work later. Undetermined: nothing says."""

    HARD = "hard"
    SOFT = "soft"
    UNDETERMINED = "undetermined"


class Direction(enum.StrEnum):
    """Which way the email went, as the timeline shows it."""

    OUTGOING = "outgoing"
    INCOMING = "incoming"


class Module(enum.StrEnum):
    """The CRM modules whose records have email addresses and an Emails related list."""

    LEADS = "Leads"
    CONTACTS = "Contacts"
    ACCOUNTS = "Accounts"
    DEALS = "Deals"
