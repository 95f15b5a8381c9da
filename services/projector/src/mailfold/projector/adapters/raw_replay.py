"""Replay's reader: the NATS wire protocol spoken directly, for a one-way bulk read of the stream.

nats-py spends about 8 µs per message (regex parsing, a header dict, a Msg object, a queue hop)
on what replay needs as three values: the stream sequence, the subject and the bytes. This reader
opens its own plain TCP connection, subscribes one inbox, keeps two pull requests open on an
ephemeral consumer without acks, and cuts (seq, subject, data) straight out of the read buffer.
It only speaks plain TCP with user/password or token authentication; anything else (TLS, nkeys,
credentials files) raises RawUnavailable before reading and replay uses the nats-py reader.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from typing import Any, Final

from nats.aio.client import Client

from mailfold.projector.domain.messages import RawMessage

_READ_CHUNK: Final = 1 << 20
_EXPIRES_S: Final = 5.0
_OPEN_REQUESTS: Final = 2


class RawUnavailable(RuntimeError):
    """The server or the connection's options need more than this reader speaks."""


def _credentials(nc: Client) -> dict[str, Any]:
    options = nc.options
    if options.get("user_credentials") or options.get("nkeys_seed") or options.get("signature_cb"):
        raise RawUnavailable("credentials or nkeys")
    url = nc.connected_url
    fields: dict[str, Any] = {}
    user = (url.username if url else None) or options.get("user")
    password = (url.password if url else None) or options.get("password")
    token = options.get("token")
    if url is not None and url.username and not url.password:
        user, token = None, url.username
    if user:
        fields["user"] = user
        fields["pass"] = password or ""
    if token:
        fields["auth_token"] = token
    return fields


