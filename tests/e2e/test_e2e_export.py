"""`mailfold export` of an org whose composed, BCC-dropbox and received mail carry attachments."""

from __future__ import annotations

import asyncio
import base64
import csv
import smtplib
import time
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.timeout(300)


def _with_attachment(sender: str, to: str, subject: str, name: str, data: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@export.example>"
    msg.set_content("See the attachment.")
    msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes()


def _smtp(port: int, mail_from: str, rcpt: str, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(mail_from, [rcpt], raw)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


async def test_export_writes_the_attachments_of_composed_dropbox_and_received_mail(
    stack: Any, tmp_path: Path
) -> None:
    n = uuid.uuid4().hex[:8]
    rep = f"rep.{n}@export.example"
    contact = f"cara.{n}@example.com"
    org = f"x{n}"
    token = stack.cli("org", "create", org).stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    base = f"{stack.ingest}/v1/orgs/{org}"
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        r = await client.put(f"{base}/settings", json={"dropbox_senders": [rep]})
        assert r.status_code == 200, r.text
        r = await client.put(
            f"{base}/records/c1", json={"module": "Contacts", "addresses": [contact]}
        )
        assert r.status_code == 200, r.text
        composed = await client.post(
            f"{base}/emails",
            json={
                "source": "mass_email",
                "from": rep,
                "record_ids": ["c1"],
                "subject": "Offer",
                "text": "Attached.",
                "attachments": [
                    {
                        "name": "offer.pdf",
                        "content_base64": base64.b64encode(b"%PDF offer").decode(),
                    }
                ],
            },
        )
        assert composed.status_code == 202, composed.text
    await asyncio.to_thread(
        _smtp,
        stack.smtp_port,
        rep,
        f"dropbox+{org}@mailfold.localhost",
        _with_attachment(rep, contact, "Notes", "notes.txt", b"call notes"),
    )
    await asyncio.to_thread(
        _smtp,
        stack.smtp_port,
        contact,
        f"in+{org}@mailfold.localhost",
        _with_attachment(contact, rep, "Signed", "signed.pdf", b"%PDF signed"),
    )

    out = tmp_path / "backup"
    deadline = time.monotonic() + 60
    while True:
        done = await asyncio.to_thread(stack.cli, "export", org, "--out", str(out))
        rows = _read_csv(out / "emails.csv")
        if len(rows) >= 3 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)

    assert "exported 3 emails and 3 attachments" in done.stdout
    by_source = {r["source"]: r for r in rows}
    assert set(by_source) == {"Mass Email", "BCC Dropbox", "External"}
    expected = {
        "Mass Email": b"%PDF offer",
        "BCC Dropbox": b"call notes",
        "External": b"%PDF signed",
    }
    for source, content in expected.items():
        row = by_source[source]
        (path,) = row["attachments"].split(";")
        assert path.startswith(f"attachments/{row['email_id']}/")
        assert (out / path).read_bytes() == content
