"""Waiting for an event with a deadline, and for a cancelled task, without losing a cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from mailfold.runtime.service import cancel_and_wait, wait_set

Wait = Callable[[asyncio.Event, float], Awaitable[bool]]


async def _stopped_as_woken(wait: Wait) -> bool:
    """A loop that waits for a wake-up, cancelled just as it is woken: does the loop stop?"""
    wake = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while rounds < 3:
            await wait(wake, 10)
            wake.clear()
            rounds += 1

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)  # the loop waits
    wake.set()
    task.cancel()
    try:
        await asyncio.wait_for(task, 0.5)
    except asyncio.CancelledError:
        return True
    except TimeoutError:
        return False
    return rounds == 0


async def test_a_cancellation_as_the_event_is_set_stops_the_waiting_loop() -> None:
    assert await _stopped_as_woken(wait_set)


async def test_asyncio_wait_for_loses_that_cancellation_on_this_python() -> None:
    """Why `wait_set` exists: Python 3.11's wait_for returns normally instead."""

    async def wait_for(event: asyncio.Event, timeout_s: float) -> bool:
        await asyncio.wait_for(event.wait(), timeout_s)
        return True

    assert not await _stopped_as_woken(wait_for)


async def test_the_answer_says_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_set(event, 0.01) is False
    event.set()
    assert await wait_set(event, 10) is True


@pytest.mark.parametrize("timeout_s", [0, -1])
async def test_a_deadline_already_past_answers_at_once(timeout_s: float) -> None:
    assert await wait_set(asyncio.Event(), timeout_s) is False


async def test_cancel_and_wait_passes_on_a_cancellation_of_the_caller() -> None:
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await release.wait()

    child = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)

    async def stopper() -> str:
        await cancel_and_wait(child)
        await asyncio.sleep(10)
        return "went on as if not cancelled"

    caller = asyncio.create_task(stopper())
    await asyncio.sleep(0)  # the caller waits for the child to end
    caller.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(caller, 1)
    assert child.cancelled()


async def test_cancel_and_wait_absorbs_how_the_task_ends() -> None:
    async def fails_on_the_way_out() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            raise ValueError("broken while stopping")

    failing = asyncio.create_task(fails_on_the_way_out())
    quiet = asyncio.create_task(asyncio.sleep(10))
    await asyncio.sleep(0)
    await cancel_and_wait(failing)
    await cancel_and_wait(quiet)
    assert isinstance(failing.exception(), ValueError)
    assert quiet.cancelled()
