"""Opportunistic STARTTLS: used when a server offers it, and a broken offer does not stop mail."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mailfold.sender.adapters.dns import MxResolver
from mailfold.sender.adapters.smtp import DirectMailer
from mailfold.sender.domain.addresses import parse_mailbox
from mailfold.sender.domain.delivery import AttemptVerdict, SmtpAttempt
from mailfold.sender.domain.routes import Hop, Routes
from mailfold.sender.service_layer.ports import Envelope

if TYPE_CHECKING:
    from tests.integration.sender.conftest import MxFactory

MESSAGE = b"From: a@crm.test\r\nTo: ann@example.org\r\nSubject: hi\r\n\r\nHello\r\n"


@pytest.fixture
def server_context(tmp_path: Path) -> ssl.SSLContext:
    """A server TLS context with a throwaway self-signed certificate."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=mx.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def _deliver(port: int) -> SmtpAttempt:
    mailer = DirectMailer(
        Routes({"example.org": Hop("127.0.0.1", port)}), MxResolver(), helo="sender.test"
    )
    seen: list[SmtpAttempt] = []

    async def before_data(_: Any) -> bool:
        return True

    async def after(_: Envelope, attempt: SmtpAttempt) -> None:
        seen.append(attempt)

    envelope = Envelope("bounce@mail.test", parse_mailbox("ann@example.org"), MESSAGE)
    await mailer.deliver("example.org", [envelope], before_data, after)
    (attempt,) = seen
    return attempt


async def test_starttls_is_used_when_the_server_offers_it(
    mx: MxFactory, server_context: ssl.SSLContext
) -> None:
    server = await mx(tls_context=server_context)

    attempt = await _deliver(server.port)

    assert attempt.verdict is AttemptVerdict.DELIVERED
    (received,) = server.handler.received
    assert received.tls


async def test_a_failing_starttls_falls_back_to_a_clear_connection(
    mx: MxFactory, server_context: ssl.SSLContext
) -> None:
    # The server wants a client certificate the sender does not have: the handshake fails.
    server_context.verify_mode = ssl.CERT_REQUIRED
    server = await mx(tls_context=server_context)

    attempt = await _deliver(server.port)

    assert attempt.verdict is AttemptVerdict.DELIVERED
    (received,) = server.handler.received
    assert not received.tls


async def test_a_server_without_starttls_gets_the_mail_in_the_clear(mx: MxFactory) -> None:
    server = await mx()

    attempt = await _deliver(server.port)

    assert attempt.verdict is AttemptVerdict.DELIVERED
    assert not server.handler.received[0].tls
