"""SMTP with aiosmtplib: direct delivery to a domain's exchangers, and submission with AUTH.

Direct delivery opens one connection per domain and runs one transaction per envelope on it
(VERP gives each recipient its own return path). STARTTLS is opportunistic: used when offered,
certificates not checked (RFC 7435), and a failed handshake falls back to a clear connection.
Every outcome becomes an `SmtpAttempt` carrying the server's own reply; nothing raises for a server's
answer or a network failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectResponseError,
    SMTPException,
    SMTPResponse,
    SMTPResponseException,
)

from mailfold.runtime.directory import MailboxSettings
from mailfold.sender import metrics
from mailfold.sender.adapters.dns import DnsUnavailable, DomainNotFound, MxResolver, NullMx
from mailfold.sender.domain.addresses import Mailbox
from mailfold.sender.domain.delivery import (
    SKIPPED,
    STATUS_CONNECTION_LOST,
    STATUS_DNS_TEMPORARY,
    STATUS_NO_ANSWER,
    STATUS_NO_SUCH_DOMAIN,
    STATUS_NULL_MX,
    SmtpAttempt,
    failure,
    reply,
)
from mailfold.sender.domain.routes import DEFAULT_SMTP_PORT, Hop, Routes
from mailfold.sender.service_layer.ports import AfterAttempt, BeforeData, Envelope

_QUIT_TIMEOUT: Final = 5.0
_NETWORK_ERRORS: Final = (SMTPException, OSError, asyncio.TimeoutError, ssl.SSLError)


class _TlsFailed(Exception):
    """STARTTLS was offered, and refused or failed: the connection is gone, try without."""


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def _close(smtp: aiosmtplib.SMTP) -> None:
    """QUIT politely when the line is still up; close regardless (even when cancelled)."""
    try:
        if smtp.is_connected:
            with contextlib.suppress(*_NETWORK_ERRORS):
                await smtp.quit(timeout=_QUIT_TIMEOUT)
    finally:
        smtp.close()


async def _rset(smtp: aiosmtplib.SMTP) -> None:
    if smtp.is_connected:
        with contextlib.suppress(*_NETWORK_ERRORS):
            await smtp.rset()


async def _greet(smtp: aiosmtplib.SMTP) -> None:
    """EHLO, or HELO for a server that does not speak ESMTP."""
    try:
        await smtp.ehlo()
    except SMTPResponseException as exc:
        if exc.code < 500:
            raise
        await smtp.helo()


@dataclass
class _Idle:
    smtp: aiosmtplib.SMTP
    since: float
    used: int


class ConnectionCache:
    """Open connections to servers, kept between emails (as MTAs do) for a short while.

    A connection goes back to the cache after a clean transaction and is handed to the next
    email for the same server, saving the connect, greeting and QUIT. It is dropped after
    `idle_s` seconds unused or `max_uses` transactions; `max_uses` of 1 turns caching off.
    """

    def __init__(
        self,
        *,
        idle_s: float = 5.0,
        max_uses: int = 100,
        per_server: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._idle_s = idle_s
        self._max_uses = max_uses
        self._per_server = per_server
        self._clock = clock
        self._idle: dict[Hop, list[_Idle]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def take(self, hop: Hop) -> tuple[aiosmtplib.SMTP, int] | None:
        """A live idle connection to this server and its use count, if there is one."""
        self._sweep()
        idle = self._idle.get(hop)
        while idle:
            entry = idle.pop()
            if entry.smtp.is_connected:
                return entry.smtp, entry.used
            entry.smtp.close()
        return None

    async def give(self, hop: Hop, smtp: aiosmtplib.SMTP, used: int) -> None:
        """Keep a connection for the next email, or close it when it is spent."""
        idle = self._idle.setdefault(hop, [])
        if not smtp.is_connected or used >= self._max_uses or len(idle) >= self._per_server:
            await _close(smtp)
            return
        idle.append(_Idle(smtp, self._clock(), used))

    def _sweep(self) -> None:
        now = self._clock()
        for idle in self._idle.values():
            while idle and now - idle[0].since > self._idle_s:
                stale = idle.pop(0).smtp
                task = asyncio.get_running_loop().create_task(_close(stale))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """QUIT every idle connection."""
        idle = [entry.smtp for entries in self._idle.values() for entry in entries]
        self._idle.clear()
        await asyncio.gather(*(_close(smtp) for smtp in idle), *self._closing)


class DirectMailer:
    """The DirectTransport port: to the recipient domain's own servers (or a fixed route)."""

    def __init__(
        self,
        routes: Routes,
        resolver: MxResolver,
        *,
        helo: str,
        timeout: float = 60.0,
        cache: ConnectionCache | None = None,
    ) -> None:
        self._routes = routes
        self._resolver = resolver
        self._helo = helo
        self._timeout = timeout
        self._cache = cache or ConnectionCache(max_uses=1)

    async def close(self) -> None:
        """Close the connections kept for later emails."""
        await self._cache.close()

    async def _hops(self, domain: str) -> list[Hop] | SmtpAttempt:
        fixed = self._routes.lookup(domain)
        if fixed is not None:
            return [fixed]
        try:
            hosts = await self._resolver.exchangers(domain)
        except DomainNotFound as exc:
            return failure(str(exc), "DNS", STATUS_NO_SUCH_DOMAIN, permanent=True)
        except NullMx as exc:
            return failure(str(exc), "DNS", STATUS_NULL_MX, permanent=True)
        except DnsUnavailable as exc:
            return failure(str(exc), "DNS", STATUS_DNS_TEMPORARY)
        return [Hop(host, DEFAULT_SMTP_PORT) for host in hosts]

    async def deliver(
        self,
        domain: str,
        envelopes: Sequence[Envelope],
        before_data: BeforeData,
        after: AfterAttempt,
    ) -> None:
        """Try every envelope on the first exchanger that answers; report each attempt at once."""
        hops = await self._hops(domain)
        if isinstance(hops, SmtpAttempt):
            for envelope in envelopes:
                await after(envelope, hops)
            return
        last: SmtpAttempt = failure(f"no exchanger for {domain}", "CONN", STATUS_NO_ANSWER)
        for hop in hops:
            session = await self._session(hop)
            if isinstance(session, SmtpAttempt):
                last = session
                continue
            await session.run(envelopes, before_data, after)
            return
        for envelope in envelopes:
            await after(envelope, last)

    async def _session(self, hop: Hop) -> _Session | SmtpAttempt:
        cached = self._cache.take(hop)
        if cached is not None:
            return _Session(self, hop, *cached, reused=True)
        opened = await self._open(hop)
        if isinstance(opened, SmtpAttempt):
            metrics.SMTP_CONNECT_FAILURES.labels("crm_servers").inc()
            return opened
        return _Session(self, hop, opened, 0, reused=False)

    async def _connect(self, hop: Hop, *, tls: bool) -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(
            hostname=hop.host,
            port=hop.port,
            local_hostname=self._helo,
            timeout=self._timeout,
            start_tls=False,
            validate_certs=False,
        )
        try:
            await smtp.connect()
            await _greet(smtp)
            if tls and smtp.supports_extension("starttls"):
                try:
                    await smtp.starttls(validate_certs=False)
                    await _greet(smtp)
                except _NETWORK_ERRORS as exc:
                    raise _TlsFailed(_describe(exc)) from exc
        except BaseException:
            smtp.close()
            raise
        return smtp

    async def _open(self, hop: Hop) -> aiosmtplib.SMTP | SmtpAttempt:
        """A greeted connection, or the attempt that says why there is none."""
        for tls in (True, False):
            try:
                return await self._connect(hop, tls=tls)
            except _TlsFailed:
                continue  # STARTTLS was offered but did not work: go on in the clear
            except SMTPConnectResponseError as exc:
                return reply(exc.code, exc.message, "CONN", hop.name)
            except SMTPResponseException as exc:
                return reply(exc.code, exc.message, "EHLO", hop.name)
            except _NETWORK_ERRORS as exc:
                return failure(
                    f"could not talk to {hop.name}: {_describe(exc)}",
                    "CONN",
                    STATUS_NO_ANSWER,
                    hop.name,
                )
        return failure(f"could not talk to {hop.name}", "CONN", STATUS_NO_ANSWER, hop.name)


