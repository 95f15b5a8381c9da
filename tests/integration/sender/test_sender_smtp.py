"""Direct delivery's connection handling: one connection for many emails, and a cached
connection the server has since closed is replaced without anyone noticing."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from mailfold.sender.adapters.dns import MxResolver
from mailfold.sender.adapters.smtp import ConnectionCache, DirectMailer
from mailfold.sender.domain.addresses import parse_mailbox
from mailfold.sender.domain.delivery import AttemptVerdict, SmtpAttempt
from mailfold.sender.domain.routes import Hop, Routes
from mailfold.sender.service_layer.ports import Envelope

if TYPE_CHECKING:
    from tests.integration.sender.conftest import MxFactory

MESSAGE = b"From: a@crm.test\r\nSubject: hi\r\n\r\nHello\r\n"


def _mailer(port: int, cache: ConnectionCache) -> DirectMailer:
    routes = Routes({"example.org": Hop("127.0.0.1", port)})
    return DirectMailer(routes, MxResolver(), helo="sender.test", cache=cache)


async def _send(mailer: DirectMailer, *users: str) -> list[SmtpAttempt]:
    seen: list[SmtpAttempt] = []

    async def before_data(_: Any) -> bool:
        return True

    async def after(_: Envelope, attempt: SmtpAttempt) -> None:
        seen.append(attempt)

    envelopes = [
        Envelope(f"bounce+{u}@mail.test", parse_mailbox(f"{u}@example.org"), MESSAGE) for u in users
    ]
    await mailer.deliver("example.org", envelopes, before_data, after)
    return seen


async def test_emails_to_one_server_share_a_cached_connection(mx: MxFactory) -> None:
    server = await mx()
    mailer = _mailer(server.port, ConnectionCache(idle_s=30, max_uses=3))
    try:
        for user in ("ann", "bob", "cat", "dan", "eve"):
            (attempt,) = await _send(mailer, user)
            assert attempt.verdict is AttemptVerdict.DELIVERED
    finally:
        await mailer.close()
    assert len(server.handler.received) == 5
    assert server.handler.connections == 2  # three uses, then a fresh connection


async def test_without_the_cache_every_email_has_its_own_connection(mx: MxFactory) -> None:
    server = await mx()
    mailer = _mailer(server.port, ConnectionCache(max_uses=1))
    try:
        await _send(mailer, "ann")
        await _send(mailer, "bob")
    finally:
        await mailer.close()
    assert server.handler.connections == 2


async def test_a_cached_connection_the_server_timed_out_is_replaced(mx: MxFactory) -> None:
    server = await mx(idle_timeout=0.3)
    mailer = _mailer(server.port, ConnectionCache(idle_s=30, max_uses=100))
    try:
        (first,) = await _send(mailer, "ann")
        await asyncio.sleep(1.0)  # the server closes the idle connection
        (second,) = await _send(mailer, "bob")
    finally:
        await mailer.close()
    assert (first.verdict, second.verdict) == (AttemptVerdict.DELIVERED, AttemptVerdict.DELIVERED)
    assert server.handler.connections == 2


async def test_a_server_closing_after_a_refusal_gets_the_next_recipient_on_a_new_connection(
    mx: MxFactory,
) -> None:
    server = await mx()
    server.handler.rcpt_script["ann@example.org"] = ["421 4.3.2 closing, too busy"]
    mailer = _mailer(server.port, ConnectionCache(idle_s=30, max_uses=100))
    try:
        first, second = await _send(mailer, "ann", "bob")
    finally:
        await mailer.close()
    assert (first.verdict, first.code) == (AttemptVerdict.DEFERRED, 421)
    assert second.verdict is AttemptVerdict.DELIVERED
    assert server.handler.connections == 2
