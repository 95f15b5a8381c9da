"""IMAP and POP3 over TLS against a real Dovecot with a throwaway CA: IMAPS, POP3S and STARTTLS
each sync; a certificate the service does not trust is a TLS failure and reads nothing."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from tests.certificates import make_certificates
from tests.integration.mailbox.conftest import (
    MessageFactory,
    Org,
    dovecot_folder,
    service_settings,
)

from mailfold.cli.dovecot import MISSING_HINT, Dovecot, dovecot_binary
from mailfold.events import EmailReceived, Module, Source
from mailfold.mailbox.bootstrap import Service, start
from mailfold.runtime import bus, directory
from mailfold.runtime.orgs import create_org


@pytest.fixture(scope="module")
def tls_folder() -> Iterator[Path]:
    folder = dovecot_folder()
    try:
        make_certificates(folder / "tls")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_dovecot(tls_folder: Path) -> Iterator[Dovecot]:
    """A Dovecot of its own with TLS: STARTTLS on the plain ports, IMAPS and POP3S."""
    if dovecot_binary() is None:
        pytest.fail(MISSING_HINT)
    tls = (tls_folder / "tls" / "server.pem", tls_folder / "tls" / "server-key.pem")
    with Dovecot(tls_folder / "dovecot", tls=tls) as server:
        yield server


@pytest.fixture
async def tls_org(js: JetStreamContext, org_id: str, tls_dovecot: Dovecot) -> AsyncIterator[Org]:
    orgs = await bus.kv(js, bus.BUCKET_ORGS)
    created = Org(org_id, await create_org(orgs, org_id), js, tls_dovecot)
    yield created
    for user in created.users:
        await orgs.delete(directory.mailbox_key(org_id, user))


@pytest.fixture
async def trusting_service(
    nats_url: str, tls_folder: Path, js: JetStreamContext
) -> AsyncIterator[Service]:
    """The mailbox service trusting the throwaway CA (MAILFOLD_MAILBOX_CA_FILE)."""
    service = await start(service_settings(nats_url, ca_file=str(tls_folder / "tls" / "ca.pem")))
    yield service
    await service.stop()


@pytest.mark.usefixtures("trusting_service")
@pytest.mark.parametrize(
    ("protocol", "security", "source"),
    [
        ("imap", "tls", Source.IMAP),
        ("imap", "starttls", Source.IMAP),
        ("pop3", "tls", Source.POP3),
        ("pop3", "starttls", Source.POP3),
    ],
)
async def test_mail_is_received_over_tls_and_starttls(
    tls_org: Org, mail: MessageFactory, protocol: str, security: str, source: Source
) -> None:
    await tls_org.record("contact-1", Module.CONTACTS, "bob@customer.example")
    login = await tls_org.mailbox("ann", protocol=protocol, security=security)
    tls_org.dovecot.deliver(login, mail("bob@customer.example", "ann@acme.example", "Secured"))

    (received,) = await tls_org.wait_for(EmailReceived)
    assert received.source is source
    assert received.subject == "Secured"
    assert [r.record_id for r in received.records] == ["contact-1"]
    status = await tls_org.status("ann", "ok")
    assert status.error_kind == ""


@pytest.mark.usefixtures("mailbox_service")  # trusts only the system's CAs
@pytest.mark.parametrize(
    ("protocol", "security"),
    [("imap", "tls"), ("imap", "starttls"), ("pop3", "tls"), ("pop3", "starttls")],
)
async def test_a_certificate_the_service_does_not_trust_is_a_tls_failure(
    tls_org: Org, mail: MessageFactory, protocol: str, security: str
) -> None:
    await tls_org.record("contact-1", Module.CONTACTS, "bob@customer.example")
    login = await tls_org.mailbox("ann", protocol=protocol, security=security)
    tls_org.dovecot.deliver(login, mail("bob@customer.example", "ann@acme.example", "Unread"))

    status = await tls_org.status("ann", "failing")
    assert status.error_kind == "tls"
    assert "certificate" in status.last_error.lower()
    assert [e for e in await tls_org.events() if isinstance(e, EmailReceived)] == []
