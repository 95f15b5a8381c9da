"""What services do while a JetStream stream elects a leader, on fakes."""

from __future__ import annotations

import nats.errors
import pytest
from nats.js.errors import KeyWrongLastSequenceError

from mailfold.runtime import bus


class Clock:
    """A monotonic clock that only sleeping moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


async def test_a_call_is_tried_again_until_the_stream_has_a_leader() -> None:
    clock = Clock()
    answers: list[BaseException | str] = [
        nats.errors.NoRespondersError(),
        nats.errors.TimeoutError(),
        "stored",
    ]
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert (
        await bus.through_elections(call, within_s=10, monotonic=clock, sleep=clock.sleep)
        == "stored"
    )
    assert calls == 3


async def test_a_call_gives_up_after_its_time_and_raises_what_it_last_got() -> None:
    clock = Clock()
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise nats.errors.NoRespondersError

    with pytest.raises(nats.errors.NoRespondersError):
        await bus.through_elections(call, within_s=3, monotonic=clock, sleep=clock.sleep)
    assert 3 <= calls <= 6
    assert clock.now < 3


async def test_an_answer_that_is_no_election_is_not_retried() -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise KeyWrongLastSequenceError

    with pytest.raises(KeyWrongLastSequenceError):
        await bus.through_elections(call)
    assert calls == 1
