"""Content from the object store (cached: it is addressed by hash, so it never changes) and org data.

Mass emails send the same template body and attachments thousands of times; the cache keeps the
most recently used bytes up to a size bound so each is fetched once.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from nats.js.errors import ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from mailfold.runtime.content import get_content
from mailfold.runtime.directory import (
    MailboxSettings,
    OrgCache,
    OrgSettings,
    load_mailbox,
    load_settings,
)
from mailfold.sender.service_layer.ports import ContentMissing


class ContentCache:
    """`get_content` with an LRU cache bounded in bytes, and one fetch per hash at a time."""

    def __init__(self, store: ObjectStore, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._store = store
        self._max = max_bytes
        self._size = 0
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[bytes]] = {}

    async def __call__(self, sha256: str) -> bytes:
        cached = self._cache.get(sha256)
        if cached is not None:
            self._cache.move_to_end(sha256)
            return cached
        pending = self._inflight.get(sha256)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[sha256] = future
        try:
            data = await self._fetch(sha256)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so waiters alone decide whether it is logged
            raise
        else:
            future.set_result(data)
            self._remember(sha256, data)
            return data
        finally:
            del self._inflight[sha256]

    async def _fetch(self, sha256: str) -> bytes:
        try:
            return await get_content(self._store, sha256)
        except ObjectNotFoundError as exc:
            raise ContentMissing(sha256) from exc
        except ValueError as exc:  # stored bytes that do not match their hash
            raise ContentMissing(f"{sha256}: {exc}") from exc

    def _remember(self, sha256: str, data: bytes) -> None:
        if len(data) > self._max // 4:
            return
        self._cache[sha256] = data
        self._size += len(data)
        while self._size > self._max:
            _, dropped = self._cache.popitem(last=False)
            self._size -= len(dropped)


class OrgSettingsStore:
    """Org settings and integrated mailboxes from the `mailfold_orgs` bucket.

    Settings come from the runtime's OrgCache (a KV watch, so a changed limit or time zone
    applies within milliseconds), or from the bucket while the cache cannot say.
    """

    def __init__(self, orgs: KeyValue, cache: OrgCache) -> None:
        self._orgs = orgs
        self._cache = cache

    async def settings(self, org_id: str) -> OrgSettings:
        cached = self._cache.settings(org_id)
        return cached if cached is not None else await load_settings(self._orgs, org_id)

    async def mailbox(self, org_id: str, user: str) -> MailboxSettings | None:
        return await load_mailbox(self._orgs, org_id, user)
