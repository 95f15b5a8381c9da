"""An IMAP session over aioimaplib: login with TLS or STARTTLS, folders, UIDs, fetch, IDLE, delete.

aioimaplib (asyncio-native, maintained, typed responses of raw lines) keeps every mailbox on the
service's event loop; it has no STARTTLS command of its own, so the upgrade is done here with the
loop's `start_tls` on its transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import aioimaplib

from mailfold.mailbox.domain.status import ErrorKind, MailboxError

_UID: Final = re.compile(rb"\bUID (\d+)")
_CODE: Final = re.compile(rb"\[(UIDVALIDITY|UIDNEXT|HIGHESTMODSEQ) (\d+)\]")
_LIST: Final = re.compile(rb'^\((?P<flags>[^)]*)\) (?:"(?:[^"\\]|\\.)*"|NIL) (?P<name>.+)$')
_PUSHES: Final = (b"EXISTS", b"EXPUNGE", b"VANISHED", b"FETCH", b"BYE")
SENT_NAMES: Final = (
    "Sent",
    "Sent Items",
    "Sent Messages",
    "Sent Mail",
    "[Gmail]/Sent Mail",
    "INBOX.Sent",
    "INBOX/Sent",
)
FETCH_BATCH: Final = 50  # small: aioimaplib's parse of one reply grows faster than its size


@dataclass(frozen=True, slots=True)
class Selected:
    """What SELECT says about a folder."""

    uidvalidity: int
    uidnext: int
    highestmodseq: int


def compact(uids: Sequence[int]) -> str:
    """A sequence set for these UIDs, runs folded (`1:3,7`)."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(f"{start}:{prev}" if prev != start else str(start))
        start = prev = uid
    parts.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(parts)


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unquote(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip()
    if text.startswith('"') and text.endswith('"'):
        text = text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return text


def _text(lines: Sequence[bytes | bytearray]) -> str:
    return " ".join(bytes(x).decode("utf-8", "replace") for x in lines if isinstance(x, bytes))


def _refusal(response: aioimaplib.Response) -> MailboxError:
    text = _text(response.lines)
    upper = text.upper()
    if "OVERQUOTA" in upper or "QUOTA" in upper:
        return MailboxError(ErrorKind.QUOTA, text)
    if "AUTHENTICATIONFAILED" in upper or "AUTHORIZATIONFAILED" in upper or "LOGIN" in upper:
        return MailboxError(ErrorKind.AUTH, text)
    return MailboxError(ErrorKind.PROTOCOL, text)


def classify_exception(exc: BaseException) -> MailboxError:
    """A connection-level failure, named by its kind."""
    if isinstance(exc, MailboxError):
        return exc
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return MailboxError(ErrorKind.TLS, f"TLS failed: {exc}")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | aioimaplib.CommandTimeout):
        return MailboxError(ErrorKind.TIMEOUT, "the server did not answer in time")
    if isinstance(exc, socket.gaierror | ConnectionRefusedError):
        return MailboxError(ErrorKind.UNREACHABLE, f"cannot reach the server: {exc}")
    if isinstance(exc, ConnectionError | OSError):
        return MailboxError(ErrorKind.DISCONNECTED, f"connection lost: {exc}")
    return MailboxError(ErrorKind.PROTOCOL, f"{type(exc).__name__}: {exc}")


