"""Bulk sends (one email per recipient, as a campaign) and the record attachment quota, on fakes."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from mailfold.events import (
    AttachmentRef,
    EmailComposed,
    Module,
    Source,
    one_per_recipient,
    trackable,
)
from mailfold.ingest.adapters.memory import (
    MemoryContentStore,
    MemoryDirectory,
    MemoryIdempotency,
    MemoryPublisher,
)
from mailfold.ingest.adapters.usage import MemoryAttachmentUsage
from mailfold.ingest.domain import requests as req
from mailfold.ingest.domain.campaigns import campaign_email_id
from mailfold.ingest.domain.quota import Charge, RecordUsage, apply_charge, charge_for
from mailfold.ingest.domain.validation import Invalid, KeyReused, TooLarge
from mailfold.ingest.service_layer import api, campaigns
from mailfold.ingest.service_layer.ports import Ports
from mailfold.runtime.directory import RecordEntry

ORG = "acme"
MIB = 1024 * 1024
BULK = [
    Source.MASS_EMAIL,
    Source.MASS_EMAIL_FOLLOW_UP,
    Source.MASS_EMAIL_SCHEDULER,
    Source.MULTIPLE,
    Source.AUTORESPONDER,
    Source.AUTORESPONDER_FOLLOW_UP,
    Source.CADENCE,
    Source.MAIL_MERGE,
]


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
    return [e for e in ports.publisher.events if isinstance(e, EmailComposed)]


def cmd(**change: Any) -> req.ComposeEmail:
    body: dict[str, Any] = {
        "source": "mass_email",
        "from": "rep@acme.example",
        "subject": "News",
        "html": '<p><a href="https://acme.example/offer">Offer</a></p>',
    }
    body.update(change)
    return req.compose_from_json(body)


async def records(ports: Ports, *entries: tuple[str, Module, tuple[str, ...]]) -> None:
    for record_id, module, addresses in entries:
        await api.put_record(
            ports, ORG, RecordEntry(record_id=record_id, module=module, addresses=addresses)
        )


def test_exactly_the_bulk_sources_are_sent_one_email_per_recipient() -> None:
    assert {s for s in Source if one_per_recipient(s)} == set(BULK)


@pytest.mark.parametrize("field", ["cc", "bcc"])
@pytest.mark.parametrize("source", BULK)
def test_cc_and_bcc_are_refused_for_bulk_sources_naming_the_field(
    source: Source, field: str
) -> None:
    with pytest.raises(Invalid) as refused:
        cmd(source=source.value, to=["a@x.example"], **{field: ["b@x.example"]})
    assert [e.field for e in refused.value.errors] == [field]


def test_a_bulk_send_needs_a_target_in_to_or_record_ids() -> None:
    with pytest.raises(Invalid) as refused:
        cmd()
    assert [e.field for e in refused.value.errors] == ["to"]
    assert cmd(record_ids=["c1"]).record_ids == ("c1",)


async def test_three_records_two_sharing_an_address_make_two_emails_each_to_one_recipient(
    ports: Ports,
) -> None:
    await records(
        ports,
        ("c1", Module.CONTACTS, ("Ann@X.example", "ann.private@y.example")),
        ("a1", Module.ACCOUNTS, ("ann@x.example",)),
        ("l1", Module.LEADS, ("bob@x.example",)),
    )
    campaign = await campaigns.compose_campaign(ports, ORG, cmd(record_ids=["c1", "a1", "l1"]))

    events = published(ports)
    assert len(events) == 2
    by_to = {e.to: e for e in events}
    ann, bob = by_to[("ann@x.example",)], by_to[("bob@x.example",)]
    assert {(r.module, r.record_id) for r in ann.records} == {
        (Module.ACCOUNTS, "a1"),
        (Module.CONTACTS, "c1"),
    }
    assert [r.record_id for r in bob.records] == ["l1"]
    for event in events:
        assert event.cc == ()
        assert event.bcc == ()
        assert event.campaign_id == campaign.campaign_id
        assert event.email_id == campaign_email_id(campaign.campaign_id, event.to[0])
        assert trackable(event.source, event.transport, len(event.recipients))
    views = {v.recipient: v for v in campaign.view.emails}
    assert views["ann@x.example"].record_ids == ("a1", "c1")
    assert views["ann@x.example"].email_id == ann.email_id
    assert views["bob@x.example"].record_ids == ("l1",)
    assert all(v.status == "accepted" for v in campaign.view.emails)


async def test_addresses_are_deduplicated_case_insensitively_across_to_and_records(
    ports: Ports,
) -> None:
    await records(ports, ("c1", Module.CONTACTS, ("ann@x.example",)))
    campaign = await campaigns.compose_campaign(
        ports,
        ORG,
        cmd(record_ids=["c1"], to=["ANN@x.example", "carl@y.example", "Carl@Y.example"]),
    )
    assert sorted(e.to[0].lower() for e in published(ports)) == [
        "ann@x.example",
        "carl@y.example",
    ]
    assert len(campaign.view.emails) == 2


async def test_a_record_without_an_address_is_answered_refused_and_nothing_is_sent_for_it(
    ports: Ports,
) -> None:
    await records(ports, ("c1", Module.CONTACTS, ()), ("c2", Module.CONTACTS, ("b@x.example",)))
    campaign = await campaigns.compose_campaign(ports, ORG, cmd(record_ids=["c1", "c2"]))
    refused = [v for v in campaign.view.emails if v.status == "refused"]
    assert [(v.email_id, v.record_ids, v.reason) for v in refused] == [
        (None, ("c1",), "no_address")
    ]
    assert [e.to for e in published(ports)] == [("b@x.example",)]


async def test_a_missing_record_is_refused_naming_it(ports: Ports) -> None:
    with pytest.raises(Invalid) as refused:
        await campaigns.compose_campaign(ports, ORG, cmd(record_ids=["nope"]))
    assert [e.field for e in refused.value.errors] == ["record_ids[0]"]
    assert published(ports) == []


async def test_the_same_idempotency_key_answers_the_same_campaign_and_ids(ports: Ports) -> None:
    command = cmd(to=["a@x.example", "b@x.example"])
    first = await campaigns.compose_campaign(
        ports, ORG, command, idempotency_key="k1", fingerprint="f"
    )
    again = await campaigns.compose_campaign(
        ports, ORG, command, idempotency_key="k1", fingerprint="f"
    )
    assert again.replayed
    assert again.view == first.view
    assert len(published(ports)) == 2
    with pytest.raises(KeyReused):
        await campaigns.compose_campaign(
            ports, ORG, command, idempotency_key="k1", fingerprint="other"
        )


async def test_an_unfinished_campaign_retried_with_its_key_publishes_the_same_event_ids(
    ports: Ports,
) -> None:
    command = cmd(to=["a@x.example", "b@x.example"])
    assert isinstance(ports.publisher, MemoryPublisher)
    ports.publisher.down = True
    with pytest.raises(ConnectionError):
        await campaigns.compose_campaign(ports, ORG, command, idempotency_key="k", fingerprint="f")
    ports.publisher.down = False
    done = await campaigns.compose_campaign(
        ports, ORG, command, idempotency_key="k", fingerprint="f"
    )
    assert not done.replayed
    assert {e.email_id for e in published(ports)} == {v.email_id for v in done.view.emails}
    assert len(published(ports)) == 2


def test_a_template_attachment_counts_once_per_record_however_often_it_is_sent() -> None:
    template = [
        AttachmentRef(sha256="a" * 64, size=2 * MIB, name="brochure.pdf", from_template=True)
    ]
    usage = RecordUsage()
    for n in range(10):
        usage = apply_charge(usage, charge_for(f"email-{n}", template))
    assert usage.total == 2 * MIB
    own = apply_charge(usage, Charge(key="email-x", own_bytes=MIB))
    assert own.total == 3 * MIB
    assert apply_charge(own, Charge(key="email-x", own_bytes=MIB)) == own


async def test_a_template_attachment_sent_to_ten_records_counts_once_on_each(
    ports: Ports,
) -> None:
    for n in range(10):
        await records(ports, (f"c{n}", Module.CONTACTS, (f"p{n}@x.example",)))
    template = req.template_from_json(
        "t1",
        {
            "subject": "Brochure",
            "html": "<p>Hi</p>",
            "attachments": [
                {"name": "b.pdf", "content_base64": base64.b64encode(b"%" * (2 * MIB)).decode()}
            ],
        },
    )
    await api.put_template(ports, ORG, template)
    for _ in range(2):
        await campaigns.compose_campaign(
            ports,
            ORG,
            req.compose_from_json(
                {
                    "source": "mass_email",
                    "from": "rep@acme.example",
                    "template_id": "t1",
                    "record_ids": [f"c{n}" for n in range(10)],
                }
            ),
        )
    for n in range(10):
        view = await api.record_view(ports, ORG, f"c{n}")
        assert view["attachments"] == {"used_bytes": 2 * MIB, "quota_bytes": 100 * MIB}


async def test_a_one_off_compose_past_a_records_quota_is_refused_413_naming_the_record(
    ports: Ports,
) -> None:
    await records(ports, ("c1", Module.CONTACTS, ("a@x.example",)))
    await records(ports, ("c2", Module.CONTACTS, ("a@x.example",)))
    assert isinstance(ports.usage, MemoryAttachmentUsage)
    ports.usage.records[(ORG, "c2")] = RecordUsage(emails={"old": 100 * MIB - 10})
    attachment = {"name": "big.bin", "content_base64": base64.b64encode(b"x" * 11).decode()}
    with pytest.raises(TooLarge) as refused:
        await api.compose_email(
            ports,
            ORG,
            req.compose_from_json(
                {
                    "source": "individual",
                    "from": "rep@acme.example",
                    "to": ["a@x.example"],
                    "text": "hi",
                    "attachments": [attachment],
                }
            ),
        )
    assert "'c2'" in refused.value.errors[0].message
    assert published(ports) == []
    # Nothing was kept on the record that had room: the refusal is all or nothing.
    assert (await ports.usage.usage(ORG, "c1")).total == 0


async def test_a_campaign_target_past_its_records_quota_is_refused_and_marked_for_the_sender(
    ports: Ports,
) -> None:
    await records(
        ports, ("c1", Module.CONTACTS, ("a@x.example",)), ("c2", Module.CONTACTS, ("b@x.example",))
    )
    assert isinstance(ports.usage, MemoryAttachmentUsage)
    ports.usage.records[(ORG, "c2")] = RecordUsage(emails={"old": 100 * MIB})
    attachment = {"name": "f.txt", "content_base64": base64.b64encode(b"data").decode()}
    campaign = await campaigns.compose_campaign(
        ports, ORG, cmd(record_ids=["c1", "c2"], attachments=[attachment])
    )
    refused = [v for v in campaign.view.emails if v.status == "refused"]
    assert [(v.recipient, v.reason) for v in refused] == [
        ("b@x.example", "record_attachment_quota")
    ]
    assert refused[0].detail is not None
    assert "'c2'" in refused[0].detail
    marks = {e.to[0]: e.over_quota_record for e in published(ports)}
    assert marks == {"a@x.example": None, "b@x.example": "c2"}
    assert (await ports.usage.usage(ORG, "c1")).total == 4


async def test_an_email_that_could_not_be_published_gives_its_bytes_back(ports: Ports) -> None:
    await records(ports, ("c1", Module.CONTACTS, ("a@x.example",)))
    assert isinstance(ports.publisher, MemoryPublisher)
    ports.publisher.down = True
    body = {
        "source": "individual",
        "from": "rep@acme.example",
        "to": ["a@x.example"],
        "text": "hi",
        "attachments": [{"name": "f.txt", "content_base64": base64.b64encode(b"12345").decode()}],
    }
    with pytest.raises(ConnectionError):
        await api.compose_email(ports, ORG, req.compose_from_json(body))
    assert (await ports.usage.usage(ORG, "c1")).total == 0
    ports.publisher.down = False
    await api.compose_email(ports, ORG, req.compose_from_json(body))
    assert (await ports.usage.usage(ORG, "c1")).total == 5
