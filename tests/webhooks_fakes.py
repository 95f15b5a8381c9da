"""In-memory stand-ins for what the webhooks handlers talk to (service_layer.ports), shared by the
webhooks unit tests: endpoints, delivery records, folds, the job queue and the receivers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from mailfold.events import AnyEvent
from mailfold.webhooks.adapters.http import Answer
from mailfold.webhooks.domain.deliveries import Delivery, Job
from mailfold.webhooks.domain.endpoints import Endpoint, Secret, new_secret
from mailfold.webhooks.domain.payload import EmailFold, fold_in

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

JOB = Job(
    org_id="acme",
    endpoint_id="ep_1",
    event_id="ev_1",
    event_type="email_sent",
    email_id="m1",
    occurred_at=NOW,
    stream_seq=9,
    body=b"{}",
)


def make_endpoint() -> Endpoint:
    """acme's endpoint ep_1, enabled, every event type, one fresh secret."""
    return Endpoint(
        endpoint_id="ep_1",
        org_id="acme",
        url="https://hooks.example.org/",
        secrets=(Secret(value=new_secret(), created_at=NOW),),
        created_at=NOW,
        updated_at=NOW,
    )


Listener = Callable[[str, Endpoint | None], None]


class FakeEndpoints:
    """Endpoints by id, telling listeners of every change as the KV watch does;
    `endpoint` is the first one given (as it is now)."""

    def __init__(self, *endpoints: Endpoint) -> None:
        self.by_id = {e.endpoint_id: e for e in endpoints}
        self.listeners: list[Listener] = []

    @property
    def endpoint(self) -> Endpoint:
        return next(iter(self.by_id.values()))

    def all(self) -> list[Endpoint]:
        return list(self.by_id.values())

    def of_org(self, org_id: str) -> list[Endpoint]:
        return [e for e in self.by_id.values() if e.org_id == org_id]

    def get(self, org_id: str, endpoint_id: str) -> Endpoint | None:
        found = self.by_id.get(endpoint_id)
        return found if found is not None and found.org_id == org_id else None

    async def put(self, endpoint: Endpoint) -> None:
        self.by_id[endpoint.endpoint_id] = endpoint
        for listener in self.listeners:
            listener(endpoint.endpoint_id, endpoint)

    async def delete(self, org_id: str, endpoint_id: str) -> None:
        self.by_id.pop(endpoint_id, None)
        for listener in self.listeners:
            listener(endpoint_id, None)

    def on_change(self, listener: Listener) -> None:
        self.listeners.append(listener)


class FakeDeliveries:
    """Delivery records by (endpoint id, event id)."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], Delivery] = {}

    def of(self, event_id: str, endpoint_id: str = "ep_1") -> Delivery:
        """The record of one event's delivery to one endpoint (KeyError: none)."""
        return self.records[endpoint_id, event_id]

    async def get(self, org_id: str, endpoint_id: str, event_id: str) -> Delivery | None:
        return self.records.get((endpoint_id, event_id))

    async def put(self, delivery: Delivery) -> None:
        self.records[delivery.endpoint_id, delivery.event_id] = delivery

    async def put_many(self, deliveries: Sequence[Delivery]) -> list[BaseException | None]:
        for delivery in deliveries:
            await self.put(delivery)
        return [None] * len(deliveries)


class MemoryFolds:
    """The per-email fold, folded by the domain's own `fold_in`."""

    def __init__(self) -> None:
        self.folds: dict[tuple[str, str], EmailFold] = {}

    async def get(self, org_id: str, email_id: str) -> EmailFold | None:
        return self.folds.get((org_id, email_id))

    async def apply(self, event: AnyEvent) -> tuple[EmailFold, int]:
        key = (event.org_id, event.email_id)
        fold, number = fold_in(self.folds.get(key), event)
        self.folds[key] = fold
        return fold, number


class FakeQueue:
    """WEBHOOK_JOBS: the jobs enqueued with their message ids, or a publish that fails."""

    def __init__(self, *, fail: bool = False) -> None:
        self.jobs: list[tuple[Job, str]] = []
        self.fail = fail

    async def start_enqueue(self, job: Job, msg_id: str) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self.fail:
            future.set_exception(TimeoutError("no answer from JetStream"))
        else:
            self.jobs.append((job, msg_id))
            future.set_result(len(self.jobs))
        return future


class ScriptedPoster:
    """Answers by endpoint URL (204 unless told); a URL in `hang` waits until released."""

    def __init__(self, status: dict[str, int], hang: set[str] | None = None) -> None:
        self.status = status
        self.hang = hang or set()
        self.release = asyncio.Event()
        self.sent: list[str] = []
        self.bodies: list[bytes] = []

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Answer:
        self.sent.append(url)
        self.bodies.append(body)
        if url in self.hang:
            await self.release.wait()
        return Answer(status=self.status.get(url, 204), latency_s=0.001)


async def until(done: Callable[[], bool]) -> None:
    """Wait (bounded) until `done()` holds."""
    async with asyncio.timeout(5):
        while True:
            if done():
                return
            await asyncio.sleep(0.01)
