"""A POP3 session: the standard library's poplib, every call off the event loop in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import poplib
import ssl
from collections.abc import Callable
from typing import TypeVar

from mailfold.mailbox.adapters.imap import classify_exception
from mailfold.mailbox.domain.status import ErrorKind, MailboxError

T = TypeVar("T")


def _refusal(exc: poplib.error_proto) -> MailboxError:
    text = str(exc.args[0] if exc.args else exc)
    text = text[2:-1] if text.startswith("b'") else text
    upper = text.upper()
    if "[IN-USE]" in upper:
        return MailboxError(ErrorKind.PROTOCOL, text)
    if "[AUTH]" in upper or "AUTHENTICATION" in upper or "PASSWORD" in upper:
        return MailboxError(ErrorKind.AUTH, text)
    if "QUOTA" in upper:
        return MailboxError(ErrorKind.QUOTA, text)
    return MailboxError(ErrorKind.PROTOCOL, text)


def _close_late(done: asyncio.Future[poplib.POP3]) -> None:
    if not done.cancelled() and done.exception() is None:
        with contextlib.suppress(Exception):
            done.result().close()


class Pop3Session:
    """One logged-in POP3 connection (a POP3 server locks the maildrop while it is open)."""

    def __init__(self, client: poplib.POP3) -> None:
        self._client = client

    @classmethod
    async def open(
        cls,
        *,
        host: str,
        port: int,
        security: str,
        username: str,
        secret: str,
        timeout: float,
        tls_context: ssl.SSLContext | None = None,
    ) -> Pop3Session:
        """Connect, secure as asked, log in; MailboxError says what failed."""

        def connect() -> poplib.POP3:
            context = tls_context or ssl.create_default_context()
            client: poplib.POP3
            if security == "tls":
                client = poplib.POP3_SSL(host, port, timeout=timeout, context=context)
            else:
                client = poplib.POP3(host, port, timeout=timeout)
            try:
                if security == "starttls":
                    client.stls(context)
                client.user(username)
                client.pass_(secret)
            except BaseException:
                with contextlib.suppress(Exception):
                    client.close()
                raise
            return client

        pending = asyncio.ensure_future(asyncio.to_thread(connect))
        try:
            return cls(await asyncio.shield(pending))
        except asyncio.CancelledError:
            # The thread goes on; close what it opens rather than leak the socket.
            pending.add_done_callback(_close_late)
            raise
        except poplib.error_proto as exc:
            raise _refusal(exc) from exc
        except Exception as exc:
            raise classify_exception(exc) from exc

    async def uidls(self) -> dict[str, int]:
        """Every message's UIDL with its message number."""

        def run() -> dict[str, int]:
            _resp, lines, _octets = self._client.uidl()
            found: dict[str, int] = {}
            for line in lines:
                number, _, uidl = line.decode("utf-8", "replace").partition(" ")
                if uidl:
                    found[uidl.strip()] = int(number)
            return found

        return await self._run(run)

    async def retrieve(self, number: int) -> bytes:
        """One whole message."""

        def run() -> bytes:
            _resp, lines, _octets = self._client.retr(number)
            return b"\r\n".join(lines) + b"\r\n"

        return await self._run(run)

    async def delete(self, number: int) -> None:
        """Mark one message deleted; it goes when the session quits."""
        await self._run(lambda: self._client.dele(number))

    async def _run(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except poplib.error_proto as exc:
            raise _refusal(exc) from exc
        except Exception as exc:
            raise classify_exception(exc) from exc

    async def close(self) -> None:
        """QUIT (which commits deletions), or drop the connection."""

        def run() -> None:
            try:
                self._client.quit()
            except Exception:
                with contextlib.suppress(Exception):
                    self._client.close()

        await asyncio.to_thread(run)
