"""Sync state in a NATS KV bucket: folder cursors, tracked messages, sent Message-IDs, leases.

Keys in `mailfold_mailbox` (documented in docs/operations.md):
- `<org>.<user>.f.<folder>`            the folder's cursor
- `<org>.<user>.f.<folder>.m.<chunk>`  tracked messages (UID or UIDL -> email id), in chunks
- `<org>.<user>.sent.<hash>`           Message-ID of mail the mailbox sent -> email id (bounces)
- `<org>.<user>.lease`                 the copy that holds the mailbox, until when
`<user>` and `<folder>` are base64url tokens (keys may not hold '@', ' ' and friends).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import zlib
from typing import Final

import msgspec
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from mailfold.mailbox.domain.events import normal_message_id
from mailfold.mailbox.domain.state import Cursor, FolderState, Lease, Locator
from mailfold.runtime import bus
from mailfold.runtime.bus import key_token
from mailfold.runtime.directory import get_value

BUCKET: Final = "mailfold_mailbox"
UID_CHUNK: Final = 4096
UIDL_CHUNKS: Final = 32

_enc = msgspec.json.Encoder()
_cursor = msgspec.json.Decoder(Cursor)
_chunk = msgspec.json.Decoder(dict[str, str])
_lease = msgspec.json.Decoder(Lease)


def _chunk_of(key: str, *, hashed: bool) -> int:
    if hashed:
        return zlib.crc32(key.encode()) % UIDL_CHUNKS
    return int(key) // UID_CHUNK


def untoken(token: str) -> str:
    """The text a key token stands for (see `key_token`)."""
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def _mailbox(org_id: str, user: str) -> str:
    return f"{org_id}.{key_token(user)}"


class MailboxStore:
    """Reads and writes one bucket; writes of a batch are pipelined and awaited together."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._pending: list[asyncio.Future[int]] = []
        # What each chunk key holds now, so a save writes only the chunks that changed.
        self._written: dict[str, bytes] = {}

    def _folder_key(self, org_id: str, user: str, folder: str) -> str:
        return f"{_mailbox(org_id, user)}.f.{key_token(folder)}"

    async def _put(self, key: str, value: bytes) -> None:
        self._pending.append(await bus.start_kv_put(self._kv, key, value))

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every write sent so far is stored; TimeoutError when one is not in time.

        Bounded: an acknowledgement lost with the connection never comes.
        """
        pending, self._pending = self._pending, []
        if pending:
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.gather(*pending)
            finally:
                for future in pending:
                    future.cancel()

    async def load_folder(
        self, org_id: str, user: str, folder: str, *, hashed: bool = False
    ) -> FolderState:
        """A folder's state as last saved (empty for a folder never synced)."""
        base = self._folder_key(org_id, user, folder)
        raw = await get_value(self._kv, base)
        cursor = Cursor() if raw is None else _cursor.decode(raw)
        messages: dict[str, str] = {}
        for key, value in (await bus.entries(self._kv, f"{base}.m.*")).items():
            if value:
                self._written[key] = value
                messages.update(_chunk.decode(value))
        return FolderState(**msgspec.structs.asdict(cursor), messages=messages)

    async def save_folder(
        self, org_id: str, user: str, folder: str, state: FolderState, *, hashed: bool = False
    ) -> None:
        """Store the tracked messages (changed chunks only), then the cursor; waits for both."""
        base = self._folder_key(org_id, user, folder)
        chunks: dict[int, dict[str, str]] = {}
        for key, email_id in state.messages.items():
            chunks.setdefault(_chunk_of(key, hashed=hashed), {})[key] = email_id
        keep = set()
        for number, content in chunks.items():
            key = f"{base}.m.{number}"
            keep.add(key)
            encoded = _enc.encode(dict(sorted(content.items())))
            if self._written.get(key) != encoded:
                await self._put(key, encoded)
                self._written[key] = encoded
        stale = [k for k in self._written if k.startswith(f"{base}.m.") and k not in keep]
        await self.flush()
        for key in stale:
            await self._kv.delete(key)
            self._written.pop(key, None)
        cursor = msgspec.convert(state, Cursor, from_attributes=True)
        await self._kv.put(base, _enc.encode(cursor))

    def _sent_key(self, org_id: str, user: str, message_id: str) -> str:
        digest = hashlib.sha256(normal_message_id(message_id).encode()).hexdigest()[:40]
        return f"{_mailbox(org_id, user)}.sent.{digest}"

    async def remember_sent(self, org_id: str, user: str, message_id: str, email_id: str) -> None:
        """Mail this mailbox sent, by Message-ID (a later bounce names it); pipelined."""
        await self._put(self._sent_key(org_id, user, message_id), email_id.encode())

    async def sent_email(self, org_id: str, user: str, message_id: str) -> str | None:
        """The email this mailbox sent with this Message-ID, if it captured one."""
        raw = await get_value(self._kv, self._sent_key(org_id, user, message_id))
        return None if raw is None else raw.decode()

    async def find(self, org_id: str, email_id: str) -> Locator | None:
        """Where a synced email lives: its mailbox, folder and UID (or UIDL), from the UID maps.

        A deletion through the API is rare; reading the org's maps for it spares the sync a
        write per message.
        """
        needle = email_id.encode()
        for key, value in (await bus.entries(self._kv, f"{org_id}.*.f.*.m.*")).items():
            if needle not in value:
                continue
            for uid, found in _chunk.decode(value).items():
                if found != email_id:
                    continue
                _org, user_token, _f, folder_token, *_ = key.split(".")
                cursor_raw = await get_value(self._kv, f"{org_id}.{user_token}.f.{folder_token}")
                cursor = Cursor() if cursor_raw is None else _cursor.decode(cursor_raw)
                return Locator(
                    user=untoken(user_token),
                    folder=untoken(folder_token),
                    uid=uid,
                    uidvalidity=cursor.uidvalidity,
                )
        return None

    async def acquire(self, org_id: str, user: str, owner: str, now_ms: int, ttl_ms: int) -> bool:
        """Take or renew the mailbox's lease: free, expired, or already ours (compare-and-set)."""
        key = f"{_mailbox(org_id, user)}.lease"
        value = _enc.encode(Lease(owner=owner, expires_ms=now_ms + ttl_ms))
        try:
            entry = await self._kv.get(key)
        except Exception:  # absent (or deleted): create it, losing to a racer is fine
            entry = None
        try:
            if entry is None or not entry.value:
                if entry is None:
                    await self._kv.create(key, value)
                else:
                    await self._kv.update(key, value, last=entry.revision)
                return True
            lease = _lease.decode(entry.value)
            if lease.owner != owner and lease.expires_ms > now_ms:
                return False
            await self._kv.update(key, value, last=entry.revision)
            return True
        except KeyWrongLastSequenceError:
            return False
        except Exception:  # create() lost the race to another copy
            return False

    async def release(self, org_id: str, user: str, owner: str) -> None:
        """Give the lease up at a clean stop, so another copy takes over at once."""
        key = f"{_mailbox(org_id, user)}.lease"
        raw = await get_value(self._kv, key)
        if raw is not None and _lease.decode(raw).owner == owner:
            await self._kv.delete(key)
