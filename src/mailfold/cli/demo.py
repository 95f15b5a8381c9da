"""The demo org `mailfold dev` creates on first start, seeded through the public interfaces."""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import smtplib
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailfold.cli.dev import DevStack

DEMO_ORG = "demo"
MAIL_DOMAIN = "mailfold.localhost"
REP = "rep@demo.example"

RECORDS: dict[str, dict[str, Any]] = {
    "contact-ann": {"module": "Contacts", "addresses": ["ann@example.com", "ann.home@example.net"]},
    "lead-bob": {"module": "Leads", "addresses": ["bob@example.org", "bob@work.example"]},
    "account-acme": {
        "module": "Accounts",
        "addresses": ["info@acme.example", "ann.home@example.net"],
    },
    "lead-nobody": {"module": "Leads", "addresses": ["nobody@example.com"]},
}


def _http(method: str, url: str, token: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - our own loopback URL
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(
            f"{method} {url} -> {exc.code}: {exc.read().decode(errors='replace')}"
        ) from exc
    return json.loads(raw) if raw else {}


def _smtp(port: int, mail_from: str, rcpt: str, msg: EmailMessage) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail(mail_from, [rcpt], msg.as_bytes())


def _message(sender: str, to: str, subject: str, body: str, cc: str | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(datetime.now(UTC))
    msg["Message-ID"] = email.utils.make_msgid(domain="demo.example")
    msg.set_content(body)
    return msg


def _create_org(stack: DevStack) -> str | None:
    from mailfold.runtime import bus
    from mailfold.runtime.orgs import OrgExists, create_org

    async def create() -> str | None:
        nc = await bus.connect(
            stack.nats_url, "mailfold-dev", reconnect=False, auth=stack.admin_auth
        )
        try:
            bucket = await bus.kv(nc.jetstream(), bus.BUCKET_ORGS)
            try:
                return await create_org(bucket, DEMO_ORG)
            except OrgExists:
                return None
        finally:
            await bus.close(nc)

    return asyncio.run(create())


def _incoming(stack: DevStack) -> dict[str, Any]:
    """The demo mailbox's IMAP side, where `make run` started a Dovecot for it."""
    if stack.dovecot_imap is None:
        return {}
    from mailfold.cli.dev import DEMO_MAILBOX_PASSWORD, DEMO_MAILBOX_USER

    return {
        "incoming": {
            "protocol": "imap",
            "host": "127.0.0.1",
            "port": stack.dovecot_imap,
            "security": "none",
            "username": DEMO_MAILBOX_USER,
            "secret": DEMO_MAILBOX_PASSWORD,
        }
    }


def _seed(stack: DevStack, token: str, org: str = DEMO_ORG) -> dict[str, str]:
    """Settings, records, a mailbox, and one email per channel; returns email ids by name."""
    api = f"http://127.0.0.1:{stack.ports['ingest_http']}/v1/orgs/{org}"
    _http(
        "PUT",
        f"{api}/settings",
        token,
        {
            "time_zone": "Europe/Berlin",
            "mass_email_daily_limit": 500,
            "blacklisted_domains": ["spam.example"],
            "dropbox_senders": [REP],
            "mail_domain": MAIL_DOMAIN,
        },
    )
    for record_id, record in RECORDS.items():
        _http("PUT", f"{api}/records/{record_id}", token, record)
    _http(
        "PUT",
        f"{api}/mailboxes/rep",
        token,
        {
            "smtp_host": "127.0.0.1",
            "smtp_port": stack.ports["sink_smtp"],
            "username": "rep",
            "secret": "demo-secret",
            "security": "none",
            "email": REP,
            **_incoming(stack),
        },
    )
    html = (
        '<html><body><p>Hi Ann, here is our <a href="https://example.com/pricing">pricing</a>'
        ' and the <a href="https://example.com/docs">docs</a>.</p></body></html>'
    )
    emails: dict[str, str] = {}
    compose = {
        "tracked": {"source": "individual", "from": REP, "to": ["ann@example.com"], "subject": "Our pricing", "html": html},
        "mailbox": {"source": "individual", "transport": "integrated_mailbox", "mailbox_user": "rep", "from": REP, "to": ["bob@example.org"], "subject": "Sent through my own mailbox", "text": "Hello Bob"},
        "bounce": {"source": "workflow_alert", "from": REP, "to": ["nobody@example.com"], "subject": "This one bounces", "text": "Nobody reads this."},
    }  # fmt: skip
    for name, body in compose.items():
        emails[name] = str(_http("POST", f"{api}/emails", token, body)["email_id"])
    # A mass email reaches each record alone: one tracked email per recipient, one campaign.
    newsletter = {"source": "mass_email", "from": REP, "record_ids": ["contact-ann", "lead-bob"], "subject": "Spring newsletter", "html": html}  # fmt: skip
    emails["newsletter"] = str(_http("POST", f"{api}/emails", token, newsletter)["campaign_id"])
    smtp_port = stack.ports["ingest_smtp"]
    _smtp(
        smtp_port,
        REP,
        f"dropbox+{org}@{MAIL_DOMAIN}",
        _message(
            REP, "ann@example.com", "Notes from our call", "Sent from my phone, BCC to the CRM."
        ),
    )
    _smtp(
        smtp_port,
        "ann.home@example.net",
        f"in+{org}@{MAIL_DOMAIN}",
        _message(
            "ann.home@example.net", REP, "Question about the invoice", "Hi, a quick question."
        ),
    )
    return emails


def _tracking_urls(folder: Path, subject: str) -> tuple[str, str] | None:
    """The pixel and first tracked link of the message with this subject in a sink folder."""
    import re

    for path in sorted(folder.glob("*.eml")) if folder.exists() else []:
        text = path.read_bytes().decode(errors="replace").replace("=\r\n", "").replace("=\n", "")
        text = text.replace("=3D", "=")
        if f"Subject: {subject}" not in text:
            continue
        pixel = re.search(r"(http://[^\"'\s]+/o/[A-Za-z0-9_.-]+\.gif)", text)
        link = re.search(r"(http://[^\"'\s]+/c/[A-Za-z0-9_.-]+)", text)
        if pixel and link:
            return pixel.group(1), link.group(1)
    return None


def _follow_tracking(stack: DevStack, timeout: float = 30.0) -> bool:
    """Read the tracked demo mail as its recipients would.

    Ann opens the individual email and follows its link, and opens the newsletter; Bob follows
    the newsletter's link (a click implies an open).
    """
    sink = stack.data / "sink"
    wanted = (
        ("ann@example.com", "Our pricing", (0, 1)),
        ("ann@example.com", "Spring newsletter", (0,)),
        ("bob@example.org", "Spring newsletter", (1,)),
    )
    started = time.monotonic()
    deadline = started + timeout
    found: dict[int, tuple[str, str]] = {}
    while len(found) < len(wanted) and time.monotonic() < deadline:
        for n, (address, subject, _) in enumerate(wanted):
            urls = found.get(n) or _tracking_urls(sink / address, subject)
            if urls is not None:
                found[n] = urls
        if len(found) < len(wanted):
            time.sleep(0.5)
    # A person reads mail some seconds after it arrives; a click within the first seconds after
    # sending is what link scanners do, and the tracker flags it.
    time.sleep(max(0.0, 6.0 - (time.monotonic() - started)))
    browser = {
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
    }
    for n, (_, _, which) in enumerate(wanted):
        if n not in found:
            continue
        for url in (found[n][i] for i in which):
            request = urllib.request.Request(url, headers=browser)  # noqa: S310
            try:
                with urllib.request.urlopen(request, timeout=5):  # noqa: S310
                    pass
            except urllib.error.URLError:
                pass  # the redirect target (example.com) is not reachable from here
    return len(found) == len(wanted)


def seed_org(stack: DevStack, token: str, org: str) -> dict[str, str]:
    """The demo's records and mail for any org (the tracked mail read and clicked too)."""
    emails = _seed(stack, token, org)
    _follow_tracking(stack)
    return emails


def seed_demo(stack: DevStack) -> list[str]:
    """Create the demo org once (its token printed once and kept in `.data/demo-token`)."""
    token_file = stack.data / "demo-token"
    token = _create_org(stack)
    lines = [""]
    if token is not None:
        token_file.write_text(token + "\n")
        os.chmod(token_file, 0o600)
        lines.append(f"demo org {DEMO_ORG!r} created; its API token (shown once): {token}")
        emails = _seed(stack, token)
        (stack.data / "demo-emails.json").write_text(json.dumps(emails, indent=2) + "\n")
        _follow_tracking(stack)
    elif not token_file.exists():
        lines.append(f"demo org {DEMO_ORG!r} exists but {token_file} is gone; rotate with:")
        lines.append(f"  {Path(sys.executable).parent / 'mailfold'} org create {DEMO_ORG} --rotate")
        return lines
    emails_file = stack.data / "demo-emails.json"
    emails = json.loads(emails_file.read_text()) if emails_file.exists() else {}
    query = f"http://127.0.0.1:{stack.ports['projector_http']}/v1/orgs/{DEMO_ORG}"
    data = stack.data
    lines.append(f"  (the token is kept in {token_file})")
    lines.append("")
    lines.append("try (in another terminal, from this folder):")
    lines.append(f"  TOKEN=$(cat {token_file})")
    lines.append(
        f'  curl -s -H "Authorization: Bearer $TOKEN" "{query}/records/contact-ann/emails?filter=all" | python3 -m json.tool'
    )
    if "tracked" in emails:
        lines.append(
            f'  curl -s -H "Authorization: Bearer $TOKEN" "{query}/emails/{emails["tracked"]}" | python3 -m json.tool'
        )
        cli = Path(sys.executable).parent / "mailfold"
        lines.append(f"  MAILFOLD_DATA_DIR={data} {cli} audit {emails['bounce']}")
    if "newsletter" in emails:
        lines.append(
            f'  curl -s -H "Authorization: Bearer $TOKEN" "{query}/campaigns/{emails["newsletter"]}" | python3 -m json.tool'
        )
    ui = f"http://127.0.0.1:{stack.ports['projector_http']}/ui/orgs/{DEMO_ORG}/records"
    lines.append("")
    lines.append("the records' pages in a browser (sign in with the demo token):")
    lines.extend(f"  {ui}/{record_id}" for record_id in RECORDS)
    return lines
