"""IMAP sync against a real Dovecot: what becomes Received, Sent, Bounced and Deleted."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import httpx
import pytest

from mailfold.events import (
    AnyEvent,
    EmailBounced,
    EmailCaptured,
    EmailDeleted,
    EmailReceived,
    EmailSent,
    Module,
    Source,
)
from mailfold.events.ids import new_id
from mailfold.mailbox.bootstrap import Service

if TYPE_CHECKING:
    from tests.integration.mailbox.conftest import BounceFactory, MessageFactory, Org, StartCopy

T = TypeVar("T")


def of(events: list[AnyEvent], kind: type[T]) -> list[T]:
    return [e for e in events if isinstance(e, kind)]


@pytest.mark.usefixtures("mailbox_service")
async def test_inbox_mail_from_a_record_is_received_on_every_record_sharing_the_address(
    org: Org, mail: MessageFactory
) -> None:
    await org.record("contact-1", Module.CONTACTS, "bob@customer.example")
    await org.record("account-1", Module.ACCOUNTS, "other@customer.example", "bob@customer.example")
    await org.record("lead-1", Module.LEADS, "carol@customer.example")
    login = await org.mailbox("ann")
    org.dovecot.deliver(login, mail("Stranger <who@unknown.example>", "ann@acme.example", "Spam"))
    org.dovecot.deliver(login, mail("Bob <BOB@customer.example>", "ann@acme.example", "Hi"))

    (received,) = await org.wait_for(EmailReceived)
    assert received.source is Source.IMAP
    assert received.mailbox_user == "ann"
    assert received.subject == "Hi"
    assert {r.record_id for r in received.records} == {"contact-1", "account-1"}
    # The unknown sender's mail (delivered first) became nothing, and nothing else was published.
    assert [type(e) for e in await org.events()] == [EmailReceived]


@pytest.mark.usefixtures("mailbox_service")
async def test_sent_folder_mail_to_a_record_is_captured_and_sent_with_source_imap(
    org: Org, mail: MessageFactory
) -> None:
    await org.record("lead-1", Module.LEADS, "carol@customer.example")
    login = await org.mailbox("ann")
    raw = mail("ann@acme.example", "Carol <carol@customer.example>", "Offer")
    org.dovecot.deliver(login, raw, folder="Sent")
    org.dovecot.deliver(login, mail("ann@acme.example", "x@nobody.example", "Private"), "Sent")

    (captured,) = await org.wait_for(EmailCaptured)
    (sent,) = await org.wait_for(EmailSent)
    assert captured.source is Source.IMAP
    assert captured.to == ("carol@customer.example",)
    assert [r.record_id for r in captured.records] == ["lead-1"]
    assert sent.email_id == captured.email_id
    assert sent.recipients == ("carol@customer.example",)


@pytest.mark.usefixtures("mailbox_service")
async def test_a_bounce_in_the_inbox_bounces_the_sent_mail_it_names_with_its_reason(
    org: Org, mail: MessageFactory, bounce_report: BounceFactory
) -> None:
    await org.record("lead-1", Module.LEADS, "carol@customer.example")
    login = await org.mailbox("ann")
    mid = f"<{new_id()}@ann.example>"
    org.dovecot.deliver(
        login, mail("ann@acme.example", "carol@customer.example", "Offer", message_id=mid), "Sent"
    )
    (captured,) = await org.wait_for(EmailCaptured)
    org.dovecot.deliver(login, bounce_report("carol@customer.example", mid, "ann@acme.example"))

    (bounced,) = await org.wait_for(EmailBounced)
    assert bounced.email_id == captured.email_id
    assert bounced.recipient == "carol@customer.example"
    assert bounced.status == "5.1.1"
    assert bounced.reason == "userunknown"
    assert bounced.kind.value == "hard"
    # The bounce itself is no received email.
    assert of(await org.events(), EmailReceived) == []


@pytest.mark.usefixtures("mailbox_service")
async def test_a_message_expunged_from_the_mailbox_is_deleted(
    org: Org, mail: MessageFactory
) -> None:
    await org.record("contact-1", Module.CONTACTS, "bob@customer.example")
    login = await org.mailbox("ann")
    org.dovecot.deliver(login, mail("bob@customer.example", "ann@acme.example", "Keep"))
    org.dovecot.deliver(login, mail("bob@customer.example", "ann@acme.example", "Drop"))
    received = await org.wait_for(EmailReceived, 2)
    dropped = next(e for e in received if e.subject == "Drop")

    org.dovecot.expunge(login, "INBOX", "Subject", "Drop")

    (deleted,) = await org.wait_for(EmailDeleted)
    assert deleted.email_id == dropped.email_id
    assert deleted.mailbox_user == "ann"
    assert deleted.reason == "expunged"


@pytest.mark.usefixtures("mailbox_service")
async def test_crm_mail_sent_through_the_mailbox_is_one_email_not_two(
    org: Org, mail: MessageFactory
) -> None:
    await org.record("lead-1", Module.LEADS, "carol@customer.example")
    login = await org.mailbox("ann")
    crm_email_id = new_id()
    raw = mail(
        "ann@acme.example",
        "carol@customer.example",
        "From the CRM",
        message_id=f"<{crm_email_id}@mailfold.localhost>",
    )
    org.dovecot.deliver(login, raw, "Sent")
    org.dovecot.deliver(login, mail("ann@acme.example", "carol@customer.example", "Own"), "Sent")
    (captured,) = await org.wait_for(EmailCaptured)
    assert captured.subject == "Own"  # the CRM's copy published nothing of its own...

    org.dovecot.expunge(login, "Sent", "Subject", "From the CRM")
    (deleted,) = await org.wait_for(EmailDeleted)
    assert deleted.email_id == crm_email_id  # ...but it is the CRM's email, tracked for deletion
    assert of(await org.events(), EmailCaptured) == [captured]


async def test_deleting_a_synced_email_through_the_api_deletes_it_in_the_mailbox(
    org: Org, mailbox_service: Service, mail: MessageFactory
) -> None:
    await org.record("contact-1", Module.CONTACTS, "bob@customer.example")
    login = await org.mailbox("ann")
    org.dovecot.deliver(login, mail("bob@customer.example", "ann@acme.example", "Bye"))
    (received,) = await org.wait_for(EmailReceived)
    url = f"http://127.0.0.1:{mailbox_service.port}/v1/orgs/{org.org_id}/emails/{received.email_id}"

    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {org.token}"}) as client:
        answer = await client.delete(url)
        assert answer.status_code == 200, answer.text
        assert org.dovecot.count(login, "INBOX") == 0
        (deleted,) = await org.wait_for(EmailDeleted)
        assert deleted.email_id == received.email_id
        assert deleted.reason == "deleted_in_crm"
        again = await client.delete(url)
        assert again.status_code == 404
        assert again.json()["errors"][0]["field"] == "email_id"
        stranger = await client.delete(url, headers={"Authorization": "Bearer mf_x_nope"})
        assert stranger.status_code == 401


@pytest.mark.usefixtures("mailbox_service")
async def test_a_wrong_password_is_reported_while_other_mailboxes_keep_syncing(
    org: Org, mail: MessageFactory
) -> None:
    await org.record("contact-1", Module.CONTACTS, "bob@customer.example")
    bad = await org.mailbox("bad", login_password="not-the-password")
    good = await org.mailbox("good")
    org.dovecot.deliver(bad, mail("bob@customer.example", "bad@acme.example", "Lost"))
    org.dovecot.deliver(good, mail("bob@customer.example", "good@acme.example", "Kept"))

    (received,) = await org.wait_for(EmailReceived)
    assert received.mailbox_user == "good"
    status = await org.status("bad", "failing")
    assert status.error_kind == "auth"
    assert "not-the-password" not in status.last_error
    good_status = await org.status("good", "ok")
    assert good_status.error_kind == ""
    assert good_status.last_sync_at


@pytest.mark.usefixtures("mailbox_service")
async def test_recent_mail_is_read_again_when_a_record_gains_its_sender_address(
    org: Org, mail: MessageFactory
) -> None:
    await org.record("contact-1", Module.CONTACTS, "bob@customer.example")
    login = await org.mailbox("ann")
    org.dovecot.deliver(login, mail("dora@newcustomer.example", "ann@acme.example", "Earlier"))
    org.dovecot.deliver(login, mail("bob@customer.example", "ann@acme.example", "Known"))
    await org.wait_for(EmailReceived)  # the round that read both is over: Dora was nobody then

    await org.record("lead-9", Module.LEADS, "dora@newcustomer.example")

    received = await org.wait_for(EmailReceived, 2)
    earlier = next(e for e in received if e.subject == "Earlier")
    assert [r.record_id for r in earlier.records] == ["lead-9"]
    assert len(received) == 2


async def test_mailboxes_spread_over_copies_and_move_when_a_copy_stops(
    org: Org, mail: MessageFactory, start_copy: StartCopy
) -> None:
    await org.record("contact-1", Module.CONTACTS, "bob@customer.example")
    first, second = await start_copy(), await start_copy()
    users = ["m1", "m2", "m3", "m4"]
    logins = [await org.mailbox(user) for user in users]
    for login in logins:
        org.dovecot.deliver(login, mail("bob@customer.example", "rep@acme.example", "One"))
    await org.wait_for(EmailReceived, len(users))
    ours = {(org.org_id, user) for user in users}
    held_first, held_second = set(first.coordinator.held), set(second.coordinator.held)
    assert ours <= held_first | held_second
    assert not ours & held_first & held_second  # each mailbox is held by one copy

    await first.stop()
    for login in logins:
        org.dovecot.deliver(login, mail("bob@customer.example", "rep@acme.example", "Two"))
    received = await org.wait_for(EmailReceived, 2 * len(users))
    assert ours <= set(second.coordinator.held)
    assert len(received) == 2 * len(users)
    assert {e.mailbox_user for e in received} == set(users)


async def test_health_metrics_and_the_asyncapi_document_are_served(
    mailbox_service: Service,
) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mailbox_service.port}") as client:
        health = await client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["checks"] == {"nats": "ok"}
        spec = (await client.get("/asyncapi.json")).json()
        assert {
            name: op["action"] for name, op in spec["operations"].items()
        } == {f"mailbox:{t}": "send" for t in (
            "email_received", "email_captured", "email_sent", "email_bounced", "email_deleted"
        )}  # fmt: skip
        assert "mailfold_mailbox" in (await client.get("/metrics")).text