def _delivery(reply: bytes) -> tuple[int, int]:
    """(stream sequence, messages pending after this one) from a delivery's reply subject."""
    tokens = reply.split(b".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[8])
    if len(tokens) >= 11:
        return int(tokens[7]), int(tokens[10])
    raise ValueError(f"not a JetStream ack subject: {reply!r}")


class RawPullReader:
    """Batches of (seq, subject, data) from an existing ack-less pull consumer, up to `to_seq`.

    Use as `await reader.open()`, `async for batch in reader`, `await reader.close()`.
    """

    def __init__(
        self,
        nc: Client,
        *,
        stream: str,
        consumer: str,
        from_seq: int,
        to_seq: int,
        batch: int,
    ) -> None:
        self._nc = nc
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}".encode()
        self._to = to_seq
        self._batch = batch
        self._inbox = nc.new_inbox().encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._buf = b""
        # Each open request's [messages still to come, size], oldest first (served in order).
        self._open: collections.deque[list[int]] = collections.deque()
        # At most this many messages are left in the range: no request asks for more.
        self._unrequested = to_seq - from_seq + 1
        self._done = False
        self.conflict: str | None = None

    async def open(self) -> None:
        """Connect, authenticate, subscribe the inbox; raises RawUnavailable when it cannot."""
        url = self._nc.connected_url
        if url is None or url.scheme not in ("nats", ""):
            raise RawUnavailable(f"scheme {url.scheme if url else None!r}")
        connect = {
            "verbose": False,
            "pedantic": False,
            "lang": "python",
            "version": "mailfold-replay",
            "protocol": 1,
            "headers": True,
            "no_responders": True,
            "name": "mailfold-replay-reader",
            **_credentials(self._nc),
        }
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(url.hostname, url.port or 4222, limit=4 * _READ_CHUNK), 5
        )
        self._reader, self._writer = reader, writer
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            if not line.startswith(b"INFO "):
                raise RawUnavailable(f"unexpected greeting {line[:40]!r}")
            info = json.loads(line[5:])
            if info.get("tls_required"):
                raise RawUnavailable("the server requires TLS")
            if info.get("nonce") and not connect.get("user") and not connect.get("auth_token"):
                raise RawUnavailable("the server asks for a signed nonce")
            writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
            await writer.drain()
            while True:
                line = await asyncio.wait_for(reader.readline(), 5)
                if line.startswith(b"PONG"):
                    break
                if line.startswith(b"-ERR"):
                    raise RawUnavailable(line.decode(errors="replace").strip())
                if not line:
                    raise RawUnavailable("connection closed during the handshake")
            writer.write(b"SUB " + self._inbox + b" 1\r\n")
            self._top_up()
            await writer.drain()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection (the consumer is the caller's to delete)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _top_up(self) -> None:
        assert self._writer is not None
        while len(self._open) < _OPEN_REQUESTS and not self._done and self._unrequested > 0:
            size = min(self._batch, self._unrequested)
            self._unrequested -= size
            body = json.dumps({"batch": size, "expires": int(_EXPIRES_S * 1e9)}).encode()
            self._writer.write(
                b"PUB %s %s %d\r\n%s\r\n" % (self._next, self._inbox, len(body), body)
            )
            self._open.append([size, size])
        if not self._open:
            # Every message the range could hold was asked for and has come (or was deleted).
            self._done = True

    def __aiter__(self) -> RawPullReader:
        return self

    async def __anext__(self) -> list[RawMessage]:
        """The next `batch` messages (fewer at the end of the range)."""
        reader, writer = self._reader, self._writer
        if reader is None or writer is None:
            raise StopAsyncIteration
        batch: list[RawMessage] = []
        while not self._done and len(batch) < self._batch:
            chunk = await reader.read(_READ_CHUNK)
            if not chunk:
                raise ConnectionError("the server closed the replay connection")
            self._parse(chunk, batch)
            if self.conflict is not None:
                raise RuntimeError(f"pull request refused: {self.conflict}")
            self._top_up()
        if not batch:
            raise StopAsyncIteration
        return batch

    def _parse(self, chunk: bytes, out: list[RawMessage]) -> None:
        """Every complete message in the buffer onto `out`; keeps the incomplete rest."""
        buf = self._buf + chunk if self._buf else chunk
        pos = 0
        end = len(buf)
        find = buf.find
        while not self._done:
            eol = find(b"\r\n", pos)
            if eol < 0:
                break
            op = buf[pos : pos + 4]
            if op == b"HMSG" or op == b"MSG ":
                args = buf[pos:eol].split(b" ")
                if op == b"HMSG":  # HMSG subject sid [reply] header-size total-size
                    size, header = int(args[-1]), int(args[-2])
                else:  # MSG subject sid [reply] size
                    size, header = int(args[-1]), 0
                start = eol + 2
                if start + size + 2 > end:
                    break
                pos = start + size + 2
                if len(args) == (6 if header else 5):
                    self._on_delivery(args[3], args[1], buf, start, header, size, out)
                else:
                    self._on_status(buf[start : start + header])
                continue
            line = buf[pos:eol]
            pos = eol + 2
            if line == b"PING":
                assert self._writer is not None
                self._writer.write(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise ConnectionError(f"NATS: {line.decode(errors='replace')}")
            # +OK, PONG and INFO need nothing.
        self._buf = buf[pos:]

    def _on_delivery(
        self,
        reply: bytes,
        subject: bytes,
        buf: bytes,
        start: int,
        header: int,
        size: int,
        out: list[RawMessage],
    ) -> None:
        if self._open:
            request = self._open[0]
            request[0] -= 1
            if request[0] <= 0:
                self._open.popleft()
        seq, pending = _delivery(reply)
        if seq > self._to:
            self._done = True
            return
        out.append((seq, subject.decode(), buf[start + header : start + size]))
        if seq >= self._to or pending == 0:
            self._done = True

    def _on_status(self, header: bytes) -> None:
        # A request ended (404 no messages, 408 expired) or was refused (409).
        status = header[9:12]
        if status == b"409":
            first = header.split(b"\r\n", 1)[0]
            self.conflict = first[13:].decode(errors="replace") or "conflict"
        elif status in (b"404", b"408") and self._open:
            left, size = self._open.popleft()
            # With no acks nothing delivered stays pending: a request that ends empty-handed
            # means what is left of the range was deleted from the stream.
            if left == size:
                self._done = True
