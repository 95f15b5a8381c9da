"""The runtime's tuning of FastStream's batch pull loop: a long wait for a batch's first message,
the loop's own short one for the rest, and timeouts of the kind the loop catches."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import nats.errors
import pytest

from mailfold.runtime.broker import tune_batch_fetch


class FakeSubscription:
    def __init__(self, outcomes: list[Any]) -> None:
        self.calls: list[tuple[int, float | None]] = []
        self._outcomes = outcomes

    async def fetch(self, batch: int = 1, timeout: float | None = 5.0) -> list[Any]:
        self.calls.append((batch, timeout))
        outcome = self._outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return list(outcome)


def _subscriber(subscription: FakeSubscription, batch_size: int = 10) -> Any:
    return SimpleNamespace(
        subscription=subscription, pull_sub=SimpleNamespace(batch_size=batch_size)
    )


async def test_the_first_fetch_of_a_batch_waits_long_and_the_rest_keep_the_loops_timeout() -> None:
    subscription = FakeSubscription([["m1"], ["m2", "m3"]])
    tune_batch_fetch(_subscriber(subscription), idle_wait_s=5.0)
    assert await subscription.fetch(batch=10, timeout=0.05) == ["m1"]
    assert await subscription.fetch(batch=9, timeout=0.03) == ["m2", "m3"]
    assert subscription.calls == [(10, 5.0), (9, 0.03)]


async def test_a_plain_timeout_becomes_the_one_the_loop_catches() -> None:
    subscription = FakeSubscription([TimeoutError(), nats.errors.TimeoutError()])
    tune_batch_fetch(_subscriber(subscription))
    with pytest.raises(nats.errors.TimeoutError):
        await subscription.fetch(batch=4, timeout=0.01)
    with pytest.raises(nats.errors.TimeoutError):
        await subscription.fetch(batch=4, timeout=0.01)


def test_a_subscriber_without_a_pull_subscription_is_left_alone() -> None:
    untouched = SimpleNamespace(subscription=None)
    tune_batch_fetch(untouched)
    assert untouched.subscription is None