class _Session:
    """One connection to one server running one domain's transactions, then cached or closed."""

    def __init__(
        self, mailer: DirectMailer, hop: Hop, smtp: aiosmtplib.SMTP, used: int, *, reused: bool
    ) -> None:
        self._mailer = mailer
        self._hop = hop
        self._smtp: aiosmtplib.SMTP | None = smtp
        self._used = used
        self._reused = reused

    async def run(
        self, envelopes: Sequence[Envelope], before_data: BeforeData, after: AfterAttempt
    ) -> None:
        clean = False
        try:
            for envelope in envelopes:
                await after(envelope, await self._one(envelope, before_data))
            clean = True
        finally:
            smtp, self._smtp = self._smtp, None
            if smtp is not None:
                if clean:
                    await self._mailer._cache.give(self._hop, smtp, self._used)
                else:
                    await _close(smtp)

    async def _one(self, envelope: Envelope, before_data: BeforeData) -> SmtpAttempt:
        hop = self._hop
        if self._smtp is None or not self._smtp.is_connected:
            reopened = await self._reopen()
            if reopened is not None:
                return reopened
        assert self._smtp is not None
        started = time.perf_counter()
        attempt = await _transaction(self._smtp, hop, envelope, before_data)
        if self._reused and _stale(attempt):
            # The server had dropped the cached connection: nothing was sent, try a fresh one.
            reopened = await self._reopen()
            if reopened is not None:
                return reopened
            assert self._smtp is not None
            attempt = await _transaction(self._smtp, hop, envelope, before_data)
        self._reused = False
        self._used += 1
        metrics.SMTP_SECONDS.labels("crm_servers", attempt.verdict.value).observe(
            time.perf_counter() - started
        )
        return attempt

    async def _reopen(self) -> SmtpAttempt | None:
        """A fresh connection in place of a dead one; the failure if there is none."""
        if self._smtp is not None:
            await _close(self._smtp)
            self._smtp = None
        opened = await self._mailer._open(self._hop)
        if isinstance(opened, SmtpAttempt):
            metrics.SMTP_CONNECT_FAILURES.labels("crm_servers").inc()
            return opened
        self._smtp, self._used, self._reused = opened, 0, False
        return None


