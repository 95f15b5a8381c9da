"""The ingest SMTP server: aiosmtpd on the service's own event loop, with a thin handler."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from typing import Any, Final

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailfold.ingest.domain.replies import (
    LINE_TOO_LONG,
    TOO_BIG,
    TOO_MANY_RECIPIENTS,
    TRY_AGAIN_LATER,
)
from mailfold.ingest.domain.routes import route_for
from mailfold.ingest.metrics import (
    BOUNCE_REPORTS,
    SMTP_CONNECTIONS_REFUSED,
    SMTP_MESSAGE_BYTES,
    SMTP_MESSAGES,
    SMTP_RECIPIENTS,
)
from mailfold.ingest.service_layer.mail import MailIngress
from mailfold.runtime.logging import get_logger
from mailfold.runtime.settings import ConfigError

log = get_logger("mailfold.ingest.smtp")

TOO_MANY_CONNECTIONS: Final = "421 4.7.0 Too many connections, try again later"

# aiosmtpd's own replies for these limits carry no enhanced status code (RFC 3463); ours do.
_REWRITES: Final = {
    "552 Error: message size exceeds fixed maximum message size": str(TOO_BIG),
    "552 Error: Too much mail data": str(TOO_BIG),
    "500 Line too long (see RFC5321 4.5.3.1.6)": str(LINE_TOO_LONG),
    "500 Command line too long": "500 5.5.2 Command line too long",
}


# `<local@domain>` with dot-atom parts, then nothing or one space and parameters: what nearly every
# MAIL FROM and RCPT TO looks like. aiosmtpd's general parser (RFC 5322 tokens) takes about 45 us
# per address; for this shape its answer is the text between the brackets and the rest as it is.
_ATEXT: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH: Final = re.compile(
    rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>"
    r"(?: ([!-'*-~](?:[ -'*-~]*[!-'*-~])?))?"
)


class IngestSMTP(SMTP):
    """aiosmtpd's protocol, with enhanced status codes and a registry of open connections.

    Past `max_connections` open sessions a new connection is told 421 and closed at once, so
    that a flood of connections cannot hold every file descriptor.
    """

    def __init__(
        self,
        handler: Any,
        *,
        connections: set[IngestSMTP],
        max_connections: int = 500,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._connections = connections
        self._max_connections = max_connections
        self._turned_away = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register the connection so that stop() can close it, or turn it away when full."""
        if len(self._connections) >= self._max_connections:
            self._turned_away = True
            SMTP_CONNECTIONS_REFUSED.inc()
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(TOO_MANY_CONNECTIONS.encode() + b"\r\n")
            transport.close()
            return
        self._connections.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._turned_away:
            return
        self._connections.discard(self)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        """End of input from the client (nothing to do for a connection turned away)."""
        if self._turned_away:
            return False
        result: bool | None = super().eof_received()
        return result

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The address and the parameters of MAIL FROM / RCPT TO, the plain shape read directly."""
        plain = _PLAIN_PATH.fullmatch(arg)
        if plain is None:
            return super()._getaddr(arg)
        address = plain.group(1)
        if self.local_part_limit and address.rindex("@") > self.local_part_limit:
            return None, None
        return address, plain.group(2) or ""

    async def push(self, status: str | bytes) -> None:
        """Send a reply, with an enhanced status code where aiosmtpd's own reply has none."""
        if isinstance(status, str):
            await super().push(_REWRITES.get(status, status))
        else:
            await super().push(status)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class SmtpHandler:
    """aiosmtpd hooks: check each RCPT, hand the message to the service at the end of DATA."""

    def __init__(
        self,
        mail: MailIngress,
        *,
        max_recipients: int,
        available: Callable[[], bool] = lambda: True,
    ) -> None:
        self._mail = mail
        self._max_recipients = max_recipients
        self._available = available
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Take the recipient, refuse it, or ask for it again later."""
        if len(envelope.rcpt_tos) >= self._max_recipients:
            SMTP_RECIPIENTS.labels("deferred").inc()
            return str(TOO_MANY_RECIPIENTS)
        try:
            if not self._available():
                raise ConnectionError("not connected to NATS")
            reply = await self._mail.check_recipient(
                address, envelope.mail_from, list(envelope.rcpt_tos)
            )
        except Exception as exc:  # NATS unreachable: the sending server will try again
            log.warning("rcpt_check_failed", recipient=address, error=repr(exc))
            SMTP_RECIPIENTS.labels("failed").inc()
            return str(TRY_AGAIN_LATER)
        if reply.ok:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            SMTP_RECIPIENTS.labels("accepted").inc()
        else:
            SMTP_RECIPIENTS.labels("deferred" if reply.code < 500 else "refused").inc()
        return str(reply)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Keep and publish the message, then answer: 250, a 550 refusal, or 451 to retry."""
        raw: bytes = envelope.original_content or b""
        SMTP_MESSAGE_BYTES.observe(len(raw))
        first = route_for(envelope.rcpt_tos[0]) if envelope.rcpt_tos else None
        kind = first.kind.value if first else "unknown"
        self._in_flight += 1
        self._idle.clear()
        try:
            if not self._available():
                raise ConnectionError("not connected to NATS")
            delivery = await self._mail.deliver(envelope.mail_from, list(envelope.rcpt_tos), raw)
        except Exception as exc:  # NATS unreachable: nothing is lost, the sender retries
            log.warning(
                "message_failed", recipients=list(envelope.rcpt_tos), error=repr(exc), size=len(raw)
            )
            SMTP_MESSAGES.labels(kind, "failed").inc()
            return str(TRY_AGAIN_LATER)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
        SMTP_MESSAGES.labels(kind, "accepted" if delivery.reply.ok else "refused").inc()
        for outcome in delivery.bounces:
            BOUNCE_REPORTS.labels(outcome.value).inc()
        for event in delivery.events:
            log.info(
                "mail_event_published",
                kind=kind,
                org_id=event.org_id,
                email_id=event.email_id,
                event_id=event.event_id,
                event_type=event.event_type,
            )
        if not delivery.reply.ok:
            log.info("message_refused", kind=kind, reply=str(delivery.reply))
        elif not delivery.events:
            log.info(
                "message_kept_unpublished",
                kind=kind,
                raw=delivery.raw.sha256 if delivery.raw else None,
                outcomes=[o.value for o in delivery.bounces],
            )
        return str(delivery.reply)

    async def handle_exception(self, error: Exception) -> str:
        """A failure inside the session: ask the sending server to try again."""
        log.error("smtp_session_error", error=repr(error), exc_info=error)
        return str(TRY_AGAIN_LATER)

    async def wait_idle(self) -> None:
        """Return once no message is being handled."""
        await self._idle.wait()