class ImapSession:
    """One logged-in IMAP connection."""

    def __init__(self, client: aioimaplib.IMAP4, lost: asyncio.Event) -> None:
        self._client = client
        self._lost = lost
        self.capabilities: frozenset[str] = frozenset()
        self.condstore = False

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
        use_condstore: bool = True,
    ) -> ImapSession:
        """Connect, upgrade or wrap TLS as asked, log in; MailboxError says what failed."""
        lost = asyncio.Event()
        context = tls_context or ssl.create_default_context()
        client: aioimaplib.IMAP4
        try:
            if security == "tls":
                client = aioimaplib.IMAP4_SSL(
                    host=host, port=port, timeout=timeout, ssl_context=context
                )
            else:
                client = aioimaplib.IMAP4(
                    host=host, port=port, timeout=timeout, conn_lost_cb=lambda _e: lost.set()
                )
            await client.wait_hello_from_server()
            session = cls(client, lost)
            if security == "starttls":
                await session._starttls(host, context, timeout)
            response = await client.login(username, secret)
            if response.result != "OK":
                raise _refusal(response)
            await client.protocol.capability()
            session.capabilities = frozenset(c.upper() for c in client.protocol.capabilities)
            if use_condstore and {"CONDSTORE", "ENABLE"} <= session.capabilities:
                # SELECT then reports HIGHESTMODSEQ: an unchanged folder costs one command.
                session.condstore = (await client.enable("CONDSTORE")).result == "OK"
        except BaseException as exc:
            connecting = client._client_task
            if not connecting.done():
                connecting.cancel()  # a cancelled connect closes its own socket
            with contextlib.suppress(Exception):
                client.protocol.transport.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise classify_exception(exc) from exc
        return session

    async def _starttls(self, host: str, context: ssl.SSLContext, timeout: float) -> None:
        protocol = self._client.protocol
        if "STARTTLS" not in {c.upper() for c in protocol.capabilities}:
            await protocol.capability()
            if "STARTTLS" not in {c.upper() for c in protocol.capabilities}:
                raise MailboxError(ErrorKind.TLS, "the server does not offer STARTTLS")
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        response = await asyncio.wait_for(protocol.execute(command), timeout)
        if response.result != "OK":
            raise MailboxError(ErrorKind.TLS, f"STARTTLS refused: {_text(response.lines)}")
        loop = asyncio.get_running_loop()
        transport = await asyncio.wait_for(
            loop.start_tls(protocol.transport, protocol, context, server_hostname=host), timeout
        )
        protocol.transport = transport
        await protocol.capability()

    @property
    def idle_supported(self) -> bool:
        """RFC 2177 IDLE is offered."""
        return "IDLE" in self.capabilities

    def _check(self, response: aioimaplib.Response, what: str) -> aioimaplib.Response:
        if self._lost.is_set():
            raise MailboxError(ErrorKind.DISCONNECTED, "the server closed the connection")
        if response.result != "OK":
            error = _refusal(response)
            raise MailboxError(error.kind, f"{what}: {error.message}")
        return response

    async def folders(self) -> list[tuple[str, frozenset[str]]]:
        """Every folder with its flags (SPECIAL-USE ones included where offered)."""
        args = ['""', '"*"']
        if "SPECIAL-USE" in self.capabilities:
            args += ["RETURN", "(SPECIAL-USE)"]
        protocol = self._client.protocol
        command = aioimaplib.Command("LIST", protocol.new_tag(), *args, loop=protocol.loop)
        response = self._check(
            await asyncio.wait_for(protocol.execute(command), self._client.timeout), "LIST"
        )
        found = []
        for line in response.lines:
            if not isinstance(line, bytes):
                continue
            match = _LIST.match(line)
            if match is not None:
                flags = frozenset(f.decode().lower() for f in match.group("flags").split())
                found.append((_unquote(match.group("name")), flags))
        return found

    async def sent_folder(self) -> str | None:
        """The Sent folder: SPECIAL-USE `\\Sent` (RFC 6154), else a well-known name."""
        listed = await self.folders()
        for name, flags in listed:
            if "\\sent" in flags:
                return name
        names = {name.lower(): name for name, _ in listed}
        for candidate in SENT_NAMES:
            if candidate.lower() in names:
                return names[candidate.lower()]
        return None

    async def select(self, folder: str) -> Selected:
        """Select a folder read-write; its UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ."""
        response = self._check(await self._client.select(_quote(folder)), f"SELECT {folder}")
        codes: dict[bytes, int] = {}
        for line in response.lines:
            if isinstance(line, bytes):
                for name, value in _CODE.findall(line):
                    codes[name] = int(value)
        return Selected(
            uidvalidity=codes.get(b"UIDVALIDITY", 0),
            uidnext=codes.get(b"UIDNEXT", 0),
            highestmodseq=codes.get(b"HIGHESTMODSEQ", 0),
        )

    async def uids_from(self, first: int) -> list[int]:
        """The UIDs at or above `first`, in order."""
        response = self._check(
            await self._client.uid_search(f"UID {max(first, 1)}:*", charset=None), "SEARCH"
        )
        return sorted(u for u in self._search_numbers(response) if u >= first)

    async def present(self, candidates: Sequence[int]) -> set[int]:
        """Which of these UIDs still exist (the UID diff that finds expunged messages)."""
        if not candidates:
            return set()
        response = self._check(
            await self._client.uid_search(f"UID {compact(candidates)}", charset=None), "SEARCH"
        )
        return self._search_numbers(response) & set(candidates)

    @staticmethod
    def _search_numbers(response: aioimaplib.Response) -> set[int]:
        found: set[int] = set()
        for line in response.lines:
            if isinstance(line, bytes) and line[:1].isdigit():
                found.update(int(x) for x in line.split())
            elif isinstance(line, bytes) and line.startswith(b"SEARCH"):
                found.update(int(x) for x in line.split()[1:])
        return found

    async def fetch(self, uids: Sequence[int]) -> list[tuple[int, bytes]]:
        """The full messages of these UIDs, without marking them seen."""
        if not uids:
            return []
        response = self._check(
            await self._client.uid("fetch", compact(uids), "(UID BODY.PEEK[])"), "FETCH"
        )
        found: list[tuple[int, bytes]] = []
        lines = response.lines
        for i, line in enumerate(lines):
            if isinstance(line, bytes) and b" FETCH " in line and i + 1 < len(lines):
                match = _UID.search(line)
                body = lines[i + 1]
                if match is not None and isinstance(body, bytearray):
                    found.append((int(match.group(1)), bytes(body)))
        return found

    async def search_since(self, date: str) -> set[int]:
        """UIDs of messages received on or after `date` (`01-Jan-2026`)."""
        response = self._check(
            await self._client.uid_search(f"SINCE {date}", charset=None), "SEARCH"
        )
        return self._search_numbers(response)

    async def idle(self, timeout: float, wake: asyncio.Event | None = None) -> bool:
        """Wait in IDLE up to `timeout` seconds (or until `wake` is set); True on a change."""
        waiter = await self._client.idle_start(timeout=timeout)
        changed = False
        try:
            lost = asyncio.ensure_future(self._lost.wait())
            push = asyncio.ensure_future(self._client.wait_server_push(timeout=timeout + 5))
            woken = asyncio.ensure_future((wake or asyncio.Event()).wait())
            try:
                done, _ = await asyncio.wait(
                    {lost, push, woken}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in (lost, push, woken):
                    task.cancel()
            if lost in done or self._lost.is_set():
                raise MailboxError(ErrorKind.DISCONNECTED, "the server closed the connection")
            lines = push.result() if push in done and not push.cancelled() else []
            if any(isinstance(x, bytes) and x.startswith(b"BYE") for x in lines):
                raise MailboxError(ErrorKind.DISCONNECTED, "the server said BYE")
            changed = any(isinstance(x, bytes) and any(p in x for p in _PUSHES) for x in lines)
        finally:
            if self._client.has_pending_idle() and not self._lost.is_set():
                self._client.idle_done()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(waiter, self._client.timeout)
        return changed

    async def delete(self, folder: str, uid: int) -> None:
        """Flag one message deleted and expunge it (UID EXPUNGE where UIDPLUS allows)."""
        await self.select(folder)
        self._check(await self._client.uid("store", str(uid), "+FLAGS.SILENT (\\Deleted)"), "STORE")
        if "UIDPLUS" in self.capabilities:
            self._check(await self._client.uid("expunge", str(uid)), "EXPUNGE")
        else:
            self._check(await self._client.expunge(), "EXPUNGE")

    async def close(self) -> None:
        """Log out, or drop the connection when it is already gone."""
        with contextlib.suppress(Exception):
            if not self._lost.is_set():
                await asyncio.wait_for(self._client.logout(), 2)
        with contextlib.suppress(Exception):
            self._client.protocol.transport.close()
