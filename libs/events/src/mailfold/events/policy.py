"""The reachability policy: which statuses an email can reach, by source, transport and recipients."""

from __future__ import annotations

from dataclasses import dataclass

from mailfold.events.model import SOURCES, Channel, Source, Status, Transport

_S = Status


@dataclass(frozen=True, slots=True)
class PolicyRow:
    """One row of the policy table: a channel (and for CRM mail, a transport and audience)."""

    name: str
    description: str
    channel: Channel
    transport: Transport | None  # None: the row holds whatever the transport
    multi_recipient: bool | None  # None: the row holds whatever the number of recipients
    reachable: frozenset[Status]
    note: str = ""

    @property
    def sources(self) -> tuple[Source, ...]:
        """The sources this row covers, in declaration order."""
        return tuple(s for s, info in SOURCES.items() if info.channel is self.channel)

    def matches(self, channel: Channel, transport: Transport, recipients: int) -> bool:
        """True if an email of this channel, transport and audience falls under this row."""
        if channel is not self.channel:
            return False
        if self.transport is not None and transport is not self.transport:
            return False
        return self.multi_recipient is None or self.multi_recipient == (recipients > 1)


POLICY: tuple[PolicyRow, ...] = (
    PolicyRow(
        name="crm_servers_one_recipient",
        description="CRM-originated, sent through the CRM's mail servers, one recipient",
        channel=Channel.CRM,
        transport=Transport.CRM_SERVERS,
        multi_recipient=False,
        reachable=frozenset({_S.SENT, _S.DELIVERED, _S.BOUNCED, _S.OPENED, _S.CLICKED}),
    ),
    PolicyRow(
        name="crm_servers_several_recipients",
        description="CRM-originated, sent through the CRM's mail servers, several recipients",
        channel=Channel.CRM,
        transport=Transport.CRM_SERVERS,
        multi_recipient=True,
        reachable=frozenset({_S.SENT, _S.DELIVERED, _S.BOUNCED}),
        note="no open/click insights for multi-recipient mail (To+Cc+Bcc > 1); the bulk sources "
        "(mass email, Multiple, autoresponders, Cadence, Mail Merge) are sent one email per "
        "recipient, so only one-off mail falls here",
    ),
    PolicyRow(
        name="crm_through_integrated_mailbox",
        description="CRM-originated, sent through an integrated mailbox (the user's own SMTP)",
        channel=Channel.CRM,
        transport=Transport.INTEGRATED_MAILBOX,
        multi_recipient=None,
        reachable=frozenset({_S.SENT, _S.BOUNCED}),
        note="no bounce reason: the mailbox's server, not ours, saw the failure",
    ),
    PolicyRow(
        name="integrated_mailbox",
        description="integrated mailbox (IMAP, POP3)",
        channel=Channel.MAILBOX,
        transport=None,
        multi_recipient=None,
        reachable=frozenset({_S.SENT, _S.BOUNCED, _S.RECEIVED}),
    ),
    PolicyRow(
        name="bcc_dropbox",
        description="BCC dropbox",
        channel=Channel.DROPBOX,
        transport=None,
        multi_recipient=None,
        reachable=frozenset({_S.SENT}),
    ),
    PolicyRow(
        name="associated_from_outside",
        description="associated from outside (add-ons, old API, plugins, widget)",
        channel=Channel.ASSOCIATED,
        transport=None,
        multi_recipient=None,
        reachable=frozenset({_S.SENT, _S.RECEIVED}),
    ),
)


def policy_row(source: Source, transport: Transport, recipients: int) -> PolicyRow:
    """The row that governs an email of this source, transport and number of recipients."""
    channel = SOURCES[source].channel
    for row in POLICY:
        if row.matches(channel, transport, recipients):
            return row
    raise LookupError(f"no policy row for {source}/{transport}/{recipients}")  # pragma: no cover


def reachable(source: Source, transport: Transport, recipients: int) -> frozenset[Status]:
    """The statuses an email can reach; anything else claimed for it is a policy violation."""
    return policy_row(source, transport, recipients).reachable


def trackable(source: Source, transport: Transport, recipients: int) -> bool:
    """True where opens and clicks are measured, so the sender adds a pixel and rewrites links."""
    return Status.OPENED in reachable(source, transport, recipients)


def can_be_rejected(source: Source) -> bool:
    """Only mail the CRM itself sends can be refused before sending (limits, quotas, addresses)."""
    return SOURCES[source].channel is Channel.CRM


def reports_delivery(source: Source, transport: Transport, recipients: int) -> bool:
    """Deferrals and complaints exist only where our own servers deliver the mail."""
    return Status.DELIVERED in reachable(source, transport, recipients)
