"""The compose and directory handlers, on in-memory ports."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import msgspec
import pytest

from mailfold.events import EmailComposed, Module, RecordRef
from mailfold.ingest.adapters.memory import (
    MemoryContentStore,
    MemoryDirectory,
    MemoryIdempotency,
    MemoryPublisher,
    PublishFailed,
)
from mailfold.ingest.adapters.usage import MemoryAttachmentUsage
from mailfold.ingest.domain import requests as req
from mailfold.ingest.domain.validation import Invalid, KeyReused, NotFound, TooLarge
from mailfold.ingest.service_layer import api
from mailfold.ingest.service_layer.ports import Ports
from mailfold.runtime.directory import (
    IncomingSettings,
    MailboxSettings,
    MailboxStatus,
    RecordEntry,
)

ORG = "acme"


@pytest.fixture
def ports() -> Ports:
    return Ports(
        publisher=MemoryPublisher(),
        content=MemoryContentStore(),
        directory=MemoryDirectory([ORG]),
        idempotency=MemoryIdempotency(),
        usage=MemoryAttachmentUsage(),
    )


def published(ports: Ports) -> list[EmailComposed]:
    assert isinstance(ports.publisher, MemoryPublisher)
    events = ports.publisher.events
    assert all(isinstance(e, EmailComposed) for e in events)
    return events  # type: ignore[return-value]


def compose_cmd(**change: Any) -> req.ComposeEmail:
    body: dict[str, Any] = {
        "source": "individual",
        "from": "rep@acme.example",
        "to": ["bob@x.example"],
        "html": "<p>Hi</p>",
    }
    body.update(change)
    return req.compose_from_json({k: v for k, v in body.items() if v is not None})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_compose_publishes_content_references_and_matched_records(ports: Ports) -> None:
    await api.put_record(
        ports,
        ORG,
        RecordEntry(record_id="c1", module=Module.CONTACTS, addresses=("Bob@X.example",)),
    )
    await api.put_record(
        ports,
        ORG,
        RecordEntry(record_id="c2", module=Module.CONTACTS, addresses=("bob@x.example",)),
    )
    composed = await api.compose_email(
        ports,
        ORG,
        compose_cmd(text="Hi", attachments=[{"name": "a.txt", "content_base64": b64(b"A")}]),
    )
    (event,) = published(ports)
    assert event.email_id == composed.email_id
    assert event.event_id == api.composed_event_id(composed.email_id)
    assert event.html is not None
    assert event.text is not None
    assert event.attachments[0].name == "a.txt"
    assert not event.attachments[0].from_template
    assert {r.record_id for r in event.records} == {"c1", "c2"}
    assert isinstance(ports.content, MemoryContentStore)
    assert ports.content.objects[event.attachments[0].sha256] == b"A"


async def test_given_record_ids_must_exist(ports: Ports) -> None:
    await api.put_record(ports, ORG, RecordEntry(record_id="d1", module=Module.DEALS))
    composed = await api.compose_email(ports, ORG, compose_cmd(record_ids=["d1"]))
    (event,) = published(ports)
    assert event.records == (RecordRef(record_id="d1", module=Module.DEALS),)
    assert composed.email_id == event.email_id
    with pytest.raises(Invalid) as caught:
        await api.compose_email(ports, ORG, compose_cmd(record_ids=["d1", "ghost"]))
    assert [e.field for e in caught.value.errors] == ["record_ids[1]"]


async def test_template_content_and_attachments_are_referenced_not_copied(ports: Ports) -> None:
    template = await api.put_template(
        ports,
        ORG,
        req.template_from_json(
            "welcome",
            {
                "subject": "Welcome",
                "html": "<p>Welcome</p>",
                "attachments": [{"name": "guide.pdf", "content_base64": b64(b"%PDF")}],
            },
        ),
    )
    assert isinstance(ports.content, MemoryContentStore)
    stored = ports.content.puts
    for i in range(5):
        await api.compose_email(
            ports, ORG, compose_cmd(html=None, to=[f"c{i}@x.example"], template_id="welcome")
        )
    assert ports.content.puts == stored  # nothing stored again
    events = published(ports)
    assert len(events) == 5
    for event in events:
        assert event.subject == "Welcome"
        assert event.html == template.html
        assert event.attachments == template.attachments
        assert event.attachments[0].from_template


async def test_an_unknown_template_is_named(ports: Ports) -> None:
    with pytest.raises(Invalid) as caught:
        await api.compose_email(ports, ORG, compose_cmd(template_id="ghost"))
    assert [e.field for e in caught.value.errors] == ["template_id"]


async def test_template_attachments_count_towards_the_ten_mib_limit(ports: Ports) -> None:
    three = b64(b"t" * (3 * req.MIB))
    await api.put_template(
        ports,
        ORG,
        req.template_from_json(
            "heavy",
            {"attachments": [{"name": f"t{i}", "content_base64": three} for i in range(3)]},
        ),
    )
    extra = [{"name": "own", "content_base64": b64(b"o" * (2 * req.MIB))}]
    with pytest.raises(TooLarge) as caught:
        await api.compose_email(ports, ORG, compose_cmd(template_id="heavy", attachments=extra))
    assert [e.field for e in caught.value.errors] == ["attachments"]
    assert published(ports) == []


async def test_integrated_mailbox_mail_needs_a_configured_mailbox(ports: Ports) -> None:
    cmd = compose_cmd(transport="integrated_mailbox", mailbox_user="alice")
    with pytest.raises(Invalid) as caught:
        await api.compose_email(ports, ORG, cmd)
    assert [e.field for e in caught.value.errors] == ["mailbox_user"]
    await api.put_mailbox(
        ports, ORG, "alice", MailboxSettings(smtp_host="smtp.x", username="a", secret="s")
    )
    await api.compose_email(ports, ORG, cmd)
    (event,) = published(ports)
    assert event.mailbox_user == "alice"


async def test_the_same_idempotency_key_gives_the_same_email_and_one_event(ports: Ports) -> None:
    cmd = compose_cmd()
    first = await api.compose_email(ports, ORG, cmd, idempotency_key="k1", fingerprint="f")
    again = await api.compose_email(ports, ORG, cmd, idempotency_key="k1", fingerprint="f")
    assert again.email_id == first.email_id
    assert again.replayed
    assert not first.replayed
    assert len(published(ports)) == 1


async def test_racing_requests_with_one_key_agree_on_one_email(ports: Ports) -> None:
    cmd = compose_cmd()
    results = await asyncio.gather(
        *(
            api.compose_email(ports, ORG, cmd, idempotency_key="race", fingerprint="f")
            for _ in range(5)
        )
    )
    assert len({r.email_id for r in results}) == 1
    assert len(published(ports)) == 1


async def test_a_key_reused_with_another_payload_is_refused(ports: Ports) -> None:
    await api.compose_email(ports, ORG, compose_cmd(), idempotency_key="k", fingerprint="one")
    with pytest.raises(KeyReused) as caught:
        await api.compose_email(ports, ORG, compose_cmd(), idempotency_key="k", fingerprint="two")
    assert caught.value.status == 422
    assert len(published(ports)) == 1


async def test_a_retry_after_a_failed_publish_publishes_the_same_email(ports: Ports) -> None:
    assert isinstance(ports.publisher, MemoryPublisher)
    ports.publisher.down = True
    with pytest.raises(PublishFailed):
        await api.compose_email(ports, ORG, compose_cmd(), idempotency_key="k", fingerprint="f")
    ports.publisher.down = False
    retried = await api.compose_email(
        ports, ORG, compose_cmd(), idempotency_key="k", fingerprint="f"
    )
    (event,) = published(ports)
    assert event.email_id == retried.email_id
    assert not retried.replayed


async def test_keys_are_per_org(ports: Ports) -> None:
    assert isinstance(ports.directory, MemoryDirectory)
    ports.directory.orgs.add("other")
    a = await api.compose_email(ports, ORG, compose_cmd(), idempotency_key="k", fingerprint="f")
    b = await api.compose_email(ports, "other", compose_cmd(), idempotency_key="k", fingerprint="f")
    assert a.email_id != b.email_id


async def test_deleting_an_unknown_record_is_not_found(ports: Ports) -> None:
    with pytest.raises(NotFound):
        await api.delete_record(ports, ORG, "ghost")


async def test_mailbox_answers_never_hold_the_secret(ports: Ports) -> None:
    mailbox = MailboxSettings(smtp_host="smtp.x", username="u", secret="hunter2-secret")
    shown = await api.put_mailbox(ports, ORG, "alice", mailbox)
    assert "hunter2-secret" not in repr(shown)
    assert "secret" not in msgspec.to_builtins(shown)
    assert await api.get_mailbox(ports, ORG, "alice") == shown
    assert "hunter2-secret" not in repr(mailbox)


async def test_a_mailbox_shows_its_sync_state_and_never_its_incoming_secret(ports: Ports) -> None:
    assert isinstance(ports.directory, MemoryDirectory)
    incoming = IncomingSettings(
        protocol="imap", host="imap.x", port=993, username="ann", secret="imap-secret-42"
    )
    mailbox = MailboxSettings(smtp_host="smtp.x", username="u", secret="s", incoming=incoming)
    shown = await api.put_mailbox(ports, ORG, "alice", mailbox)
    assert "imap-secret-42" not in repr(shown)
    assert "imap-secret-42" not in msgspec.json.encode(shown).decode()
    assert msgspec.to_builtins(shown)["sync"] == {
        "state": "pending",
        "error_kind": "",
        "last_error": "",
        "last_sync_at": None,
        "updated_at": None,
    }
    ports.directory.mailbox_statuses[(ORG, "alice")] = MailboxStatus(
        state="failing",
        error_kind="auth",
        last_error="[AUTHENTICATIONFAILED] Authentication failed.",
    )
    got = msgspec.to_builtins(await api.get_mailbox(ports, ORG, "alice"))
    assert got["sync"]["state"] == "failing"
    assert got["sync"]["error_kind"] == "auth"
    assert "imap-secret-42" not in repr(got)
