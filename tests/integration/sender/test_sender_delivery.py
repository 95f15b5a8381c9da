"""The sender against real SMTP servers: each server answer becomes exactly the events it should,
and the message the server receives carries the tracking and return path it should."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from mailfold.events import (
    AnyEvent,
    BounceKind,
    EmailBounced,
    EmailDeferred,
    EmailDelivered,
    EmailRejected,
    EmailSent,
    Source,
    TokenKind,
    Transport,
)
from mailfold.runtime.directory import MailboxSettings
from mailfold.sender.domain.delivery import RetryPolicy

if TYPE_CHECKING:
    from tests.integration.sender.conftest import Bus, MxFactory, SenderFactory

HTML = (
    "<html><body><p>Hi Ann,</p>"
    '<p><a href="https://example.org/pricing?plan=pro&amp;ref=mail">our prices</a> and '
    "<a href='http://example.org/blog'>the blog</a>; "
    '<a href="mailto:help@example.org">write to us</a>.</p></body></html>'
)


def _kinds(events: list[AnyEvent]) -> list[str]:
    return [e.event_type for e in events]


def _only(events: list[AnyEvent], kind: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


async def test_an_accepting_server_yields_sent_then_delivered_with_its_reply(
    nats_bus: Bus, mx: MxFactory, sender: SenderFactory, org_id: str
) -> None:
    server = await mx()
    await nats_bus.settings(org_id)
    await sender({"example.org": server.port})
    email = await nats_bus.compose(org_id, to=("ann@example.org",), html=HTML)

    events = await nats_bus.events(
        org_id, lambda es: any(isinstance(e, EmailDelivered) for e in es), settle=1.0
    )

    assert _kinds(events) == ["email_composed", "email_sent", "email_delivered"]
    sent, delivered = _only(events, EmailSent)[0], _only(events, EmailDelivered)[0]
    assert sent.recipients == ("ann@example.org",)
    assert sent.message_id == f"<{email.email_id}@{nats_bus.mail_domain}>"
    assert sent.transport is Transport.CRM_SERVERS
    assert delivered.recipient == "ann@example.org"
    assert delivered.reply_code == 250
    assert delivered.reply == "2.0.0 Ok: queued as 4F2A"
    assert delivered.remote_mta == f"127.0.0.1:{server.port}"
    assert all(e.producer == "sender" for e in events[1:])
    assert len(server.handler.received) == 1


async def test_one_recipient_crm_mail_is_tracked_and_its_return_path_names_the_recipient(
    nats_bus: Bus, mx: MxFactory, sender: SenderFactory, org_id: str
) -> None:
    server = await mx()
    await nats_bus.settings(org_id)
    await sender({"example.org": server.port})
    email = await nats_bus.compose(org_id, to=("Ann@Example.org",), html=HTML)
    await nats_bus.events(org_id, lambda es: any(isinstance(e, EmailDelivered) for e in es))

    (received,) = server.handler.received
    verp = re.fullmatch(r"bounce\+(.+)@(.+)", received.mail_from)
    assert verp is not None
    assert verp.group(2) == nats_bus.mail_domain
    claims = await nats_bus.verp_claims(received.mail_from.upper())  # any case still verifies
    assert (claims.kind, claims.org_id, claims.email_id) == (
        TokenKind.BOUNCE, org_id, email.email_id,
    )  # fmt: skip
    assert claims.recipient == "Ann@Example.org"

    message = received.message
    assert message["Message-ID"] == f"<{email.email_id}@{nats_bus.mail_domain}>"
    html = received.html()
    assert html is not None
    clicks = re.findall(r'href="([^"]+)"', html)
    tracked = [c for c in clicks if c.startswith(f"{nats_bus.tracker_url}/c/")]
    assert len(tracked) == 2
    bound = [nats_bus.keys.verify(c.rsplit("/", 1)[1]) for c in tracked]
    assert [b.url for b in bound] == [
        "https://example.org/pricing?plan=pro&ref=mail",
        "http://example.org/blog",
    ]
    assert all(b.kind is TokenKind.CLICK and b.email_id == email.email_id for b in bound)
    assert "mailto:help@example.org" in clicks
    pixels = re.findall(rf'<img src="{re.escape(nats_bus.tracker_url)}/o/([^"]+)\.gif"', html)
    assert len(pixels) == 1
    opened = nats_bus.keys.verify(pixels[0])
    assert (opened.kind, opened.recipient) == (TokenKind.OPEN, "Ann@Example.org")
    assert html.index("<img") < html.index("</body>")


async def test_multi_recipient_mail_is_not_tracked_and_each_recipient_has_its_own_return_path(
    nats_bus: Bus, mx: MxFactory, sender: SenderFactory, org_id: str
) -> None:
    server = await mx()
    await nats_bus.settings(org_id)
    await sender({"example.org": server.port, "example.com": server.port})
    to = ("ann@example.org",)
    cc = ("bob@example.com",)
    bcc = ("cat@example.org",)
    email = await nats_bus.compose(org_id, to=to, cc=cc, bcc=bcc, html=HTML)

    events = await nats_bus.events(
        org_id, lambda es: len(_only(es, EmailDelivered)) == 3, settle=0.5
    )

    assert len(_only(events, EmailSent)) == 1
    assert {e.recipient for e in _only(events, EmailDelivered)} == {*to, *cc, *bcc}
    assert len(server.handler.received) == 3
    for received in server.handler.received:
        (rcpt,) = received.rcpt_tos
        assert (await nats_bus.verp_claims(received.mail_from)).recipient == rcpt
        assert (received.html() or "").rstrip() == HTML
        assert received.message["Bcc"] is None
        assert received.message["Cc"] == "bob@example.com"
        assert received.message["Message-ID"] == f"<{email.email_id}@{nats_bus.mail_domain}>"


async def test_a_550_user_unknown_is_a_hard_bounce_with_the_servers_reply(
    nats_bus: Bus, mx: MxFactory, sender: SenderFactory, org_id: str
) -> None:
    server = await mx()
    server.handler.rcpt_script["nobody@example.org"] = [
        "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"
    ]
    await nats_bus.settings(org_id)
    await sender({"example.org": server.port})
    await nats_bus.compose(org_id, to=("nobody@example.org",))

    events = await nats_bus.events(
        org_id, lambda es: any(isinstance(e, EmailBounced) for e in es), settle=1.0
    )

    assert _kinds(events) == ["email_composed", "email_sent", "email_bounced"]
    (bounce,) = _only(events, EmailBounced)
    assert bounce.recipient == "nobody@example.org"
    assert bounce.reply_code == 550
    assert bounce.status == "5.1.1"
    assert bounce.kind is BounceKind.HARD
    assert bounce.reason == "userunknown"
    assert bounce.diagnostic == (
        "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"
    )
    assert bounce.reporting_mta == f"127.0.0.1:{server.port}"
    assert server.handler.received == []


async def test_a_451_twice_is_deferred_twice_then_delivered(
    nats_bus: Bus, mx: MxFactory, sender: SenderFactory, org_id: str
) -> None:
    server = await mx()
    server.handler.rcpt_script["greylisted@example.org"] = [
        "451 4.7.1 Greylisted, try again later",
        "451 4.7.1 Greylisted, try again later",
        "250 2.1.5 Ok",
    ]
    await nats_bus.settings(org_id)
    await sender({"example.org": server.port})
    await nats_bus.compose(org_id, to=("greylisted@example.org",))

    events = await nats_bus.events(
        org_id, lambda es: any(isinstance(e, EmailDelivered) for e in es), settle=1.0
    )

    assert _kinds(events) == [
        "email_composed",
        "email_sent",
        "email_deferred",
        "email_deferred",
        "email_delivered",
    ]
    deferrals = _only(events, EmailDeferred)
    assert [d.attempt for d in deferrals] == [1, 2]
    for d in deferrals:
        assert d.reply_code == 451
        assert d.status == "4.7.1"
        assert d.diagnostic == "451 4.7.1 Greylisted, try again later"
        assert d.retry_at is not None
        assert d.retry_at > d.occurred_at
        assert d.remote_mta == f"127.0.0.1:{server.port}"
    assert server.handler.rcpt_attempts["greylisted@example.org"] == 3
    assert server.handler.count_for("greylisted@example.org") == 1


async def test_a_server_that_drops_the_connection_is_retried_until_the_max_age_then_bounced(
    nats_bus: Bus, dropping_server: int, sender: SenderFactory, org_id: str
) -> None:
    await nats_bus.settings(org_id)
    retry = RetryPolicy(base_s=0.2, factor=2.0, cap_s=0.5, max_age_s=2.0)
    await sender({"example.org": dropping_server}, retry=retry)
    await nats_bus.compose(org_id, to=("ann@example.org",))

    events = await nats_bus.events(
        org_id, lambda es: any(isinstance(e, EmailBounced) for e in es), settle=1.0
    )

    deferrals = _only(events, EmailDeferred)
    assert len(deferrals) >= 2
    assert [d.attempt for d in deferrals] == list(range(1, len(deferrals) + 1))
    assert all(d.reply_code is None and d.status == "4.4.1" for d in deferrals)
    (bounce,) = _only(events, EmailBounced)
    assert (bounce.kind, bounce.reason) == (BounceKind.SOFT, "expired")
    assert bounce.status == "4.4.7"
    assert events[-1] is bounce
    assert not _only(events, EmailDelivered)


async def _submission_setup(
    nats_bus: Bus, mx: MxFactory, org_id: str, *, password: str = "s3cret-pass"
) -> Any:
    server = await mx(auth={"ann.user": "s3cret-pass"})
    await nats_bus.settings(org_id)
    await nats_bus.mailbox(
        org_id,
        "ann",
        MailboxSettings(
            smtp_host="127.0.0.1",
            smtp_port=server.port,
            username="ann.user",
            secret=password,
            security="none",
            email="ann@crm-customer.example",
        ),
    )
    return server


async def test_integrated_mailbox_mail_is_submitted_with_auth_and_reports_sent_only(
    nats_bus: Bus, mx: MxFactory, sender: SenderFactory, org_id: str
) -> None:
    server = await _submission_setup(nats_bus, mx, org_id)
    await sender()
    email = await nats_bus.compose(
        org_id,
        to=("zed@example.org",),
        html=HTML,
        transport=Transport.INTEGRATED_MAILBOX,
        mailbox_user="ann",
    )

    events = await nats_bus.events(
        org_id, lambda es: any(isinstance(e, EmailSent) for e in es), settle=1.0
    )

    assert _kinds(events) == ["email_composed", "email_sent"]
    (sent,) = _only(events, EmailSent)
    assert sent.transport is Transport.INTEGRATED_MAILBOX
    assert sent.recipients == ("zed@example.org",)
    assert server.handler.logins
    assert server.handler.logins[0][1] == "ann.user"
    (received,) = server.handler.received
    assert received.mail_from == "ann@crm-customer.example"
    assert (received.html() or "").rstrip() == HTML  # no pixel, no rewritten links
    assert received.message["Message-ID"] == f"<{email.email_id}@{nats_bus.mail_domain}>"


async def test_integrated_mailbox_permanent_failures_bounce_without_a_reason(
    nats_bus: Bus, mx: MxFactory, sender: SenderFactory, org_id: str
) -> None:
    server = await _submission_setup(nats_bus, mx, org_id)
    server.handler.rcpt_script["gone@example.org"] = ["550 5.1.1 no such user here"]
    await sender()
    await nats_bus.compose(
        org_id,
        to=("gone@example.org", "zed@example.org"),
        transport=Transport.INTEGRATED_MAILBOX,
        mailbox_user="ann",
    )

    events = await nats_bus.events(
        org_id,
        lambda es: bool(_only(es, EmailSent)) and bool(_only(es, EmailBounced)),
        settle=1.0,
    )

    (bounce,) = _only(events, EmailBounced)
    assert bounce.recipient == "gone@example.org"
    assert bounce.reason is None
    assert bounce.reply_code == 550
    assert bounce.kind is BounceKind.HARD
    (sent,) = _only(events, EmailSent)
    assert sent.recipients == ("zed@example.org",)
    assert not _only(events, EmailDelivered)
    assert not _only(events, EmailDeferred)


async def test_integrated_mailbox_with_a_wrong_password_bounces_every_recipient(
    nats_bus: Bus, mx: MxFactory, sender: SenderFactory, org_id: str
) -> None:
    server = await _submission_setup(nats_bus, mx, org_id, password="wrong")
    await sender()
    await nats_bus.compose(
        org_id,
        to=("zed@example.org",),
        transport=Transport.INTEGRATED_MAILBOX,
        mailbox_user="ann",
    )

    events = await nats_bus.events(org_id, lambda es: bool(_only(es, EmailBounced)), settle=1.0)

    (bounce,) = _only(events, EmailBounced)
    assert bounce.reply_code == 535
    assert bounce.reason is None
    assert not _only(events, EmailSent)
    assert server.handler.received == []


async def test_integrated_mailbox_temporary_failures_retry_quietly_then_send(
    nats_bus: Bus, mx: MxFactory, sender: SenderFactory, org_id: str
) -> None:
    server = await _submission_setup(nats_bus, mx, org_id)
    server.handler.rcpt_script["zed@example.org"] = ["451 4.3.0 try again", "250 2.1.5 Ok"]
    await sender()
    await nats_bus.compose(
        org_id,
        to=("zed@example.org",),
        transport=Transport.INTEGRATED_MAILBOX,
        mailbox_user="ann",
    )

    events = await nats_bus.events(org_id, lambda es: bool(_only(es, EmailSent)), settle=1.0)

    assert _kinds(events) == ["email_composed", "email_sent"]  # no deferral is reported
    assert server.handler.rcpt_attempts["zed@example.org"] == 2
    assert server.handler.count_for("zed@example.org") == 1


async def test_a_mass_email_with_one_recipient_is_tracked_like_any_crm_mail(
    nats_bus: Bus, mx: MxFactory, sender: SenderFactory, org_id: str
) -> None:
    server = await mx()
    await nats_bus.settings(org_id)
    await sender({"example.org": server.port})
    await nats_bus.compose(
        org_id, to=("ann@example.org",), html=HTML, source=Source.MASS_EMAIL, template_id="t-1"
    )

    events = await nats_bus.events(org_id, lambda es: bool(_only(es, EmailDelivered)))

    assert not _only(events, EmailRejected)
    html = server.handler.received[0].html()
    assert html is not None
    assert f"{nats_bus.tracker_url}/o/" in html
