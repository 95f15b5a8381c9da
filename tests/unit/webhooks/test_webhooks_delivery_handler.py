"""The delivery handler with fakes: what each answer does to the record, the endpoint, the queue."""

from __future__ import annotations

import random

from tests.webhooks_fakes import JOB, NOW, FakeDeliveries, FakeEndpoints, make_endpoint

from mailfold.webhooks.adapters.http import Answer
from mailfold.webhooks.domain.deliveries import Job
from mailfold.webhooks.domain.retries import Outcome
from mailfold.webhooks.service_layer.delivery import Action, Deliverer, Settlement


class FakePoster:
    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.sent: list[dict[str, str]] = []

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Answer:
        self.sent.append(headers)
        return self.answers.pop(0)


def _deliverer(
    poster: FakePoster, schedule: tuple[float, ...] = (5.0, 60.0)
) -> tuple[Deliverer, FakeEndpoints, FakeDeliveries]:
    endpoints, deliveries = FakeEndpoints(make_endpoint()), FakeDeliveries()
    deliverer = Deliverer(
        endpoints, deliveries, poster, schedule=schedule, clock=lambda: NOW, rng=random.Random(3)
    )
    return deliverer, endpoints, deliveries


async def attempt(
    deliverer: Deliverer, deliveries: FakeDeliveries, job: Job, number: int
) -> Settlement:
    """One attempt, its record stored as the settler stores it before settling the job."""
    settled = await deliverer.attempt(job, number)
    if settled.delivery is not None:
        await deliveries.put(settled.delivery)
    return settled


async def test_a_failure_is_retried_then_recorded_failed_after_the_last_attempt() -> None:
    poster = FakePoster(*(Answer(status=500, latency_s=0.01) for _ in range(3)))
    deliverer, _, deliveries = _deliverer(poster)
    first = await attempt(deliverer, deliveries, JOB, 1)
    second = await attempt(deliverer, deliveries, JOB, 2)
    last = await attempt(deliverer, deliveries, JOB, 3)
    assert (first.action, second.action, last.action) == (Action.RETRY, Action.RETRY, Action.ACK)
    assert 4.5 <= first.delay_s <= 5.5
    assert 54 <= second.delay_s <= 66
    record = deliveries.of("ev_1")
    assert record.outcome is Outcome.FAILED
    assert record.attempts == 3
    assert {h["webhook-id"] for h in poster.sent} == {"ev_1"}


async def test_a_timeout_is_a_failure_with_its_error_recorded() -> None:
    deliverer, _, deliveries = _deliverer(
        FakePoster(Answer(status=None, latency_s=2, error="timeout: x"))
    )
    settled = await attempt(deliverer, deliveries, JOB, 1)
    assert settled.action is Action.RETRY
    assert deliveries.of("ev_1").history[0].error == "timeout: x"


async def test_503_retry_after_sets_the_delay() -> None:
    poster = FakePoster(Answer(status=503, retry_after="600", latency_s=0.01))
    deliverer, _, _ = _deliverer(poster)
    settled = await deliverer.attempt(JOB, 1)
    assert settled.action is Action.RETRY
    assert settled.delay_s == 600


async def test_410_disables_the_endpoint_and_settles_the_job() -> None:
    deliverer, endpoints, deliveries = _deliverer(FakePoster(Answer(status=410, latency_s=0.01)))
    settled = await attempt(deliverer, deliveries, JOB, 1)
    assert settled.action is Action.ACK
    assert endpoints.endpoint.enabled is False
    assert deliveries.of("ev_1").outcome is Outcome.DISABLED
    # A disabled endpoint's next job is held, not attempted.
    assert (await deliverer.attempt(JOB, 1)).action is Action.HOLD


async def test_a_deleted_endpoints_job_is_dropped_without_a_request() -> None:
    poster = FakePoster()
    deliverer, _, deliveries = _deliverer(poster)
    gone = Job(**{**{f: getattr(JOB, f) for f in JOB.__struct_fields__}, "endpoint_id": "ep_2"})
    assert (await attempt(deliverer, deliveries, gone, 1)).action is Action.ACK
    assert poster.sent == []
    assert deliveries.records == {}
