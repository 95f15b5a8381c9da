"""POP3 sync against a real Dovecot: Received and Bounced with source POP3, UIDL bookkeeping."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from mailfold.events import EmailBounced, EmailDeleted, EmailReceived, Module, Source
from mailfold.events.ids import new_id
from mailfold.runtime import bus, directory
from mailfold.runtime.directory import OrgSettings

if TYPE_CHECKING:
    from tests.integration.mailbox.conftest import BounceFactory, MessageFactory, Org

pytestmark = pytest.mark.usefixtures("mailbox_service")


async def test_pop3_mail_from_a_record_is_received_with_source_pop3(
    org: Org, mail: MessageFactory
) -> None:
    await org.record("contact-1", Module.CONTACTS, "bob@customer.example")
    login = await org.mailbox("pam", protocol="pop3")
    org.dovecot.deliver(login, mail("who@unknown.example", "pam@acme.example", "Spam"))
    org.dovecot.deliver(login, mail("bob@customer.example", "pam@acme.example", "Hello"))

    (received,) = await org.wait_for(EmailReceived)
    assert received.source is Source.POP3
    assert received.mailbox_user == "pam"
    assert [r.record_id for r in received.records] == ["contact-1"]
    # POP3 only reads: the messages stay on the server.
    assert org.dovecot.count(login, "INBOX") == 2


async def test_a_pop3_bounce_of_crm_mail_sent_through_the_mailbox_is_bounced(
    org: Org, mail: MessageFactory, bounce_report: BounceFactory
) -> None:
    login = await org.mailbox("pam", protocol="pop3")
    crm_email_id = new_id()
    report = bounce_report(
        "carol@customer.example", f"<{crm_email_id}@mailfold.localhost>", "pam@acme.example"
    )
    org.dovecot.deliver(login, report)

    (bounced,) = await org.wait_for(EmailBounced)
    assert bounced.email_id == crm_email_id
    assert bounced.reason == "userunknown"
    assert bounced.recipient == "carol@customer.example"


async def test_a_vanished_uidl_is_a_deletion_only_when_the_org_says_so(
    org: Org, mail: MessageFactory
) -> None:
    await org.record("contact-1", Module.CONTACTS, "bob@customer.example")
    login = await org.mailbox("pam", protocol="pop3")
    org.dovecot.deliver(login, mail("bob@customer.example", "pam@acme.example", "First"))
    await org.wait_for(EmailReceived)

    org.dovecot.expunge(login, "INBOX", "Subject", "First")
    org.dovecot.deliver(login, mail("bob@customer.example", "pam@acme.example", "Second"))
    await org.wait_for(EmailReceived, 2)
    # The round that saw "Second" also saw "First" gone: another client downloaded it.
    assert [e for e in await org.events() if isinstance(e, EmailDeleted)] == []

    orgs = await bus.kv(org.js, bus.BUCKET_ORGS)
    await directory.save_settings(orgs, org.org_id, OrgSettings(pop3_vanished_is_deleted=True))
    org.dovecot.expunge(login, "INBOX", "Subject", "Second")
    second = next(
        e for e in await org.events() if isinstance(e, EmailReceived) and e.subject == "Second"
    )

    (deleted,) = await org.wait_for(EmailDeleted)
    assert deleted.email_id == second.email_id
    assert deleted.reason == "deleted_on_server"
