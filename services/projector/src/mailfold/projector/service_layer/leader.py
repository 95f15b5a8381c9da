"""Leading the projection: terms as leader, each resuming just after the committed position.

A term (wired by the entrypoint: take the writer lock, read the committed position, re-seat the
consumer after it, fold) ends when it is stopped or when something fails. After a failure the
next term starts again from the committed position, after a backoff (0.2 s, doubling, at most
5 s): what was folded but not committed comes again. After DuplicateEventIds it starts at once,
looking event ids up to the batch that raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from mailfold.projector import metrics
from mailfold.projector.service_layer.ports import DuplicateEventIds
from mailfold.runtime.service import wait_set

log = structlog.get_logger("mailfold.projector.leader")

# One term as leader; its argument: look event ids up in the store up to this stream sequence.
Term = Callable[[int], Awaitable[None]]


class Leadership:
    """Runs terms until stopped; errors are logged and followed by a fresh term."""

    def __init__(self, term: Term, *, first_backoff: float = 0.2, max_backoff: float = 5.0):
        self._term = term
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self.stopping = asyncio.Event()
        self.look_up_until = 0

    async def run(self) -> None:
        """Until `stopping` is set."""
        backoff = self._first_backoff
        while not self.stopping.is_set():
            try:
                await self._term(self.look_up_until)
                backoff = self._first_backoff
            except DuplicateEventIds as exc:
                # Not an outage: fold again at once, looking ids up up to the batch that raised.
                self.look_up_until = max(self.look_up_until, exc.until_seq)
                log.warning(
                    "an event id is stored under another email; folding again with ids looked up",
                    until_seq=exc.until_seq,
                    error=str(exc),
                )
            except Exception:
                metrics.RESETS.inc()
                log.exception("consumer failed; restarting from the committed position")
                await wait_set(self.stopping, backoff)
                backoff = min(backoff * 2, self._max_backoff)
