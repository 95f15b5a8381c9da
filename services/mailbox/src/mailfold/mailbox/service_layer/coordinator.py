"""Which mailboxes this copy syncs: every configured one it can lease, each held by one copy.

Each tick lists the configured mailboxes, takes or renews a lease (compare-and-set on the KV
revision, with an expiry) for each, starts a sync for a mailbox newly held, restarts one whose
settings changed, and stops one whose lease another copy took or whose settings are gone. A copy
that dies stops renewing; its leases expire and the others take its mailboxes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mailfold.mailbox.service_layer.sync import MailboxSync, Options, Ports
from mailfold.runtime.directory import IncomingSettings
from mailfold.runtime.logging import get_logger
from mailfold.runtime.service import cancel_and_wait

log = get_logger(__name__)

Configured = Callable[[], Awaitable[dict[tuple[str, str], IncomingSettings]]]


@dataclass
class _Held:
    sync: MailboxSync
    task: asyncio.Task[None]


class Coordinator:
    """Leases mailboxes and runs one MailboxSync task per held mailbox."""

    def __init__(
        self,
        ports: Ports,
        configured: Configured,
        options: Options,
        *,
        owner: str,
        lease_s: float,
    ) -> None:
        self._ports = ports
        self._configured = configured
        self._options = options
        self.owner = owner
        self._lease_ms = int(lease_s * 1000)
        self._tick_s = lease_s / 3
        self._held: dict[tuple[str, str], _Held] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def held(self) -> list[tuple[str, str]]:
        """The mailboxes this copy syncs now."""
        return sorted(self._held)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away for a moment: keep the syncs, try again
                log.warning("mailbox coordination failed", error=str(exc))
            await asyncio.sleep(self._tick_s)

    async def tick(self) -> None:
        """One round of leasing: take, renew, start, restart, stop."""
        configured = await self._configured()
        now_ms = int(time.time() * 1000)
        for key, incoming in configured.items():
            held = self._held.get(key)
            if held is not None and (held.sync.incoming != incoming or held.task.done()):
                await self._stop(key, release=False)
                held = None
            ours = await self._ports.store.acquire(
                key[0], key[1], self.owner, now_ms, self._lease_ms
            )
            if ours and held is None:
                sync = MailboxSync(self._ports, key[0], key[1], incoming, self._options, self.owner)
                self._held[key] = _Held(sync, asyncio.create_task(sync.run()))
                log.info("mailbox held", org_id=key[0], user=key[1], owner=self.owner)
            elif not ours and held is not None:
                log.info("mailbox taken over elsewhere", org_id=key[0], user=key[1])
                await self._stop(key, release=False)
        for key in [k for k in self._held if k not in configured]:
            await self._stop(key, release=True)

    def rescan(self, org_id: str) -> None:
        """Re-read recent mail of the org's held mailboxes (a record gained an address)."""
        for (org, _user), held in self._held.items():
            if org == org_id:
                held.sync.request_rescan()

    async def _stop(self, key: tuple[str, str], *, release: bool) -> None:
        held = self._held.pop(key)
        await cancel_and_wait(held.task)
        if release:
            with contextlib.suppress(Exception):
                await self._ports.store.release(key[0], key[1], self.owner)

    async def stop(self) -> None:
        """Stop every sync and give the leases back, so another copy takes over at once."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        for key in list(self._held):
            await self._stop(key, release=True)