def _stale(attempt: SmtpAttempt) -> bool:
    """A cached connection that turned out dead before anything was handed over."""
    if attempt.data_started or attempt.command != "MAIL":
        return False
    return attempt.code is None or attempt.code == 421


async def _envelope_command(
    smtp: aiosmtplib.SMTP, verb: bytes, prefix: bytes, address: str
) -> SMTPResponse | None:
    """MAIL FROM or RCPT TO with an address already checked; the refusal, or None if accepted.

    aiosmtplib's own `mail`/`rcpt` re-parse the address with the standard library's slow
    parser on every call, which costs more than the rest of the command for a VERP address.
    """
    response = await smtp.execute_command(verb, prefix + b"<" + address.encode("ascii") + b">")
    return None if response.code in (250, 251) else response


async def _transaction(
    smtp: aiosmtplib.SMTP, hop: Hop, envelope: Envelope, before_data: BeforeData
) -> SmtpAttempt:
    """MAIL, RCPT, the caller's go-ahead, DATA: one recipient's attempt."""
    command = "MAIL"
    try:
        refused = await _envelope_command(smtp, b"MAIL", b"FROM:", envelope.mail_from)
        if refused is None:
            command = "RCPT"
            refused = await _envelope_command(smtp, b"RCPT", b"TO:", envelope.recipient.address)
        if refused is not None:
            await _rset(smtp)
            return reply(refused.code, refused.message, command, hop.name)
        if not await before_data([envelope.recipient]):
            await _rset(smtp)
            return SKIPPED
        command = "DATA"
        response = await smtp.data(envelope.message)
    except SMTPResponseException as exc:
        await _rset(smtp)
        return reply(exc.code, exc.message, command, hop.name)
    except _NETWORK_ERRORS as exc:
        smtp.close()
        return failure(
            f"connection to {hop.name} lost during {command}: {_describe(exc)}",
            command,
            STATUS_CONNECTION_LOST,
            hop.name,
            data_started=command == "DATA",
        )
    return reply(response.code, response.message, "DATA", hop.name)


