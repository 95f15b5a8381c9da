"""The record's 100 MB attachment quota through the ingest API and SMTP server, on real NATS."""

from __future__ import annotations

import base64
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import httpx
import pytest

from mailfold.events import EmailComposed
from mailfold.ingest.bootstrap import IngestService

from .conftest import ReadEvents

pytestmark = pytest.mark.timeout(240)
MIB = 1024 * 1024


def _attachment(name: str, size: int, fill: bytes = b"\x00") -> dict[str, str]:
    return {"name": name, "content_base64": base64.b64encode(fill * size).decode()}


async def _usage(api: httpx.AsyncClient, org_id: str, record_id: str) -> int:
    r = await api.get(f"/v1/orgs/{org_id}/records/{record_id}")
    assert r.status_code == 200, r.text
    attachments: dict[str, int] = r.json()["attachments"]
    assert attachments["quota_bytes"] == 100 * MIB
    return attachments["used_bytes"]


async def _record(api: httpx.AsyncClient, org_id: str, record_id: str, *addresses: str) -> None:
    r = await api.put(
        f"/v1/orgs/{org_id}/records/{record_id}",
        json={"module": "Contacts", "addresses": list(addresses)},
    )
    assert r.status_code == 200, r.text


def _with_attachment(sender: str, to: str, size: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = "Signed contract"
    msg["Message-ID"] = "<contract-1@x.example>"
    msg.set_content("Attached.")
    msg.add_attachment(b"%" * size, maintype="application", subtype="pdf", filename="c.pdf")
    return msg.as_bytes()


async def test_a_compose_past_100_mb_on_one_record_is_refused_naming_it_and_inbound_is_counted(
    ingest: IngestService, api: httpx.AsyncClient, org_id: str, events: ReadEvents
) -> None:
    await _record(api, org_id, "c1", "ann@x.example")
    await _record(api, org_id, "c2", "bob@x.example")
    body: dict[str, Any] = {"source": "individual", "from": "rep@acme.example", "text": "Files"}
    for n in range(10):
        ten = _attachment(f"part{n}.bin", 10 * MIB)
        r = await api.post(
            f"/v1/orgs/{org_id}/emails",
            json={**body, "to": ["ann@x.example"]} | {"attachments": [ten]},
        )
        assert r.status_code == 202, r.text
    assert await _usage(api, org_id, "c1") == 100 * MIB

    over = await api.post(
        f"/v1/orgs/{org_id}/emails",
        json={
            **body,
            "to": ["ann@x.example", "bob@x.example"],
            "attachments": [_attachment("one-more.txt", 1024)],
        },
    )

    assert over.status_code == 413
    assert over.headers["content-type"] == "application/problem+json"
    (error,) = over.json()["errors"]
    assert error["field"] == "attachments"
    assert "'c1'" in error["message"]
    assert "100 MB" in error["message"]
    # Refused as a whole: nothing published for it, nothing kept on the record that had room.
    assert len([e for e in await events(org_id) if isinstance(e, EmailComposed)]) == 10
    assert await _usage(api, org_id, "c2") == 0

    # Inbound mail is never refused for the quota, but it is counted.
    raw = _with_attachment("ann@x.example", "rep@acme.example", 2 * MIB)
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=ingest.smtp_port) as client:
        await client.sendmail("ann@x.example", [f"in+{org_id}+rep@in.acme.example"], raw)
    assert await _usage(api, org_id, "c1") == 102 * MIB


async def test_a_template_attachment_sent_to_ten_records_counts_once_per_record(
    api: httpx.AsyncClient, org_id: str
) -> None:
    template = {
        "subject": "Brochure",
        "html": "<p>Hi</p>",
        "attachments": [_attachment("brochure.pdf", 2 * MIB, b"B")],
    }
    assert (await api.put(f"/v1/orgs/{org_id}/templates/b1", json=template)).status_code == 200
    ids = [f"r{n}" for n in range(10)]
    for n, rid in enumerate(ids):
        await _record(api, org_id, rid, f"p{n}@x.example")
    for _ in range(3):
        r = await api.post(
            f"/v1/orgs/{org_id}/emails",
            json={
                "source": "mass_email",
                "from": "rep@acme.example",
                "template_id": "b1",
                "record_ids": ids,
            },
        )
        assert r.status_code == 202, r.text
        assert len(r.json()["emails"]) == 10
    for rid in ids:
        assert await _usage(api, org_id, rid) == 2 * MIB


async def test_dropbox_mail_with_attachments_is_counted_on_its_records(
    ingest: IngestService, api: httpx.AsyncClient, org_id: str
) -> None:
    r = await api.put(f"/v1/orgs/{org_id}/settings", json={"dropbox_senders": ["rep@acme.example"]})
    assert r.status_code == 200, r.text
    await _record(api, org_id, "l1", "lead@x.example")
    raw = _with_attachment("rep@acme.example", "lead@x.example", 3 * MIB)
    for _ in range(2):  # the same copy twice (a retry) counts once
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=ingest.smtp_port) as client:
            await client.sendmail("rep@acme.example", [f"dropbox+{org_id}@in.example"], raw)
    assert await _usage(api, org_id, "l1") == 3 * MIB
