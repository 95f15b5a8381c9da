"""Running a service process: signal handling and an orderly stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any, Protocol


class Stoppable(Protocol):
    """A started service."""

    async def stop(self) -> None:
        """Stop serving and release every connection."""


async def wait_set(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until `event` is set, at most `timeout_s` seconds; whether it is set.

    Not `asyncio.wait_for(event.wait(), ...)`: on Python 3.11 that returns normally when the
    waiting task is cancelled just as the event is set, and the cancellation is lost (a loop
    around it then never stops). `asyncio.timeout` keeps it.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
    return event.is_set()


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it has ended, however it ends.

    A cancellation of the caller while it waits is passed on: `suppress(CancelledError)` around
    `await task` would take it for the task's own, and the caller would go on as if not
    cancelled (a loop around it then never stops).
    """
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:  # noqa: S110 - how the task failed on its way out is not the caller's
        pass


async def _parent_gone(parent: int, stop: asyncio.Event) -> None:
    """A worker of `mailfold serve --workers N` stops when its parent is gone (SIGKILLed)."""
    # Nothing signals a parent's death portably: polling getppid is the way (once a second).
    while os.getppid() == parent:  # noqa: ASYNC110
        await asyncio.sleep(1)
    stop.set()


def run_until_signalled(start: Callable[[], Awaitable[Stoppable]]) -> None:
    """Start the service, run until SIGINT or SIGTERM, then stop it cleanly."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        parent = os.environ.get("MAILFOLD_WORKER_PARENT", "")
        watch = asyncio.create_task(_parent_gone(int(parent), stop)) if parent.isdigit() else None
        service = await start()
        try:
            await stop.wait()
        finally:
            if watch is not None:
                watch.cancel()
            await service.stop()

    # uvloop where available (it is a dependency; the fallback keeps other platforms working):
    # the HTTP services spend much of each request in the event loop.
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(runner())
    else:
        uvloop.run(runner())