class SubmissionMailer:
    """The SubmissionTransport port: a user's own submission server, with AUTH."""

    def __init__(self, *, helo: str, timeout: float = 60.0) -> None:
        self._helo = helo
        self._timeout = timeout

    async def submit(
        self,
        mailbox: MailboxSettings,
        mail_from: str,
        recipients: Sequence[Mailbox],
        message: bytes,
        before_data: BeforeData,
    ) -> list[SmtpAttempt]:
        """One attempt per recipient: the RCPT refusal, or the DATA reply, or what broke."""
        name = f"{mailbox.smtp_host}:{mailbox.smtp_port}"
        security = mailbox.security.strip().lower()
        smtp = aiosmtplib.SMTP(
            hostname=mailbox.smtp_host,
            port=mailbox.smtp_port,
            local_hostname=self._helo,
            timeout=self._timeout,
            use_tls=security == "tls",
            start_tls=security == "starttls",
        )
        started = time.perf_counter()
        try:
            attempts = await self._session(
                smtp, name, mailbox, mail_from, recipients, message, before_data
            )
        finally:
            await _close(smtp)
        verdict = attempts[0].verdict.value if attempts else "none"
        metrics.SMTP_SECONDS.labels("integrated_mailbox", verdict).observe(
            time.perf_counter() - started
        )
        return attempts

    async def _session(
        self,
        smtp: aiosmtplib.SMTP,
        name: str,
        mailbox: MailboxSettings,
        mail_from: str,
        recipients: Sequence[Mailbox],
        message: bytes,
        before_data: BeforeData,
    ) -> list[SmtpAttempt]:
        everyone = len(recipients)
        command = "CONN"
        try:
            await smtp.connect()
            command = "AUTH"
            await smtp.login(mailbox.username, mailbox.secret)
            command = "MAIL"
            await smtp.mail(mail_from)
        except (SMTPConnectResponseError, SMTPAuthenticationError, SMTPResponseException) as exc:
            return [reply(exc.code, exc.message, command, name)] * everyone
        except _NETWORK_ERRORS as exc:
            if command == "AUTH" and smtp.is_connected:
                # The server offers no AUTH we can use: retrying will not change that.
                text = f"{name} refused authentication: {_describe(exc)}"
                return [failure(text, "AUTH", "5.7.8", name, permanent=True)] * everyone
            metrics.SMTP_CONNECT_FAILURES.labels("integrated_mailbox").inc()
            text = f"could not talk to {name}: {_describe(exc)}"
            return [failure(text, command, STATUS_NO_ANSWER, name)] * everyone

        results: list[SmtpAttempt | None] = [None] * everyone
        accepted: list[int] = []
        command = "RCPT"
        try:
            for i, recipient in enumerate(recipients):
                try:
                    await smtp.rcpt(recipient.address)
                except SMTPResponseException as exc:
                    results[i] = reply(exc.code, exc.message, "RCPT", name)
                else:
                    accepted.append(i)
            if not accepted:
                await _rset(smtp)
            elif not await before_data([recipients[i] for i in accepted]):
                await _rset(smtp)
                for i in accepted:
                    results[i] = SKIPPED
            else:
                command = "DATA"
                try:
                    response = await smtp.data(message)
                except SMTPResponseException as exc:
                    outcome = reply(exc.code, exc.message, "DATA", name)
                else:
                    outcome = reply(response.code, response.message, "DATA", name)
                for i in accepted:
                    results[i] = outcome
        except _NETWORK_ERRORS as exc:
            lost = failure(
                f"connection to {name} lost during {command}: {_describe(exc)}",
                command,
                STATUS_CONNECTION_LOST,
                name,
                data_started=command == "DATA",
            )
            results = [r if r is not None else lost for r in results]
        return [r if r is not None else SKIPPED for r in results]
