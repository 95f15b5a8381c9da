"""The reachability policy reproduces DESIGN.md's table, row by row."""

from __future__ import annotations

import pytest

from mailfold.events import POLICY, SOURCES, Channel, Source, Status, Transport, reachable
from mailfold.events.policy import can_be_rejected, policy_row, trackable

S = Status
CRM_SOURCES = [
    "Individual", "Mass Email", "Mass Email Follow-up", "Mass Email Scheduler", "Multiple",
    "Workflow Alert", "Meeting Notification", "Event Invitation", "Blueprint Notification",
    "Autoresponder", "Autoresponder Follow-up", "Cadence", "Calendar Booking Email",
    "Consent Email", "Access Email", "Export Email", "Rectify Email", "Integration Email",
    "Integration Task Mail", "Kiosk", "Mail Merge", "Webform", "Other Emails",
]  # fmt: skip
ASSOCIATED_SOURCES = ["External", "API", "Plugin Emails", "Plugin - Outlook", "Widget Email"]
BY_DISPLAY = {info.display: source for source, info in SOURCES.items()}


def _each(displays: list[str]) -> list[Source]:
    return [BY_DISPLAY[d] for d in displays]


def test_every_source_of_the_design_has_its_display_name_and_channel() -> None:
    expected = {
        **dict.fromkeys(CRM_SOURCES, Channel.CRM),
        "IMAP": Channel.MAILBOX,
        "POP3": Channel.MAILBOX,
        "BCC Dropbox": Channel.DROPBOX,
        **dict.fromkeys(ASSOCIATED_SOURCES, Channel.ASSOCIATED),
    }
    assert {info.display: info.channel for info in SOURCES.values()} == expected


@pytest.mark.parametrize("source", _each(CRM_SOURCES))
def test_crm_mail_through_crm_servers_to_one_recipient_reaches_sent_delivered_bounced_opened_clicked(
    source: Source,
) -> None:
    assert reachable(source, Transport.CRM_SERVERS, 1) == {
        S.SENT, S.DELIVERED, S.BOUNCED, S.OPENED, S.CLICKED,
    }  # fmt: skip
    assert trackable(source, Transport.CRM_SERVERS, 1)


@pytest.mark.parametrize("recipients", [2, 3, 50])
@pytest.mark.parametrize("source", _each(CRM_SOURCES))
def test_crm_mail_through_crm_servers_to_several_recipients_has_no_open_or_click(
    source: Source, recipients: int
) -> None:
    assert reachable(source, Transport.CRM_SERVERS, recipients) == {S.SENT, S.DELIVERED, S.BOUNCED}
    assert not trackable(source, Transport.CRM_SERVERS, recipients)


@pytest.mark.parametrize("recipients", [1, 4])
@pytest.mark.parametrize("source", _each(CRM_SOURCES))
def test_crm_mail_through_an_integrated_mailbox_reaches_only_sent_and_bounced(
    source: Source, recipients: int
) -> None:
    assert reachable(source, Transport.INTEGRATED_MAILBOX, recipients) == {S.SENT, S.BOUNCED}


@pytest.mark.parametrize("transport", list(Transport))
@pytest.mark.parametrize("source", _each(["IMAP", "POP3"]))
def test_integrated_mailbox_mail_reaches_sent_bounced_received(
    source: Source, transport: Transport
) -> None:
    for recipients in (1, 3):
        assert reachable(source, transport, recipients) == {S.SENT, S.BOUNCED, S.RECEIVED}


@pytest.mark.parametrize("transport", list(Transport))
def test_bcc_dropbox_mail_reaches_only_sent(transport: Transport) -> None:
    for recipients in (1, 3):
        assert reachable(Source.BCC_DROPBOX, transport, recipients) == {S.SENT}


@pytest.mark.parametrize("source", _each(ASSOCIATED_SOURCES))
def test_mail_associated_from_outside_reaches_sent_and_received(source: Source) -> None:
    for transport in Transport:
        assert reachable(source, transport, 1) == {S.SENT, S.RECEIVED}


def test_every_source_transport_and_audience_falls_under_exactly_one_row() -> None:
    for source, info in SOURCES.items():
        for transport in Transport:
            for recipients in (0, 1, 2):
                rows = [r for r in POLICY if r.matches(info.channel, transport, recipients)]
                assert len(rows) == 1, (source, transport, recipients)
                assert policy_row(source, transport, recipients) is rows[0]


def test_only_crm_originated_mail_can_be_rejected_before_sending() -> None:
    assert {s for s in Source if can_be_rejected(s)} == set(_each(CRM_SOURCES))
