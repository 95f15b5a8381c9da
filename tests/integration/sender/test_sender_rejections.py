"""Emails the sender refuses before sending: one EmailRejected with a precise reason, no mail."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from mailfold.events import AnyEvent, AttachmentRef, EmailRejected, EmailSent, Transport
from mailfold.events.subjects import DLQ_STREAM
from mailfold.sender.domain.rules import MB

if TYPE_CHECKING:
    from tests.integration.sender.conftest import Bus, MxFactory, SenderFactory


def _only(events: list[AnyEvent], kind: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def _attachment(name: str, size: int, *, from_template: bool = False) -> AttachmentRef:
    return AttachmentRef(
        sha256=hashlib.sha256(name.encode()).hexdigest(),
        size=size,
        name=name,
        content_type="application/pdf",
        from_template=from_template,
    )


CASES: list[tuple[str, dict[str, Any], str, str | None, str]] = [
    ("no recipients", {}, "no_recipients", None, "no To, Cc or Bcc"),
    (
        "a bad recipient",
        {"to": ("ann@example.org",), "cc": ("bob@@example.org",)},
        "invalid_address",
        "bob@@example.org",
        "'bob@@example.org'",
    ),
    (
        "a recipient without a domain",
        {"to": ("ann",)},
        "invalid_address",
        "ann",
        "'ann'",
    ),
    (
        "a bad from address",
        {"to": ("ann@example.org",), "from_addr": "sales at crm"},
        "invalid_address",
        None,
        "'sales at crm'",
    ),
    (
        "attachments over 10 MB in all",
        {
            "to": ("ann@example.org",),
            "attachments": (
                _attachment("a.pdf", 6 * MB),
                _attachment("t.pdf", 2 * MB, from_template=True),
                _attachment("b.pdf", 3 * MB),
            ),
        },
        "attachments_too_large",
        None,
        "11.00 MB",
    ),
    (
        "a template attachment over 3 MB",
        {
            "to": ("ann@example.org",),
            "attachments": (_attachment("brochure.pdf", 3 * MB + 1, from_template=True),),
        },
        "template_attachment_too_large",
        None,
        "'brochure.pdf'",
    ),
    (
        "an integrated mailbox that is not configured",
        {
            "to": ("ann@example.org",),
            "transport": Transport.INTEGRATED_MAILBOX,
            "mailbox_user": "nobody",
        },
        "mailbox_not_configured",
        None,
        "nobody",
    ),
    (
        "a body missing from the object store",
        {"to": ("ann@example.org",), "attachments": (_attachment("lost.pdf", 1000),)},
        "content_missing",
        None,
        "'lost.pdf'",
    ),
]


@pytest.mark.parametrize(
    ("case", "fields", "reason", "recipient", "in_detail"), CASES, ids=[c[0] for c in CASES]
)
async def test_an_email_breaking_a_rule_is_rejected_with_its_reason_and_never_sent(
    nats_bus: Bus,
    mx: MxFactory,
    sender: SenderFactory,
    org_id: str,
    case: str,
    fields: dict[str, Any],
    reason: str,
    recipient: str | None,
    in_detail: str,
) -> None:
    server = await mx()
    await nats_bus.settings(org_id)
    await sender({"example.org": server.port})
    await nats_bus.compose(org_id, **fields)

    events = await nats_bus.events(org_id, lambda es: bool(_only(es, EmailRejected)), settle=1.0)

    (rejected,) = _only(events, EmailRejected)
    assert rejected.reason == reason
    assert rejected.recipient == recipient
    assert in_detail in rejected.detail
    assert not _only(events, EmailSent)
    assert server.handler.received == []


async def test_attachments_of_exactly_10_mb_are_within_the_limit(
    nats_bus: Bus, mx: MxFactory, sender: SenderFactory, org_id: str
) -> None:
    server = await mx()
    await nats_bus.settings(org_id)
    await sender({"example.org": server.port})
    store_sha, size = await nats_bus.content(b"%PDF-1.4 tiny", "application/pdf")
    real = AttachmentRef(sha256=store_sha, size=size, name="tiny.pdf")
    # The declared sizes are what the limit reads; the object store holds the real bytes.
    big = AttachmentRef(sha256=store_sha, size=10 * MB - size, name="again.pdf")
    await nats_bus.compose(org_id, to=("ann@example.org",), attachments=(real, big))

    events = await nats_bus.events(org_id, lambda es: bool(_only(es, EmailSent)), settle=0.5)

    assert not _only(events, EmailRejected)
    message = server.handler.received[0].message
    names = [part.get_filename() for part in message.iter_attachments()]
    assert names == ["tiny.pdf", "again.pdf"]


async def test_a_message_that_is_no_event_goes_to_the_dead_letter_queue(
    nats_bus: Bus, sender: SenderFactory, org_id: str
) -> None:
    service = await sender()
    subject = f"mail.events.{org_id}.email_composed"
    ack = await nats_bus.js.publish(subject, b'{"type": "email_composed", "oops": 1}')

    sub = await nats_bus.js.subscribe("mail.dlq.sender", stream=DLQ_STREAM, ordered_consumer=True)
    try:
        msg = await sub.next_msg(timeout=20)
    finally:
        await sub.unsubscribe()

    assert msg.data == b'{"type": "email_composed", "oops": 1}'
    assert msg.headers is not None
    assert msg.headers["Mailfold-Consumer"] == "sender"
    assert msg.headers["Mailfold-Subject"] == subject
    assert msg.headers["Mailfold-Stream"] == "MAIL_EVENTS"
    assert msg.headers["Mailfold-Stream-Seq"] == str(ack.seq)
    assert "not a valid event" in msg.headers["Mailfold-Error"]

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}") as client:
        health = await client.get("/healthz")
        metrics = await client.get("/metrics")
        spec = await client.get("/asyncapi.json")
    assert health.status_code == 200
    assert health.json()["checks"] == {"nats": "ok", "consumer": "ok"}
    assert 'mailfold_dead_letters_total{consumer="sender"}' in metrics.text
    assert spec.json()["operations"]["sender:email_composed"]["action"] == "receive"


async def test_metrics_count_what_the_sender_did(
    nats_bus: Bus, mx: MxFactory, sender: SenderFactory, org_id: str
) -> None:
    server = await mx()
    server.handler.rcpt_script["gone@example.org"] = ["550 5.1.1 no such user"]
    await nats_bus.settings(org_id)
    service = await sender({"example.org": server.port})
    await nats_bus.compose(org_id, to=("ann@example.org",))
    await nats_bus.compose(org_id, to=("gone@example.org",))
    await nats_bus.compose(org_id, to=())

    await nats_bus.events(
        org_id,
        lambda es: (
            len([e for e in es if e.event_type in {"email_delivered", "email_bounced"}]) == 2
            and bool(_only(es, EmailRejected))
        ),
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}") as client:
        text = (await client.get("/metrics")).text

    for line in (
        "mailfold_sender_delivered_total ",
        'mailfold_sender_bounced_total{kind="hard",reason="userunknown"} ',
        'mailfold_sender_rejected_total{reason="no_recipients"} ',
        'mailfold_sender_sent_total{transport="crm_servers"} ',
        'mailfold_sender_smtp_seconds_bucket{le="120.0",transport="crm_servers",verdict="delivered"}',
    ):
        assert line in text, line
