"""The readers, one per bounce format family, and how the parser chooses one.

`choose` tries the formats a structural mark identifies for sure first (feedback reports, SES
JSON, Google Groups' failed-recipient header, PowerMTA's fields, Exchange Online's and Outlook.com's reporting MTAs,
McAfee's part names, Zoho's X-Mailer),
then each family's
markers in the notification text, then in the sender, then in the subject, then anything else a
reader looks for; a message none claims is read by the RFC 3464 reader when it has
delivery-status fields, as an automatic reply (RFC 3834) when it is one, and by the generic
text reader otherwise. Adding a format is adding a
module with its Reader subclass and a line to FAMILIES.
"""

from __future__ import annotations

from typing import Final

from mailfold.bounces.message import DSN_FIELD_INLINE, Bounce
from mailfold.bounces.readers.arf import ArfReader
from mailfold.bounces.readers.autoreply import AutoReplyReader
from mailfold.bounces.readers.base import Reader, standard_entries
from mailfold.bounces.readers.carriers import EzwebReader, VerizonReader
from mailfold.bounces.readers.courier import CourierReader
from mailfold.bounces.readers.domino import DominoReader
from mailfold.bounces.readers.dragonfly import DragonFlyReader
from mailfold.bounces.readers.exchange import ExchangeReader
from mailfold.bounces.readers.exim import EximReader
from mailfold.bounces.readers.gmail import GmailReader
from mailfold.bounces.readers.googlegroups import GoogleGroupsReader
from mailfold.bounces.readers.imailserver import IMailServerReader
from mailfold.bounces.readers.mailinglist import MailingListReader
from mailfold.bounces.readers.mcafee import McAfeeReader
from mailfold.bounces.readers.messagingserver import MessagingServerReader
from mailfold.bounces.readers.office365 import Office365Reader
from mailfold.bounces.readers.opensmtpd import OpenSmtpdReader
from mailfold.bounces.readers.outlook import OutlookReader
from mailfold.bounces.readers.postfix import PostfixReader
from mailfold.bounces.readers.powermta import PowerMtaReader
from mailfold.bounces.readers.qmail import QmailReader
from mailfold.bounces.readers.sendmail import SendmailReader
from mailfold.bounces.readers.sesjson import SesNotificationReader
from mailfold.bounces.readers.sestext import AmazonSesTextReader
from mailfold.bounces.readers.yahoo import YahooReader
from mailfold.bounces.readers.zoho import ZohoReader

__all__ = [
    "AUTOREPLY",
    "FAMILIES",
    "GENERIC",
    "RFC3464",
    "STRUCTURED",
    "Reader",
    "choose",
    "standard_entries",
]


class Rfc3464Reader(Reader):
    """A standard delivery status notification from a server of no family we know."""

    name = "rfc3464"

    def detect(self, bounce: Bounce) -> bool:
        return bool(bounce.dsn) or bool(DSN_FIELD_INLINE.search(bounce.text))


class GenericReader(Reader):
    """A plain-text notification of no known format: recipients and errors from its lines."""

    name = "text"
    words_as_diagnostic = True
    original_to = False


STRUCTURED: Final[tuple[Reader, ...]] = (
    ArfReader(),
    SesNotificationReader(),
    GoogleGroupsReader(),
    PowerMtaReader(),
    Office365Reader(),
    OutlookReader(),
    McAfeeReader(),
    ZohoReader(),
)
FAMILIES: Final[tuple[Reader, ...]] = (
    DragonFlyReader(),
    MessagingServerReader(),
    IMailServerReader(),
    QmailReader(),
    EximReader(),
    PostfixReader(),
    SendmailReader(),
    ExchangeReader(),
    GmailReader(),
    CourierReader(),
    OpenSmtpdReader(),
    DominoReader(),
    YahooReader(),
    AmazonSesTextReader(),
    EzwebReader(),
    VerizonReader(),
    MailingListReader(),
)
AUTOREPLY: Final = AutoReplyReader()
RFC3464: Final = Rfc3464Reader()
GENERIC: Final = GenericReader()


def choose(bounce: Bounce) -> Reader:
    """The reader for this message: the first whose format it looks like."""
    for reader in STRUCTURED:
        if reader.detect(bounce):
            return reader
    for where in ("text", "sender", "subject"):
        for reader in FAMILIES:
            if reader.marked(bounce, where):
                return reader
    for reader in FAMILIES:
        if reader.detect(bounce):
            return reader
    if RFC3464.detect(bounce):
        return RFC3464
    # Bounces are "auto-replied" too (RFC 3834): an automatic reply is what no format claims.
    return AUTOREPLY if AUTOREPLY.detect(bounce) else GENERIC