class SmtpServer:
    """Listens on host:port on the running loop; stop() drains in-flight messages, then closes."""

    def __init__(
        self,
        handler: SmtpHandler,
        *,
        host: str,
        port: int,
        hostname: str,
        data_size_limit: int,
        timeout: float,
        backlog: int = 2048,
        max_connections: int = 500,
        reuse_port: bool = False,
    ) -> None:
        self._handler = handler
        self._reuse_port = reuse_port
        self._host = host
        self._requested_port = port
        self._hostname = hostname
        self._data_size_limit = data_size_limit
        self._timeout = timeout
        self._backlog = backlog
        self._max_connections = max_connections
        self._connections: set[IngestSMTP] = set()
        self._server: asyncio.Server | None = None

    def _protocol(self) -> IngestSMTP:
        return IngestSMTP(
            self._handler,
            connections=self._connections,
            max_connections=self._max_connections,
            data_size_limit=self._data_size_limit,
            enable_SMTPUTF8=True,
            hostname=self._hostname,
            ident="mailfold ingest",
            timeout=self._timeout,
            loop=asyncio.get_running_loop(),
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._reuse_port and self._requested_port == 0:
            raise ConfigError("MAILFOLD_REUSE_PORT needs fixed ports: a port of 0 cannot be shared")
        self._server = await loop.create_server(
            self._protocol,
            self._host,
            self._requested_port,
            backlog=self._backlog,
            reuse_port=self._reuse_port or None,
        )

    @property
    def port(self) -> int:
        """The bound port (useful when asked for port 0)."""
        if self._server is None or not self._server.sockets:
            return self._requested_port
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let messages being handled finish (up to `grace` s), close the rest."""
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._handler.wait_idle(), grace)
        for connection in list(self._connections):
            connection.close()
        await self._server.wait_closed()
        # Let the closed connections' callbacks run before the loop may go away.
        for _ in range(3):
            await asyncio.sleep(0)
        self._server = None
