"""One delivery attempt: sign, post, record, and decide what the queue does with the job."""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import msgspec

from mailfold.runtime.logging import get_logger
from mailfold.webhooks.domain import signing
from mailfold.webhooks.domain.deliveries import Attempt, Delivery, Job, record
from mailfold.webhooks.domain.retries import Outcome, classify, next_delay, parse_retry_after
from mailfold.webhooks.service_layer.ports import DeliveryStore, EndpointStore, Post

log = get_logger(__name__)


class Action(enum.Enum):
    """What the queue does with the job after the attempt."""

    ACK = "ack"  # settled: delivered, failed for good, or the endpoint is gone
    RETRY = "retry"  # redeliver after `delay_s`
    HOLD = "hold"  # the endpoint is disabled: give the job back, untouched, for later


class Settlement(msgspec.Struct, frozen=True, kw_only=True):
    """The action, its delay, and the delivery record to store before the job is settled."""

    action: Action
    delay_s: float = 0.0
    delivery: Delivery | None = None


class Deliverer:
    """Attempts jobs. `attempt` is the number JetStream counts (1 on the first delivery)."""

    def __init__(
        self,
        endpoints: EndpointStore,
        deliveries: DeliveryStore,
        poster: Post,
        *,
        schedule: Sequence[float],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
        on_disabled: Callable[[], None] = lambda: None,
    ) -> None:
        self._endpoints = endpoints
        self._deliveries = deliveries
        self._poster = poster
        self._schedule = tuple(schedule)
        self._clock = clock
        self._rng = rng or random.Random()
        self._on_disabled = on_disabled

    async def attempt(self, job: Job, number: int) -> Settlement:
        """Make attempt `number` of `job`: what to do with the job, and its record to store."""
        endpoint = self._endpoints.get(job.org_id, job.endpoint_id)
        if endpoint is None:
            return Settlement(action=Action.ACK)  # deleted: its jobs go with it
        if not endpoint.enabled:
            return Settlement(action=Action.HOLD)
        now = self._clock()
        headers = signing.headers(endpoint.keys(), job.event_id, int(now.timestamp()), job.body)
        answer = await self._poster.post(endpoint.url, headers, job.body)
        outcome = classify(answer.status)
        delay: float | None = None
        if outcome is Outcome.RETRYING:
            delay = next_delay(
                number,
                self._schedule,
                status=answer.status,
                retry_after=parse_retry_after(answer.retry_after, now),
                rng=self._rng,
            )
            if delay is None:
                outcome = Outcome.FAILED
        error = answer.error
        if outcome is Outcome.DISABLED:
            error = "the endpoint answered 410 Gone and was disabled"
        elif answer.status is not None and outcome is not Outcome.DELIVERED:
            error = error or f"HTTP {answer.status}"
        attempt = Attempt(
            number=number,
            at=now,
            status_code=answer.status,
            latency_ms=round(answer.latency_s * 1000, 3),
            outcome=outcome,
            error=error,
            next_attempt_at=None if delay is None else now + timedelta(seconds=delay),
        )
        previous = None
        if number > 1 or job.replay:
            previous = await self._deliveries.get(job.org_id, job.endpoint_id, job.event_id)
        delivery = record(previous, job, attempt)  # stored by the caller, before it settles
        # Deliveries are many and their record is kept; failures are what an operator reads.
        level = {Outcome.DELIVERED: "debug", Outcome.RETRYING: "info"}.get(outcome, "warning")
        getattr(log, level)(
            "webhook attempt",
            event_id=job.event_id,
            email_id=job.email_id,
            endpoint_id=job.endpoint_id,
            attempt=number,
            status=answer.status,
            outcome=str(outcome),
            error=error or None,
        )
        if outcome is Outcome.DISABLED:
            await self._endpoints.put(
                msgspec.structs.replace(
                    endpoint, enabled=False, disabled_reason="410 Gone", updated_at=now
                )
            )
            self._on_disabled()
        if delay is not None:
            return Settlement(action=Action.RETRY, delay_s=delay, delivery=delivery)
        return Settlement(action=Action.ACK, delivery=delivery)
